"""Streaming a merge through flat chunks of its tensors.

A method's `merge` is a pure function over whole tensors in the compute dtype: easy to
read and to test. Run like that on a 65M-entry embedding, every intermediate is a
fresh 262 MB float32 tensor (page faults, cache misses, memory). `stream` runs the same
arithmetic on flat chunks of CHUNK entries instead: inputs stay in their stored dtype
(bfloat16 is half the bytes), each chunk is converted as it is used, the intermediates
stay in the L2 cache, and the result is written into one output tensor in the saved
dtype. Elementwise arithmetic gives the same bits on a chunk as on the whole tensor;
whole-tensor quantities (a top-k threshold, an L1 norm, a dot product) are computed in
a first pass over the chunks (reduce.Total keeps sums bit-identical).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from mergepkg._lazy import torch
from mergepkg.methods.kernels.reduce import BLOCK

CHUNK = 64 * BLOCK  # 524288 entries: 2 MiB in float32, a multiple of the reduction block


def spans(n: int, size: int = CHUNK) -> list[slice]:
    """Consecutive slices covering range(n); `size` must be a multiple of BLOCK."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)] or [slice(0, 0)]


def chunk_size(device) -> int:
    """Small chunks on the CPU (cache); on an accelerator one chunk per tensor (kernels
    want big tensors, and memory bandwidth there is plentiful)."""
    return CHUNK if torch.device(device).type == "cpu" else 1 << 62


def output(out, shape, dtype, device) -> torch.Tensor:
    """The tensor a stream writes its result into: `out` when the engine gives one (a
    reused buffer: fresh memory costs a page fault per 4 KiB), else a new one."""
    return out if out is not None else torch.empty(shape, dtype=dtype, device=device)


class Scratch:
    """Reusable work buffers, one per name, grown as needed. Fresh multi-megabyte
    tensors cost page faults on every allocation; chunks reuse the same memory."""

    def __init__(self, device=None):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


# --- threads: on the CPU, chunks are shared out to threads of our own ------------------
# torch runs one operation at a time on its threads, and an operation on one chunk is
# too short to split well; a whole chunk per thread keeps every core busy. Streams that
# do this run while torch uses one thread (engine.build_step), so the two never
# oversubscribe the cores. torch's operations and numba's kernels release the GIL.


def cpu_count() -> int:
    """The cores this process may run on (all of them where the OS cannot say)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux
    return len(affinity(0)) if affinity else os.cpu_count() or 1


_threads = cpu_count()
_pool: ThreadPoolExecutor | None = None
_local = threading.local()  # per thread: its scratch buffers, by device


def set_threads(n: int) -> None:
    """How many threads streams share their chunks out to (`--threads`, else the cores)."""
    global _threads, _pool
    if n != _threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = max(1, n)


def parallel(fn: Callable, items) -> list:
    """[fn(x) for x in items], on the worker threads and the calling one, each taking the
    next item as it frees up; once it returns or raises, no item is still running."""
    global _pool
    items = list(items)
    if _threads == 1 or len(items) < 2:
        return [fn(x) for x in items]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="mergepkg-chunks")
    results: list = [None] * len(items)
    taken = itertools.count()  # next() on it is atomic: each item is taken once
    failed: list[BaseException] = []

    def drain() -> None:
        while not failed and (i := next(taken)) < len(items):
            try:
                results[i] = fn(items[i])
            except BaseException as e:
                failed.append(e)  # the others stop at their next item

    # the calling thread drains too rather than wait: one thread fewer to wake a call
    # (each wake-up waits for the GIL and a core)
    helpers = [_pool.submit(drain) for _ in range(min(_threads, len(items)) - 1)]
    try:
        drain()
    finally:
        wait(helpers)
    if failed:
        raise failed[0]
    return results


def groups(spans_: list[slice]) -> list[list[slice]]:
    """`spans_` dealt into one group of consecutive spans per worker thread."""
    size = -(-len(spans_) // _threads)
    return [spans_[i : i + size] for i in range(0, len(spans_), size)]


def thread_scratch(device=None) -> Scratch:
    """This thread's scratch buffers for `device`, kept from tensor to tensor."""
    if not hasattr(_local, "scratch"):
        _local.scratch = {}
    key = str(torch.device(device)) if device is not None else "cpu"
    if key not in _local.scratch:
        _local.scratch[key] = Scratch(device)
    return _local.scratch[key]


class Flat:
    """Inputs of one output tensor, flattened, read chunk by chunk in the compute dtype.
    What `*_at` return lives in scratch buffers until the next call for the same input:
    this thread's (`thread_scratch`)."""

    def __init__(self, base, tensors: Sequence, compute):
        self.base = base.reshape(-1) if base is not None else None
        self.tensors = [t.reshape(-1) for t in tensors]
        self.compute = compute
        self.shape = (base if base is not None else tensors[0]).shape
        self.device = (base if base is not None else tensors[0]).device
        self.n = self.tensors[0].numel()
        self.size = chunk_size(self.device)
        self.scratch = thread_scratch(self.device)

    def spans(self) -> list[slice]:
        return spans(self.n, self.size)

    def _convert(self, name: str, source, span: slice):
        part = source[span]
        if part.dtype == self.compute:
            return part  # a view: callers never write into their inputs
        return self.scratch.get(name, part.shape, self.compute).copy_(part)

    def base_at(self, span: slice) -> torch.Tensor:
        return self._convert("base", self.base, span)

    def input_at(self, i: int, span: slice) -> torch.Tensor:
        return self._convert(f"input{i}", self.tensors[i], span)

    def delta_at(self, i: int, span: slice) -> torch.Tensor:
        """input i minus the base, as `merge` computes it on whole tensors."""
        a, b = self.input_at(i, span), self.base_at(span)
        return torch.sub(a, b, out=self.scratch.get("delta", a.shape, self.compute))


def elementwise(merge: Callable, base, tensors: Sequence, *, compute, out_dtype, out=None, **params) -> torch.Tensor:
    """Stream a merge whose every output entry depends only on the same entry of the
    inputs (linear): `merge` itself runs on each chunk, its result into `out=`, a
    reused buffer (a fresh one per chunk costs page faults and cache misses); the
    chunks are shared out to the worker threads."""
    first = Flat(base, tensors, compute)
    out = output(out, first.shape, out_dtype, first.device)
    dest = out.view(-1)

    def run(group: list[slice]):
        flat = Flat(base, tensors, compute)  # this thread's scratch
        for span in group:
            b = flat.base_at(span) if base is not None else None
            result = flat.scratch.get("result", (span.stop - span.start,), compute)
            dest[span].copy_(merge(b, [flat.input_at(i, span) for i in range(len(tensors))], out=result, **params))

    parallel(run, groups(first.spans()))
    return out
