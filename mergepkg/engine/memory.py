"""The memory a build may use (`--max-memory`), and how the engine keeps to it.

The engine holds, at once: the inputs of the tensor being merged, the method's work
memory, the result, results waiting for the writer, and the inputs of the next tensor
(read ahead so reading overlaps the math). With a limit, it reads ahead only what fits
beside the current tensor, lets one result wait for the writer instead of two, and
merges a tensor that would not fit in blocks of rows, when its method allows it (the
method is elementwise: `MethodSpec.rows`). A method that needs the whole tensor at
once (a top-k threshold, a norm) needs at least its inputs and result in memory;
the limit cannot go below that, and such a tensor is merged whole.

Estimates, per output tensor of n entries (c: bytes per entry in the compute dtype):
streaming methods hold the stored inputs, the result, a few chunks of work memory and,
for random methods, one draw (4n) and mask (n) per input; others convert every input
(n·c each) and make a few whole temporaries (3n·c).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

from mergepkg.errors import BuildError
from mergepkg.io.tensors import CODE_OF, ITEMSIZE
from mergepkg.layout.types import OutputTensor, StepLayout

CHUNK_WORK = 64 << 20  # scratch of a streaming method: a few chunks per input, generously
# bytes per entry a whole-tensor random method holds for one input's draws: DELLA's two
# argsorts (int64), ranks, probabilities and draws (float32) and mask, one input at a time
WHOLE_DRAWS = 40
HEADROOM = 0.75  # of the memory left, what the estimates may plan for: the allocator keeps some


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS at once. By default it raises
    its mmap threshold as blocks are freed (up to 32 MB) and keeps later ones in its
    heaps, where freed memory stays resident: linear under `--max-memory 700MB` peaked
    at 0.59-0.68 GB, against 0.46 GB with a fixed 1 MiB threshold. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def trim() -> None:
    """Give the memory freed by a finished step back to the OS (glibc's malloc_trim), so a
    build of many steps under a limit does not creep up step by step. Elsewhere, nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(None).malloc_trim(0)


def for_process(limit: int | None) -> Budget:
    """The engine's share of a whole-process limit: what is not already in use (the
    interpreter, torch's libraries). Measured once per build, before its first step, so
    the budget holds for every step (`engine/step.budget_for`)."""
    if limit is None:
        return Budget(None)
    import torch  # noqa: F401 - loaded now, so its libraries count as already in use

    return_freed_memory()

    used = resident_bytes()
    if limit - used < 4 * CHUNK_WORK:
        raise BuildError(
            f"--max-memory {limit / 1e6:.6g} MB leaves too little beside the "
            f"{used / 1e6:.0f} MB this process already uses",
            hint=f"allow at least {(used + 4 * CHUNK_WORK) / 1e6:.0f} MB",
        )
    return Budget(int((limit - used) * HEADROOM))


@dataclass(frozen=True)
class Budget:
    limit: int | None  # bytes; None: no limit

    def inputs(self, infos, out: OutputTensor) -> int:
        return sum(infos[p.model][p.tensor].nbytes for p in out.parts)

    def footprint(self, layout: StepLayout, infos, out: OutputTensor) -> int:
        """What merging `out` holds at once: its inputs and result, and the method's work."""
        return self.inputs(infos, out) + out.info.nbytes + self.work(layout, out)

    def work(self, layout: StepLayout, out: OutputTensor) -> int:
        """The method's memory beside the inputs and result: chunks of scratch and draws for a
        streaming method, whole converted copies, temporaries and draws for the others."""
        method, n = layout.method, out.info.nbytes // ITEMSIZE[out.info.dtype]
        if method.stream:
            return CHUNK_WORK + (5 * n * len(out.inputs) if method.random else 0)
        compute = max(4 if method.fp32 else 0, ITEMSIZE[CODE_OF.get(layout.step.dtype, "F32")])
        return n * compute * (len(out.parts) + 3) + (WHOLE_DRAWS * n if method.random else 0)

    def check_fits(self, layouts, infos, limit: int) -> None:
        """A tensor's inputs and result are the floor of any limit (a method may need them
        whole), but the work a method does beside them must fit: DELLA's draws, the whole
        copies of a method without a stream. Else an error before anything is built, saying
        how much `--max-memory` (now `limit`) would do, not a limit exceeded without a word."""
        if self.limit is None:
            return
        whole = [(lay, t) for lay in layouts for t in lay.tensors if self.row_block(lay, infos, t) is None]
        if not whole:
            return
        layout, out = max(whole, key=lambda found: self.work(*found))
        work = self.work(layout, out)
        if work <= self.limit:
            return
        need = self.footprint(layout, infos, out)
        raise BuildError(
            f"step {layout.step.name!r}: {layout.method.name} merges {out.name} whole, with about "
            f"{work / 1e6:.0f} MB of work beside its inputs and result; --max-memory {limit / 1e6:.6g} MB "
            f"leaves {self.limit / 1e6:.0f} MB",
            hint=f"allow at least {(limit + (need - self.limit) / HEADROOM) / 1e6:.0f} MB",
        )

    def read_ahead(self, layout: StepLayout, infos, current: OutputTensor, following: OutputTensor) -> bool:
        """Whether the next tensor's inputs may be read while this one is merged."""
        if self.limit is None:
            return True
        if self.row_block(layout, infos, following):
            return False  # read block by block, when its turn comes
        return self.footprint(layout, infos, current) + self.inputs(infos, following) <= self.limit

    @property
    def results_waiting(self) -> int:
        """How many merged tensors may wait for the writer."""
        return 2 if self.limit is None else 1

    def row_block(self, layout: StepLayout, infos, out: OutputTensor) -> int | None:
        """Rows per block when `out` is merged in blocks; None when it is merged whole."""
        rows = out.info.shape[0] if len(out.info.shape) >= 2 else 0
        if self.limit is None or not layout.method.rows or rows < 2:
            return None
        whole = self.footprint(layout, infos, out)
        if whole <= self.limit // 2:  # fits with room for the result waiting and reading ahead
            return None
        per_row = max(1, (whole - CHUNK_WORK) // rows)
        return max(1, min(rows, (self.limit // 4) // per_row))
