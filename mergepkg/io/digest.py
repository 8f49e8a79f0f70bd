"""Output digests: over tensors, not files.

A tensor's digest is sha256 over its name, dtype, shape and bytes; a model's is over
its tensors' digests sorted by name. So sharding, file layout and header metadata do
not matter, and `verify` recomputes a digest from the files without torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

from mergepkg.errors import SourceError
from mergepkg.io.folder import weight_files
from mergepkg.io.tensors import parse_header

BLOCK = 16 << 20  # bytes read at a time: a large tensor is never held whole


def tensor_digest_prefix(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    return f"{name}\0{dtype}\0{list(shape)}\0".encode()


def tensor_digest(name: str, dtype: str, shape: tuple[int, ...], data) -> str:
    """sha256 over one tensor's name, dtype, shape and bytes (little-endian, row-major)."""
    h = hashlib.sha256(tensor_digest_prefix(name, dtype, shape))
    h.update(data)
    return h.hexdigest()


def combine_digests(digests: dict[str, str]) -> str:
    """A model's digest: over its tensors' digests sorted by name. It ignores file layout,
    sharding and header metadata, so equal tensors give equal digests however stored."""
    lines = "".join(f"{name}\0{digests[name]}\n" for name in sorted(digests))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def model_digest(folder: Path) -> str:
    """Re-read every tensor's raw bytes from the safetensors files (no torch) and digest."""
    return combine_digests(tensor_digests(folder))


def tensor_digests(folder: Path, names: Collection[str] | None = None) -> dict[str, str]:
    """The digests of the tensors in `folder` (those in `names`, or all), re-read from its
    safetensors files without torch, a block at a time."""
    digests = {}
    for file in weight_files(folder):
        path = folder / file
        if not file.endswith(".safetensors"):
            raise SourceError("digests are defined for safetensors models only", file=path)
        with open(path, "rb") as f:
            header, start = parse_header(f, path)
            for key, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                if names is not None and key not in names:
                    continue
                a, b = meta["data_offsets"]
                h = hashlib.sha256(tensor_digest_prefix(key, meta["dtype"], tuple(meta["shape"])))
                f.seek(start + a)
                left = b - a
                while left:
                    block = f.read(min(left, BLOCK))
                    if not block:
                        raise SourceError(f"truncated tensor {key}", file=path)
                    h.update(block)
                    left -= len(block)
                digests[key] = h.hexdigest()
    return digests
