"""Reusing the memory that input tensors are read into and results are written into.

Fresh memory costs a page fault per 4 KiB page (on virtual machines, about a
microsecond each: a 128 MiB tensor reads 4.5x slower into new memory than into memory
used before). Layers repeat their shapes, so buffers of the same size come back again
and again. The engine gives buffers back explicitly: an input's once the method that
read it has returned (only for streaming methods, whose result never shares memory
with their inputs), a result's once the writer has written and hashed it.
"""

from __future__ import annotations

import threading

from mergepkg._lazy import torch

PAGE = 4096  # io/direct.ALIGN: what direct I/O needs of a buffer's address


class BufferPool:
    def __init__(self, max_free: int | None = None):
        self.max_free = max_free  # bytes kept for reuse at most; None: no limit
        self._free_bytes = 0
        self._free: dict[int, list] = {}
        self._issued: set[int] = set()  # data pointers of the buffers handed out
        self._lock = threading.Lock()

    def tensor(self, dtype, shape: tuple[int, ...], nbytes: int) -> torch.Tensor:
        """An uninitialised tensor, in a reused buffer where one of its size is free."""
        with self._lock:
            free = self._free.get(nbytes)
            buffer = free.pop() if free else None
            if buffer is not None:
                self._free_bytes -= nbytes
        if buffer is None:
            # page-aligned, so the writer sends a result to the disk without copying it
            # (io/direct.py); torch aligns large blocks to 64 bytes
            buffer = torch.empty(nbytes + PAGE - 1, dtype=torch.uint8)
            start = -buffer.data_ptr() % PAGE
            buffer = buffer[start : start + nbytes]
            with self._lock:
                self._issued.add(buffer.data_ptr())
        return buffer.view(dtype).view(shape)

    def give_back(self, tensors) -> None:
        """Return the buffers of tensors from `tensor` that nothing uses any more (others
        in `tensors`, read some other way, are left alone)."""
        with self._lock:
            for t in tensors:
                if t.data_ptr() not in self._issued or not t.nbytes:
                    continue
                if self.max_free is not None and self._free_bytes + t.nbytes > self.max_free:
                    self._issued.discard(t.data_ptr())  # over the limit: let it go
                    continue
                self._free.setdefault(t.nbytes, []).append(t.view(-1).view(torch.uint8))
                self._free_bytes += t.nbytes
