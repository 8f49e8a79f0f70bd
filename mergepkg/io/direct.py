"""Write a new file of known content sequentially, bypassing the page cache (O_DIRECT)
where the OS and file system allow it.

A merge writes gigabytes it will not read back soon; through the page cache, every
written page first needs a fresh page of memory (slow on virtual machines, and it
evicts the input models' pages the merge is reading). Direct I/O needs aligned
buffers, sizes and offsets. Bytes that start on a page of memory at an aligned offset
of the file go to the disk straight from the caller's memory (the engine's result
buffers are page-aligned, and `writer.py` pads every shard's header so that its data
starts on an aligned offset; a tensor of whole pages keeps the next one aligned), all
but their last partial block; other bytes are copied into one reused, aligned staging
buffer first. The last block is padded and the file truncated to its real size at the
end. Where O_DIRECT is missing or refused (macOS, tmpfs, some network file systems), the same
writes go through the page cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
from pathlib import Path

from mergepkg._lazy import lazy_import

np = lazy_import("numpy")  # by the first staged copy: a no-op rebuild, which writes none, need not import it

ALIGN = 4096  # covers the logical block size of every common disk
STAGE = 16 << 20  # staging buffer: a multiple of ALIGN, page-aligned (mmap), reused


class SequentialFile:
    def __init__(self, path: Path):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        direct = getattr(os, "O_DIRECT", 0)
        try:
            self.fd = os.open(path, flags | direct, 0o644)
            self.direct = bool(direct)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.fd, self.direct = os.open(path, flags, 0o644), False
        self._stage = mmap.mmap(-1, STAGE) if self.direct else None
        # the stage's address, for copies that give the GIL back (`_stage_copy`); the
        # ctypes view pins the mapping until close() lets it go
        self._pin = ctypes.c_char.from_buffer(self._stage) if self._stage is not None else None
        self._fill = 0  # bytes staged
        self.size = 0  # bytes written or staged

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        self.size += len(data)
        while len(data):
            if not self.direct:  # from the start, or since the file system refused it
                self._write_all(data)
                return
            if self._fill % ALIGN == 0 and len(data) >= ALIGN and _address(data) % ALIGN == 0:
                # aligned in memory and in the file: no copy (a bfloat16 task_arithmetic
                # build's writer thread took 0.09-0.12 s of CPU instead of 0.28-0.34)
                if self._fill:
                    self._flush(self._fill)
                n = len(data) - len(data) % ALIGN
                self._write_all(data[:n])
                data = data[n:]
                continue
            n = min(len(data), STAGE - self._fill)
            self._stage_copy(data[:n])
            self._fill += n
            data = data[n:]
            if self._fill == STAGE:
                self._flush(STAGE)

    def _stage_copy(self, data: memoryview) -> None:
        """Append `data` to the stage with the GIL given back (ctypes' memmove): a slice
        assignment holds it for the whole copy, a third of a bfloat16 build's stream,
        and the merge threads wait on it between chunks (py-spy `--gil`)."""
        assert self._pin is not None
        source = np.frombuffer(data, dtype=np.uint8)  # read-only buffers too (a header's bytes)
        ctypes.memmove(ctypes.addressof(self._pin) + self._fill, source.ctypes.data, len(data))

    def _staging(self) -> mmap.mmap:
        """The stage: made when the file opened for direct I/O, the only way bytes get staged."""
        assert self._stage is not None
        return self._stage

    def _flush(self, n: int) -> None:
        """Write the first n staged bytes (all of them, a multiple of ALIGN) and empty the stage. The view
        of the stage is released whatever happens, so that close() can unmap it after a
        failed write (a full disk) and that write's error is the one raised."""
        with memoryview(self._staging()) as stage:
            self._write_all(stage[:n])
        self._fill = 0

    def _write_all(self, data: memoryview) -> None:
        """Write all of `data`, on from where a short write stopped. A direct write refused
        (EINVAL: the file system refuses direct I/O after all, or a short write left the
        rest unaligned) carries on through the cache from where it stopped."""
        while len(data):
            try:
                data = data[os.write(self.fd, data) :]
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self._fill:
                tail = self._fill
                padded = -(-tail // ALIGN) * ALIGN
                self._staging()[tail:padded] = bytes(padded - tail)
                self._flush(padded)
                os.ftruncate(self.fd, self.size)  # drop the padding (whichever way it went)
        finally:
            os.close(self.fd)
            self.fd = -1
            if self._stage is not None:
                self._pin = None  # its export of the mapping, which close() refuses while held
                # a view of it still held elsewhere (a failed write's traceback, where the
                # write was Python code) frees the mapping with it; the write's error stands
                with contextlib.suppress(BufferError):
                    self._stage.close()
                self._stage = None


def _address(data: memoryview) -> int:
    """Where `data`'s first byte is in memory (read-only buffers too)."""
    return np.frombuffer(data, dtype=np.uint8).ctypes.data
