"""Output digests: over tensors, not files.

A tensor's digest is sha256 over its name, dtype, shape and bytes; a model's is over
its tensors' digests sorted by name. So sharding, file layout and header metadata do
not matter, and `verify` recomputes a digest from the files without torch.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from mergepkg.errors import SourceError
from mergepkg.io.folder import weight_files
from mergepkg.io.tensors import parse_header


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
    digests = {}
    for name in weight_files(folder):
        path = folder / name
        if not name.endswith(".safetensors"):
            raise SourceError("digests are defined for safetensors models only", file=path)
        with open(path, "rb") as f:
            try:
                header, start = parse_header(f, path)
            except (struct.error, ValueError) as e:
                raise SourceError(f"unreadable safetensors header: {e}", file=path) from None
            for key, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                a, b = meta["data_offsets"]
                f.seek(start + a)
                data = f.read(b - a)
                if len(data) != b - a:
                    raise SourceError(f"truncated tensor {key}", file=path)
                digests[key] = tensor_digest(key, meta["dtype"], tuple(meta["shape"]), data)
    return combine_digests(digests)
