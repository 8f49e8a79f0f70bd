"""A remote in a Hugging Face Hub repository (`hf://datasets/ORG/NAME[/PREFIX]`).

The layout is a remote's (store.py); what differs is writing. A Hub commit is atomic,
so a push is one commit holding the files the repository lacks and the record
together (`HfApi.create_commit`, `CommitOperationAdd`): a reader sees all of it or
none, and nothing is ever half pushed. `gc` removes records and files in commits.
Reads go through `HfFileSystem`, an fsspec filesystem, as any remote's do.
Credentials are the Hub's own (HF_TOKEN, `hf auth login`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergepkg.remote.errors import RemoteError
from mergepkg.remote.record import FileEntry, Record
from mergepkg.remote.store import Remote
from mergepkg.remote.transfer import Meter

REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model"}


def split_hub_path(path: str) -> tuple[str, str, str, str]:
    """`datasets/org/name/prefix` -> (repo type, repo id, fs root of the repo, prefix)."""
    parts = [p for p in path.split("/") if p]
    repo_type = REPO_TYPES.get(parts[0]) if parts else None
    if repo_type is not None:
        parts = parts[1:]
    if len(parts) < 2:
        raise RemoteError(f"not a Hub repository path: {path!r}", hint="hf://datasets/ORG/NAME[/PREFIX]")
    repo_id = "/".join(parts[:2])
    repo_root = repo_id if repo_type in (None, "model") else f"{path.split('/')[0]}/{repo_id}"
    return repo_type or "model", repo_id, repo_root, "/".join(parts[2:])


class HubRemote(Remote):
    """A remote in a Hub repository: `api` an `HfApi`, `fs` an `HfFileSystem` (or any
    fsspec filesystem showing the repository at `repo_root`, as tests use)."""

    def __init__(self, api: Any, fs: Any, path: str, *, url: str | None = None, threads: int = 4):
        self.repo_type, self.repo_id, self.repo_root, prefix = split_hub_path(path)
        root = f"{self.repo_root}/{prefix}" if prefix else self.repo_root
        super().__init__(fs, root, url=url or f"hf://{path}", threads=threads, grace_seconds=0)
        self.api = api
        self.atomic_commits = True  # no file is ever put without its record: no push in flight to spare

    def in_repo(self, path: str) -> str:
        """A filesystem path as a path in the repository."""
        return path[len(self.repo_root) + 1 :]

    def operations(self, folder: Path, record: Record, files: list[FileEntry]) -> list[Any]:
        """What a push commits: the files the repository lacks, and the record."""
        from huggingface_hub import CommitOperationAdd

        ops = [
            CommitOperationAdd(
                path_in_repo=self.in_repo(self.path(record.folder, f.name)), path_or_fileobj=str(folder / f.name)
            )
            for f in files
        ]
        record_path = self.in_repo(self.path("records", f"{record.key}.json"))
        return [*ops, CommitOperationAdd(path_in_repo=record_path, path_or_fileobj=record.to_bytes())]

    def _upload(self, folder: Path, record: Record, files: list[FileEntry], meter: Meter) -> None:
        self.api.create_commit(
            self.repo_id,
            self.operations(folder, record, files),
            commit_message=f"mergepkg: push {record.key[:16]}",
            repo_type=self.repo_type,
        )
        for f in files:
            meter.add(f.name, f.size)

    def _write_record(self, record: Record) -> None:
        from huggingface_hub import CommitOperationAdd

        record_path = self.in_repo(self.path("records", f"{record.key}.json"))
        self.api.create_commit(
            self.repo_id,
            [CommitOperationAdd(path_in_repo=record_path, path_or_fileobj=record.to_bytes())],
            commit_message=f"mergepkg: sign {record.key[:16]}",
            repo_type=self.repo_type,
        )

    def _delete(self, paths: list[str]) -> None:
        from huggingface_hub import CommitOperationDelete

        if paths:
            self.api.create_commit(
                self.repo_id,
                [CommitOperationDelete(path_in_repo=self.in_repo(p)) for p in paths],
                commit_message=f"mergepkg: gc, {len(paths)} files",
                repo_type=self.repo_type,
            )
