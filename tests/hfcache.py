"""Lay out a real Hugging Face cache folder (refs/, blobs/, snapshots/) by hand, so the
real huggingface_hub code resolves it with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_to_cache(
    cache: Path, repo: str, model_folder: Path, *, revision: str = "main", commit: str | None = None
) -> str:
    """Put the files of `model_folder` into `cache` as `repo` at `commit`, with `revision`
    pointing at it. Returns the commit sha."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    files = sorted(p for p in model_folder.iterdir() if p.is_file())
    commit = commit or hashlib.sha1(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for p in files:
        data = p.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / p.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snapshot), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return commit
