"""Tensor files: read a model's tensors one at a time, write sharded safetensors.

Reading: safetensors headers are parsed directly (JSON after an 8-byte length), so a
model's tensor names, dtypes and shapes are known without torch and without touching
tensor data; tensors are then read one by one through `safe_open` (mmap).
`pytorch_model.bin` checkpoints load only with `torch.load(weights_only=True, mmap=True)`.

Writing: the engine knows every output tensor's name, dtype and shape before it
computes any of them, so each shard's header is written first and tensor bytes are
streamed after it. Memory holds one tensor, never a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.buffers import BufferPool
from mergepkg.direct import SequentialFile
from mergepkg.errors import BuildError, SourceError

# safetensors dtype codes <-> recipe dtype names
CODE_OF = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
NAME_OF = {v: k for k, v in CODE_OF.items()}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


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


def torch_dtype(code_or_name: str):
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


def weight_files(folder: Path) -> list[str]:
    """The files holding a model's weights, preferring safetensors over .bin."""
    for index in (INDEX, BIN_INDEX):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return sorted(set(weight_map.values()))
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p.name for p in folder.glob(pattern))
        if files:
            return files
    raise SourceError("no model weights found (expected *.safetensors or pytorch_model.bin)", file=folder)


def _load_bin(path: Path) -> dict:
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
            for key, t in _load_bin(path).items():
                infos[key] = TensorInfo(code_of(t.dtype), tuple(t.shape), name)
    return infos


class ModelReader:
    """Reads single tensors of one model folder on demand.

    Safetensors tensors are read with pread straight into a new tensor's memory: no
    mmap, so the file's pages stay in the page cache and out of this process's resident
    set, and memory holds only the tensors in flight. Dtypes torch cannot view as bytes
    go through `safe_open`; `.bin` files through torch.load(mmap=True).
    """

    def __init__(self, folder: Path, infos: dict[str, TensorInfo], pool: BufferPool | None = None):
        self.folder, self.infos, self.pool = folder, infos, pool
        self._files: dict[str, tuple] = {}  # file -> (open file, data start, header)
        self._other: dict[str, object] = {}

    def _safetensors(self, file: str) -> tuple[int, int, dict]:
        if file not in self._files:
            path = self.folder / file
            f = open(path, "rb", buffering=0)  # kept open: its descriptor serves the preads
            header, start = parse_header(f, path)
            self._files[file] = (f, start, header)
        return self._files[file]

    def _handle(self, file: str):
        if file not in self._other:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                self._other[file] = safe_open(self.folder / file, framework="pt", device="cpu")
            else:
                self._other[file] = _load_bin(self.folder / file)
        return self._other[file]

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if info.file.endswith(".safetensors") and info.dtype in NAME_OF:
            return self._pread(name, info)
        handle = self._handle(info.file)
        return handle[name] if isinstance(handle, dict) else handle.get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of a tensor (its first dimension), reading only those."""
        info = self.infos[name]
        if info.file.endswith(".safetensors") and info.dtype in NAME_OF:
            return self._pread(name, info, start, stop)
        return self.get(name)[start:stop]

    def _pread(self, name: str, info: TensorInfo, start: int = 0, stop: int | None = None) -> torch.Tensor:
        f, data_start, header = self._safetensors(info.file)
        begin, end = header[name]["data_offsets"]
        shape = info.shape
        if stop is not None:  # a block of rows
            row = (end - begin) // shape[0]
            begin, end, shape = begin + start * row, begin + stop * row, (stop - start, *shape[1:])
        if self.pool is not None:
            tensor = self.pool.tensor(torch_dtype(info.dtype), shape, end - begin)
        else:
            tensor = torch.empty(shape, dtype=torch_dtype(info.dtype))
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < end - begin:
            got = os.preadv(f.fileno(), [buffer[done:]], data_start + begin + done)
            if got == 0:
                raise SourceError(f"truncated tensor {name}", file=self.folder / info.file)
            done += got
        return tensor

    def close(self):
        for f, _, _ in self._files.values():
            f.close()
        self._files.clear()
        self._other.clear()


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


def plan_shards(tensors: Iterable[tuple[str, TensorInfo]], max_shard_bytes: int) -> list[list[tuple[str, TensorInfo]]]:
    """Split the output tensors, in order, into shards of at most max_shard_bytes
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in tensors:
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, info))
        size += info.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardWriter:
    """Streams tensors, in the planned order, into safetensors shards under `folder`."""

    def __init__(self, folder: Path, tensors: list[tuple[str, TensorInfo]], max_shard_bytes: int):
        self.folder = folder
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.names = shard_names(len(self.shards))
        self._order = [(shard, name, info) for shard, items in enumerate(self.shards) for name, info in items]
        self._next = 0
        self._file: SequentialFile | None = None
        self._shard = -1
        self.bytes_written = 0
        self._digests: dict[str, Future] = {}
        # hashing runs beside the writes (hashlib releases the GIL): the digest is free
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergepkg-hash")

    def _open_shard(self, shard: int):
        self._close_file()
        header, offset = {}, 0
        for name, info in self.shards[shard]:
            header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self._file = SequentialFile(self.folder / self.names[shard])
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = shard

    def write(self, name: str, tensor: torch.Tensor, *, first: bool = True, last: bool = True, done=None):
        """Write the next tensor, or (first/last) the next block of rows of it; `done()`
        runs once its bytes are written and hashed (the caller may then reuse them)."""
        shard, expected, info = self._order[self._next]
        shape = tuple(tensor.shape)
        if name != expected or code_of(tensor.dtype) != info.dtype or (
                shape != info.shape if first and last else shape[1:] != info.shape[1:]):
            raise BuildError(f"engine produced {name} {tensor.dtype} {shape}; "
                             f"expected {expected} {info.dtype} {info.shape}")
        if shard != self._shard:
            self._open_shard(shard)
        data = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        if first:
            self._hash = hashlib.sha256(tensor_digest_prefix(name, info.dtype, info.shape))
            self._written = 0
        self._hasher.submit(self._hash.update, data)  # one worker: pieces hash in order
        self._file.write(data)
        if done is not None:
            self._hasher.submit(done)  # after the update above: the hasher has finished with data
        self._written += len(data)
        if last:
            if self._written != info.nbytes:
                raise BuildError(f"engine wrote {self._written} bytes of {name}; expected {info.nbytes}")
            self._digests[name] = self._hasher.submit(self._hash.hexdigest)
            self.bytes_written += info.nbytes
            self._next += 1

    def _close_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self):
        """Close the open shard after a failure; the caller discards the folder."""
        self._close_file()
        self._hasher.shutdown(cancel_futures=True)

    @property
    def digests(self) -> dict[str, str]:
        return {name: future.result() for name, future in self._digests.items()}

    @property
    def digest(self) -> str:
        return combine_digests(self.digests)

    def close(self):
        self._close_file()
        self._hasher.shutdown()
        if self._next != len(self._order):
            raise BuildError(f"wrote {self._next} of {len(self._order)} tensors")
        if len(self.shards) > 1:
            weight_map = {name: self.names[s] for s, items in enumerate(self.shards) for name, _ in items}
            total = sum(info.nbytes for items in self.shards for _, info in items)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
