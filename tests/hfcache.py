"""Lay out a real Hugging Face cache folder (refs/, blobs/, snapshots/) by hand, so the
real huggingface_hub code resolves it with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The files whose absence huggingface_hub records (`.no_exist/COMMIT/NAME`) when asked for
# them (transformers asks for these first), and mergepkg when a repo's listing lacks them.
CHECKED_ABSENT = ("model.safetensors", "model.safetensors.index.json", "tokenizer_config.json")


def blob_name(name: str, data: bytes) -> str:
    """The name huggingface_hub gives a file's blob: an LFS file's (weights) is its sha256,
    a small file's its git blob sha1 (the Hub's etag for each)."""
    if name.endswith((".safetensors", ".bin")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_to_cache(
    cache: Path,
    repo: str,
    model_folder: Path,
    *,
    revision: str = "main",
    commit: str | None = None,
    skip: tuple[str, ...] = (),
    complete: bool = True,
) -> str:
    """Put the files of `model_folder` (but `skip`) into `cache` as `repo` at `commit`, with
    `revision` pointing at it. `complete`: the repo holds just these files, and the cache
    knows it as an online fetch leaves it (`.no_exist` markers for CHECKED_ABSENT files it
    lacks); else a partial download, which records nothing. Returns the commit sha."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    files = sorted(p for p in model_folder.iterdir() if p.is_file() and p.name not in skip)
    commit = commit or hashlib.sha1(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for p in files:
        data = p.read_bytes()
        blob = repo_dir / "blobs" / blob_name(p.name, data)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / p.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snapshot), link)
    if complete:
        no_exist = repo_dir / ".no_exist" / commit
        for name in CHECKED_ABSENT:
            if not (snapshot / name).exists():
                no_exist.mkdir(parents=True, exist_ok=True)
                (no_exist / name).touch()
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return commit
