"""Tensors as files hold them: dtype codes, shapes and where they are, read from headers.

safetensors headers are parsed directly (JSON after an 8-byte length), so a model's
tensor names, dtypes and shapes are known without torch and without touching tensor
data. `pytorch_model.bin` checkpoints only load with `torch.load(weights_only=True,
mmap=True)`: never code from a checkpoint, never the whole file in memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.errors import SourceError
from mergepkg.io.folder import weight_files

# safetensors dtype codes <-> recipe dtype names
CODE_OF = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
NAME_OF = {v: k for k, v in CODE_OF.items()}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors code: "F32", "BF16", ...
    shape: tuple[int, ...]
    file: str = ""  # file inside the model folder that holds it

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE.get(self.dtype, 4)
        for d in self.shape:
            n *= d
        return n


def torch_dtype(code_or_name: str) -> torch.dtype:
    name = NAME_OF.get(code_or_name, code_or_name)
    return getattr(torch, name)


def code_of(dtype) -> str:
    return CODE_OF[str(dtype).removeprefix("torch.")]


def parse_header(f, path: Path) -> tuple[dict, int]:
    """(tensor entries, offset where tensor data starts) of an open safetensors file."""
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 100_000_000:
        raise SourceError("not a safetensors file (header too large)", file=path)
    header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        return parse_header(f, path)[0]


def load_bin(path: Path) -> dict:
    # weights_only: never run code from a checkpoint; mmap: never load it whole
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def scan_tensors(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of the model in `folder`: name -> TensorInfo, from headers only."""
    infos: dict[str, TensorInfo] = {}
    for name in weight_files(folder):
        path = folder / name
        if name.endswith(".safetensors"):
            try:
                header = read_header(path)
            except (OSError, ValueError, struct.error) as e:
                raise SourceError(f"cannot read safetensors header: {e}", file=path) from None
            for key, meta in header.items():
                infos[key] = TensorInfo(meta["dtype"], tuple(meta["shape"]), name)
        else:
            for key, t in load_bin(path).items():
                infos[key] = TensorInfo(code_of(t.dtype), tuple(t.shape), name)
    return infos
