"""hf:// remotes (issue 16): what a push commits to a Hub repository and what gc does.

The real Hub cannot be reached here. `HfApi.create_commit` is replaced at the network
boundary by a fake that applies the commit's operations to a memory filesystem, which
stands in for `HfFileSystem` on the read side; the operations themselves are
huggingface_hub's own `CommitOperationAdd` / `CommitOperationDelete`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from remotes import make_artifact

from mergepkg.remote.hub import HubRemote, split_hub_path
from mergepkg.remote.sync import open_remote, push_artifact, record_for, substitute
from mergepkg.store.local import Store


class FakeApi:
    """create_commit applied to a memory filesystem holding the repository at `root`."""

    def __init__(self, fs: MemoryFileSystem, root: str):
        self.fs, self.root, self.commits = fs, root, []

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kw):
        operations = list(operations)
        self.commits.append((repo_id, repo_type, commit_message, operations))
        for op in operations:
            path = f"{self.root}/{op.path_in_repo}"
            if isinstance(op, CommitOperationAdd):
                data = op.path_or_fileobj
                self.fs.pipe_file(path, data if isinstance(data, bytes) else Path(data).read_bytes())
            else:
                self.fs.rm_file(path)


@pytest.fixture
def hub():
    fs = MemoryFileSystem()
    repo_root = f"datasets/team-{uuid.uuid4().hex[:8]}/builds"
    api = FakeApi(fs, repo_root)
    yield HubRemote(api, fs, f"{repo_root}/mergepkg"), api
    fs.rm(repo_root.split("/")[0] + "/" + repo_root.split("/")[1], recursive=True)


def test_hub_paths_name_the_repository_type_id_and_prefix():
    assert split_hub_path("datasets/team/builds/cache/x") == (
        "dataset",
        "team/builds",
        "datasets/team/builds",
        "cache/x",
    )
    assert split_hub_path("team/model") == ("model", "team/model", "team/model", "")
    assert split_hub_path("models/team/model/p") == ("model", "team/model", "team/model", "p")
    remote = open_remote("hf://datasets/team/builds/cache")
    assert isinstance(remote, HubRemote) and (remote.repo_type, remote.repo_id) == ("dataset", "team/builds")


def test_a_push_is_one_commit_of_the_missing_files_and_the_record(hub, tmp_path):
    remote, api = hub
    art = make_artifact(Store(tmp_path / "a"), 40)
    record = record_for(art)
    report = push_artifact(remote, art)
    assert report.nbytes == art.size
    ((repo_id, repo_type, message, ops),) = api.commits
    assert (repo_id, repo_type) == (remote.repo_id, "dataset") and art.key[:16] in message
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    assert [op.path_in_repo for op in ops] == [f"mergepkg/{record.folder}/{f.name}" for f in record.files] + [
        f"mergepkg/records/{art.key}.json"
    ]
    assert push_artifact(remote, art).present and len(api.commits) == 1  # nothing to commit
    got = substitute(remote, Store(tmp_path / "b"), art.key, expected_digest=art.digest)
    assert got.digest == art.digest


def test_a_partial_repository_gets_only_what_it_lacks_and_gc_commits_deletions(hub, tmp_path):
    remote, api = hub
    kept, gone = make_artifact(Store(tmp_path / "a"), 41), make_artifact(Store(tmp_path / "a"), 42)
    push_artifact(remote, kept)
    push_artifact(remote, gone)
    record = record_for(kept)
    remote.fs.rm_file(remote.path("records", f"{kept.key}.json"))
    remote.fs.rm_file(remote.path(record.folder, "config.json"))
    push_artifact(remote, kept)
    assert [op.path_in_repo.rpartition("/")[2] for op in api.commits[-1][3]] == ["config.json", f"{kept.key}.json"]
    report = remote.gc({kept.key})
    assert report.removed == (gone.key,)
    deletes = [op for c in api.commits[3:] for op in c[3]]
    assert deletes and all(isinstance(op, CommitOperationDelete) for op in deletes)
    assert api.commits[3][3][0].path_in_repo == f"mergepkg/records/{gone.key}.json"  # the record first
    assert remote.keys() == [kept.key] and not remote.fs.exists(remote.path("artifacts", gone.key, "x"))
