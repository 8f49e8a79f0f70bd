"""Moving files to and from an fsspec filesystem, whole or not at all.

What a reader may see of a file being written differs per backend, so a file is put:
- on a local (or mounted, shared) disk: into a temp name beside it, synced, renamed;
- on S3: directly, since a PUT (or a multipart upload, completed) is atomic per object
  and an interrupted one leaves no object;
- anywhere else (memory://): into a temp name, then moved.
Temp names start with `.` and end in `.tmp`; `gc` removes old ones. A file already on
the remote is moved there without this machine reading it (`move_file`: a rename, a
server-side copy on S3).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

CHUNK = 8 << 20
# the block an fsspec file reads ahead or uploads as one part: s3fs's default (5 MB reads)
# makes many small ranged GETs of a multi-GB shard (measured on moto: 63 MB/s, 120 with 64 MB)
BLOCK = 64 << 20
ATOMIC_PUT = {"s3", "s3a"}  # object stores: a PUT is seen whole or not at all

# (file being moved, bytes moved so far in this transfer, bytes it moves in all)
ProgressFn = Callable[[str, int, int], None]
T = TypeVar("T")


class Meter:
    """Bytes moved by a transfer's threads, told to a `ProgressFn` one call at a time."""

    def __init__(self, total: int, progress: ProgressFn | None):
        self.total, self.done, self.progress = total, 0, progress
        self._lock = threading.Lock()

    def add(self, name: str, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            if self.progress is not None:
                self.progress(name, self.done, self.total)


def protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def is_local(fs: Any) -> bool:
    return "file" in protocols(fs)


def temp_name(path: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp"


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _copy(src: Any, dst: Any, name: str, meter: Meter | None) -> None:
    while block := src.read(CHUNK):
        dst.write(block)
        if meter is not None:
            meter.add(name, len(block))


def _write_local(path: str, fill: Callable[[BinaryIO], Any]) -> None:
    """`path` on a local (or mounted) disk, written by `fill` into a temp name beside it,
    synced, then renamed: a reader sees the whole file or none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as dst:
            fill(dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def put_file(fs: Any, local: Path, path: str, meter: Meter | None = None) -> None:
    """Copy `local` to `path` on `fs` so that no reader ever sees part of it."""
    if is_local(fs):
        with open(local, "rb") as src:
            _write_local(path, lambda dst: _copy(src, dst, local.name, meter))
        return
    target = path if protocols(fs) & ATOMIC_PUT else temp_name(path)
    with open(local, "rb") as src:
        if not protocols(fs) & ATOMIC_PUT:  # an object store has no folders; s3fs's makedirs makes a missing bucket
            fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        f = fs.open(target, "wb", block_size=BLOCK)
        try:
            _copy(src, f, local.name, meter)
        except BaseException:
            getattr(f, "discard", lambda: None)()  # s3fs: abort a multipart upload, write nothing
            raise
        f.close()
    if target != path:
        fs.mv(target, path)


def put_bytes(fs: Any, data: bytes, path: str) -> None:
    """Write a small file (a record) whole or not at all, synced on a local disk."""
    if is_local(fs):
        _write_local(path, lambda dst: dst.write(data))
        return
    target = path if protocols(fs) & ATOMIC_PUT else temp_name(path)
    fs.pipe_file(target, data)
    if target != path:
        fs.mv(target, path)


def move_file(fs: Any, src: str, dst: str) -> None:
    """Move `src` to `dst` on `fs` without the bytes passing through this machine, so that
    a reader of `dst` sees the whole file or none: on a disk a rename (its mtime set to
    now, for gc's grace); on S3 a server-side copy (s3fs: CopyObject, or a multipart
    UploadPartCopy above 150 MB, the object appearing only when it completes), then the
    source deleted; elsewhere the filesystem's own `mv`. FileNotFoundError when `src`
    is not there."""
    if is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        os.utime(dst)
        return
    fs.makedirs(dst.rpartition("/")[0], exist_ok=True)
    if protocols(fs) & ATOMIC_PUT:
        fs.copy(src, dst)
        fs.rm_file(src)
    else:
        fs.mv(src, dst)


def get_file(fs: Any, path: str, local: Path, size: int, meter: Meter | None = None) -> tuple[int, str]:
    """Copy `path` to `local`, reading at most `size` + 1 bytes; (bytes read, sha256)."""
    h = hashlib.sha256()
    read = 0
    with fs.open(path, "rb", block_size=BLOCK) as src, open(local, "wb") as dst:
        while read <= size and (block := src.read(min(CHUNK, size + 1 - read))):
            h.update(block)
            dst.write(block)
            read += len(block)
            if meter is not None:
                meter.add(local.name, len(block))
    return read, h.hexdigest()


def hash_file(fs: Any, path: str) -> tuple[int, str]:
    """(size, sha256) of a file on `fs`, read through."""
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb", block_size=BLOCK) as f:
        while block := f.read(CHUNK):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


def listing(fs: Any, folder: str) -> dict[str, dict]:
    """The files directly in `folder` by name, with their info; {} when there is none."""
    try:
        entries = fs.ls(folder, detail=True, refresh=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {e["name"].rstrip("/").rpartition("/")[2]: e for e in entries if e.get("type") != "directory"}


def mtime(info: dict) -> float | None:
    """When a file was last written, from its fsspec info (backends name it differently)."""
    for field in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(field)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def in_parallel(fn: Callable[[T], Any], items: Iterable[T], threads: int) -> None:
    """`fn` over `items` on a few threads; the first error stops what has not started
    and is raised once the running ones finish."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
