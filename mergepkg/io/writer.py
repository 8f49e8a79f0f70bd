"""Writing sharded safetensors as tensors arrive.

The engine knows every output tensor's name, dtype and shape before it computes any of
them, so each shard's header is written first and tensor bytes are streamed after it
(through `direct.py`), hashed on a thread beside the writes. Memory holds one tensor,
never a shard.

A writer may write only some of the planned shards (`only`: one part of a step split
across workers, `engine/split.py`): under the names the whole plan gives them, with
headers that depend on their own tensors alone, so each file is the one a whole build
writes; the index, which names every shard, is then left to whoever assembles them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.errors import BuildError
from mergepkg.io.digest import combine_digests, tensor_digest_prefix
from mergepkg.io.direct import ALIGN, SequentialFile
from mergepkg.io.folder import INDEX
from mergepkg.io.tensors import TensorInfo, code_of

MAX_SHARD_BYTES = 2 * 1024**3  # a shard's size, unless a build says otherwise (`--shard-size`)


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


def write_index(folder: Path, shards: list[list[tuple[str, TensorInfo]]], names: list[str]) -> None:
    """`model.safetensors.index.json` of a model in several shards (none for one shard):
    every tensor's file and the total tensor bytes, as transformers writes it."""
    if len(shards) > 1:
        weight_map = {name: names[s] for s, items in enumerate(shards) for name, _ in items}
        total = sum(info.nbytes for items in shards for _, info in items)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


class ShardWriter:
    """Streams tensors, in the planned order, into safetensors shards under `folder`.

    `only`: the indices of the planned shards to write (None: all, and the index); the
    tensors written are then theirs alone, in order. `hash_files`: also each file's
    sha256, beside the writes (`file_digests`)."""

    def __init__(
        self,
        folder: Path,
        tensors: list[tuple[str, TensorInfo]],
        max_shard_bytes: int,
        *,
        only: Collection[int] | None = None,
        hash_files: bool = False,
    ):
        self.folder = folder
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.names = shard_names(len(self.shards))
        self.whole = only is None
        self._order = [
            (shard, name, info)
            for shard, items in enumerate(self.shards)
            if only is None or shard in only
            for name, info in items
        ]
        self._next = 0
        self._file: SequentialFile | None = None
        self._shard = -1
        self.bytes_written = 0
        self._digests: dict[str, Future] = {}
        self._file_hash = hashlib.sha256() if hash_files else None
        self._file_digests: dict[str, Future] = {}
        # hashing runs beside the writes (hashlib releases the GIL): the digest is free
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergepkg-hash")

    def _open_shard(self, shard: int):
        self._close_file()
        header, offset = {}, 0
        for name, info in self.shards[shard]:
            header[name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "data_offsets": [offset, offset + info.nbytes],
            }
            offset += info.nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        # the tensors start on an ALIGN boundary of the file (safetensors pads to 8; 4096 is
        # one too), so an aligned result goes to the disk without a copy (direct.py)
        raw += b" " * (-(8 + len(raw)) % ALIGN)
        self._file = SequentialFile(self.folder / self.names[shard])
        head = struct.pack("<Q", len(raw)) + raw
        self._file.write(head)
        self._shard = shard
        if self._file_hash is not None:
            self._file_hash = hashlib.sha256()
            self._hasher.submit(self._file_hash.update, head)

    def write(
        self,
        name: str,
        tensor: torch.Tensor,
        *,
        first: bool = True,
        last: bool = True,
        done: Callable[[], object] | None = None,
    ) -> None:
        """Write the next tensor, or (first/last) the next block of rows of it; `done()`
        runs once its bytes are written and hashed (the caller may then reuse them)."""
        shard, expected, info = self._order[self._next]
        shape = tuple(tensor.shape)
        if (
            name != expected
            or code_of(tensor.dtype) != info.dtype
            or (shape != info.shape if first and last else shape[1:] != info.shape[1:])
        ):
            raise BuildError(
                f"engine produced {name} {tensor.dtype} {shape}; expected {expected} {info.dtype} {info.shape}"
            )
        if shard != self._shard:
            self._open_shard(shard)
        file = self._file
        assert file is not None  # the shard is open from its first tensor until close() or abort()
        data = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        if first:
            self._hash = hashlib.sha256(tensor_digest_prefix(name, info.dtype, info.shape))
            self._written = 0
        self._hasher.submit(self._hash.update, data)  # one worker: pieces hash in order
        if self._file_hash is not None:
            self._hasher.submit(self._file_hash.update, data)
        file.write(data)
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
            if self._file_hash is not None:
                self._file_digests[self.names[self._shard]] = self._hasher.submit(self._file_hash.hexdigest)

    def abort(self) -> None:
        """Close the open shard after a failure; the caller discards the folder."""
        self._close_file()
        self._hasher.shutdown(cancel_futures=True)

    @property
    def digests(self) -> dict[str, str]:
        return {name: future.result() for name, future in self._digests.items()}

    @property
    def file_digests(self) -> dict[str, str]:
        """Each written file's sha256 (with `hash_files`), once closed."""
        return {name: future.result() for name, future in self._file_digests.items()}

    @property
    def digest(self) -> str:
        return combine_digests(self.digests)

    def close(self) -> None:
        self._close_file()
        self._hasher.shutdown()
        if self._next != len(self._order):
            raise BuildError(f"wrote {self._next} of {len(self._order)} tensors")
        if self.whole:
            write_index(self.folder, self.shards, self.names)
