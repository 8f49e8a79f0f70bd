"""Tensors as files hold them: dtype codes, shapes and where they are, read from headers.

safetensors headers are parsed directly (JSON after an 8-byte length), so a model's
tensor names, dtypes and shapes are known without torch and without touching tensor
data. `pytorch_model.bin` checkpoints only load with `torch.load(weights_only=True,
mmap=True)`: never code from a checkpoint, never the whole file in memory.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mergepkg._lazy import torch
from mergepkg.errors import SourceError
from mergepkg.io.folder import index_map, weight_files

# safetensors dtype codes <-> recipe dtype names (the floating-point dtypes a merge computes in)
CODE_OF = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
NAME_OF = {v: k for k, v in CODE_OF.items()}
# every safetensors dtype code -> torch's name of it: integer and bool tensors (buffers such
# as position ids and masks, quantized weights) and float8 are read and written, never merged
TORCH_NAME = NAME_OF | {
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
CODE_OF_TORCH = {v: k for k, v in TORCH_NAME.items()}
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
MAX_HEADER = 100_000_000  # bytes of JSON: a header this large is not one


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


def promote_codes(codes: list[str]) -> str:
    """The dtype torch promotes floating-point dtypes `codes` to (bfloat16 with float16 is
    float32), as a code; without torch."""
    rank = {"F16": 1, "BF16": 1, "F32": 2, "F64": 3}
    out = codes[0]
    for code in codes[1:]:
        if code != out:
            out = "F32" if rank[code] == rank[out] == 1 else max(out, code, key=rank.__getitem__)
    return out


def torch_dtype(code_or_name: str) -> torch.dtype:
    """The torch dtype of a safetensors code (any of them) or a recipe's dtype name."""
    name = TORCH_NAME.get(code_or_name, code_or_name)
    return getattr(torch, name)


def code_of(dtype) -> str:
    """The safetensors code of a torch dtype (any safetensors holds)."""
    return CODE_OF_TORCH[str(dtype).removeprefix("torch.")]


def parse_header(f: BinaryIO, path: Path) -> tuple[dict, int]:
    """(tensor entries, offset where tensor data starts) of an open safetensors file,
    checked as the safetensors library checks it: a JSON object of known dtypes and
    shapes whose byte ranges match them and tile the data exactly (no overlap, no hole,
    nothing past the end). A file that fails is a `SourceError` naming it."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise SourceError("not a safetensors file (shorter than its header length)", file=path)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise SourceError(f"not a safetensors file (header of {n} bytes in a file of {size})", file=path)
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:
        raise SourceError(f"unreadable safetensors header: {e}", file=path) from None
    if not isinstance(header, dict):
        raise SourceError("unreadable safetensors header: not a JSON object", file=path)
    header.pop("__metadata__", None)
    spans = []
    for name, meta in header.items():
        problem = _entry_problem(meta)
        if problem:
            raise SourceError(
                f"safetensors header: tensor {name}: {problem}",
                file=path,
                hint="the file is damaged or was not written by a safetensors writer",
            )
        spans.append((*meta["data_offsets"], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise SourceError(
                f"safetensors header: tensor {name} {what}",
                file=path,
                hint="the file is damaged or was not written by a safetensors writer",
            )
        end = stop
    if 8 + n + end != size:
        state = "truncated" if 8 + n + end > size else "longer than its header says"
        raise SourceError(
            f"safetensors file is {state}: its tensors need {8 + n + end} bytes, it has {size}",
            file=path,
            hint="download or build it again",
        )
    return header, 8 + n


def _entry_problem(meta: object) -> str | None:
    """Why a header entry is not a tensor this reader can trust, or None."""
    if not isinstance(meta, dict):
        return "not an object"
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in ITEMSIZE:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"data_offsets {offsets!r} is not [begin, end]"
    nbytes = TensorInfo(dtype, tuple(shape)).nbytes
    if offsets[1] - offsets[0] != nbytes:
        return f"{offsets[1] - offsets[0]} bytes for a {dtype} tensor of shape {shape} ({nbytes} bytes)"
    return None


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        return parse_header(f, path)[0]


def load_bin(path: Path) -> dict:
    """A `pytorch_model.bin` checkpoint's tensors: with `weights_only` (never run code from
    a checkpoint) and mmap (never load it whole). Anything else in it is refused."""
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(
            f"refused to load this checkpoint: {first}",
            file=path,
            hint="only plain tensor checkpoints load (torch.load weights_only); "
            "convert it to safetensors with the tool that made it",
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise SourceError("not a checkpoint of named tensors", file=path)
    return tensors


def scan_tensors(folder: Path, files: list[str] | None = None) -> dict[str, TensorInfo]:
    """Every tensor of the model in `folder` (or of its weight `files`): name -> TensorInfo,
    from headers only."""
    infos: dict[str, TensorInfo] = {}
    owners: dict[str, str] | None = None  # the index's weight map, read at a tensor found twice
    for name in weight_files(folder) if files is None else files:
        path = folder / name
        if name.endswith(".safetensors"):
            try:
                header = read_header(path)
            except OSError as e:
                raise SourceError(f"cannot read safetensors header: {e.strerror or e}", file=path) from None
            found = {key: TensorInfo(meta["dtype"], tuple(meta["shape"]), name) for key, meta in header.items()}
        else:
            found = {key: TensorInfo(code_of(t.dtype), tuple(t.shape), name) for key, t in load_bin(path).items()}
        for key in [k for k in found if k in infos]:  # in two files: the index says which is the model's
            owners = (index_map(folder) or {}) if owners is None else owners
            if owners.get(key) not in (infos[key].file, name):
                raise SourceError(
                    f"tensor {key} is in two weight files, {infos[key].file} and {name}",
                    file=folder,
                    hint="keep one copy of the weights in the folder, or a weight index naming each tensor's file",
                )
            if owners[key] == infos[key].file:
                del found[key]
        infos |= found
    return infos
