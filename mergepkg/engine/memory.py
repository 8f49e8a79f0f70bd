"""The memory a build may use (`--max-memory`), and how the engine keeps to it.

The engine holds, at once: the inputs of the tensor being merged, the method's work
memory, the result, results waiting for the writer, and the inputs of the next tensor
(read ahead so reading overlaps the math). With a limit, it reads ahead only what fits
beside the current tensor, lets one result wait for the writer instead of two, and
merges a tensor that would not fit in blocks of rows, when its method allows it (the
method is elementwise: `MethodSpec.rows`). A tensor merged whole (a method that needs
it whole, for a top-k threshold or a norm; a vocabulary tensor whose rows move) holds
its inputs, result and work at once: where that is more than the budget, the build is
refused before anything is built, with the limit that would do (`Budget.check_fits`).

Estimates, per output tensor of n entries (c: bytes per entry in the compute dtype):
streaming methods hold the stored inputs, the result and a few chunks of work memory
(their draws are made chunk by chunk); others hold a converted copy (n·c) of each input
not stored in the compute dtype and a few whole temporaries (3n·c; none for a copy of
one input), and a random one its draws. A vocabulary tensor whose rows move holds its
aligned copies (one per input, in the promoted dtype) in place of its inputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from dataclasses import dataclass

from mergepkg.errors import BuildError
from mergepkg.io.tensors import CODE_OF, ITEMSIZE, promote_codes
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
            hint=f"allow at least {_mb_up(used + 4 * CHUNK_WORK)} MB",
        )
    return Budget(int((limit - used) * HEADROOM))


@dataclass(frozen=True)
class Budget:
    limit: int | None  # bytes; None: no limit

    def inputs(self, infos, out: OutputTensor) -> int:
        return sum(infos[p.model][p.tensor].nbytes for p in out.parts)

    def held(self, infos, out: OutputTensor) -> list[tuple[str, int]]:
        """What the method is handed for `out`, as (dtype code, entries) per part: the
        inputs as stored, or for a vocabulary tensor whose rows move (`out.row_map`) their
        aligned copies, in the parts' promoted dtype (`engine/rows.align_rows`)."""
        parts = [infos[p.model][p.tensor] for p in out.parts]
        if out.row_map is None:
            return [(i.dtype, _entries(i.shape)) for i in parts]
        code = _promoted([i.dtype for i in parts])
        return [(code, out.row_map.rows * _entries(parts[0].shape[1:]))] * len(parts)

    def loading(self, infos, out: OutputTensor) -> int:
        """What reading `out`'s inputs holds at its peak (`_Merger.load`): the inputs; for a
        vocabulary tensor whose rows move, its fallback rows, and the inputs not yet aligned
        beside the aligned copies made so far (each input is let go once its copy is made),
        with that copy's temporaries."""
        stored = [infos[p.model][p.tensor] for p in out.parts]
        m = out.row_map
        if m is None or not stored:
            return sum(i.nbytes for i in stored)
        code = _promoted([i.dtype for i in stored])
        rest, size = _entries(stored[0].shape[1:]), ITEMSIZE[code]
        wide = max(size, 4)  # fallback and padding means are taken in float32 or wider
        aligned = m.rows * rest * size
        pad = m.pad_from * rest * 4 if m.pad_from is not None and m.pad_from < m.rows and size < 4 else 0

        def making(i: int) -> int:  # while the copy of part i is made
            gather = m.rows * rest * (ITEMSIZE[stored[i].dtype] + size) if stored[i].dtype != code else 0
            return sum(s.nbytes for s in stored[i:]) + aligned * (i + 1) + gather + pad

        return len(m.fallbacks) * rest * wide + max(making(i) for i in range(len(stored)))

    def footprint(self, layout: StepLayout, infos, out: OutputTensor) -> int:
        """What merging `out` holds at once: its inputs (read, then aligned where rows move)
        and result, and the method's work."""
        handed = sum(ITEMSIZE[code] * n for code, n in self.held(infos, out))
        return max(self.loading(infos, out), handed + out.info.nbytes + self.work(layout, infos, out))

    def work(self, layout: StepLayout, infos, out: OutputTensor) -> int:
        """The method's memory beside what it is handed and its result.

        A streaming method: a few chunks of scratch. Its draws too are made chunk by chunk
        (DARE's by entry index, `sparsify.draws`, fused or not), never whole. A method
        without a stream: a converted copy of each input not already in the compute dtype
        (none where the stored dtype is the step's), a few whole temporaries, and a random
        one's draws; a copy of one input (passthrough: no base, one model) makes no
        temporary beyond its conversion to the saved dtype (`engine/step.merge_tensor`)."""
        method, n = layout.method, _entries(out.info.shape)
        if method.stream:
            return CHUNK_WORK
        held = self.held(infos, out)
        step = CODE_OF.get(layout.step.dtype) or _promoted([code for code, _ in held])
        compute = step if _RANK.get(step, 2) > 1 or not method.fp32 else "F32"
        if method.copies:
            compute = step = out.info.dtype
        converted = sum(_converting(code, step, compute) * k for code, k in held)
        c = ITEMSIZE.get(compute, 4)
        if method.base == "none" and method.max_inputs == 1:  # a copy, scaled at most
            return converted + (n * c if compute != out.info.dtype else 0)
        return converted + 3 * n * c + (WHOLE_DRAWS * n if method.random else 0)

    def check_fits(self, layouts, infos, limit: int) -> None:
        """Every tensor merged whole must fit in the budget: one whose method needs it
        whole (a top-k threshold, a norm), one whose vocabulary rows move, one that fits
        unsplit. Its inputs, result and the method's work are held at once; where that is
        more than the budget, an error before anything is built, naming the step, the
        tensor and the `--max-memory` (now `limit`) that passes this check, not a limit
        exceeded without a word."""
        if self.limit is None:
            return
        whole = [(lay, t) for lay in layouts for t in lay.tensors if self.row_block(lay, infos, t) is None]
        if not whole:
            return
        layout, out = max(whole, key=lambda found: self.footprint(found[0], infos, found[1]))
        need = self.footprint(layout, infos, out)
        if need <= self.limit:
            return
        moved = ", their rows aligned" if out.row_map is not None else ""
        raise BuildError(
            f"step {layout.step.name!r}: {layout.method.name} merges {out.name} whole, holding about "
            f"{need / 1e6:.0f} MB at once (its inputs{moved}, its result and the method's work); "
            f"--max-memory {limit / 1e6:.6g} MB leaves {self.limit / 1e6:.0f} MB for it",
            hint=f"allow at least {self.allowing(need, limit)} MB",
        )

    def allowing(self, need: int, limit: int) -> int:
        """The `--max-memory`, in whole MB rounded up, whose budget holds `need` bytes: what
        `limit` leaves is `self.limit`, the rest being in use already (`for_process`)."""
        used = limit - self.limit / HEADROOM if self.limit is not None else 0
        return _mb_up(max(used + need / HEADROOM, used + 4 * CHUNK_WORK))

    def read_ahead(self, layout: StepLayout, infos, current: OutputTensor, following: OutputTensor) -> bool:
        """Whether the next tensor's inputs may be read (and aligned) while this one is merged."""
        if self.limit is None:
            return True
        if self.row_block(layout, infos, following):
            return False  # read block by block, when its turn comes
        return self.footprint(layout, infos, current) + self.loading(infos, following) <= self.limit

    @property
    def results_waiting(self) -> int:
        """How many merged tensors may wait for the writer."""
        return 2 if self.limit is None else 1

    def row_block(self, layout: StepLayout, infos, out: OutputTensor) -> int | None:
        """Rows per block when `out` is merged in blocks; None when it is merged whole. A
        tensor whose vocabulary rows move is merged whole: a row may come from anywhere in
        its inputs, and padding rows are a mean of all of them (its aligned copies count in
        its footprint instead)."""
        rows = out.info.shape[0] if len(out.info.shape) >= 2 else 0
        if self.limit is None or not layout.method.rows or rows < 2 or out.row_map is not None:
            return None
        whole = self.footprint(layout, infos, out)
        if whole <= self.limit // 2:  # fits with room for the result waiting and reading ahead
            return None
        per_row = max(1, (whole - CHUNK_WORK) // rows)
        return max(1, min(rows, (self.limit // 4) // per_row))


_RANK = {"F16": 1, "BF16": 1, "F32": 2, "F64": 3}  # floating dtypes by width, as engine/step.rounds


def _entries(shape) -> int:
    return math.prod(shape)


def _promoted(codes: list[str]) -> str:
    """The dtype `codes` promote to (float32 for none, or for dtypes other than floats)."""
    floats = [c for c in codes if c in _RANK]
    return promote_codes(floats) if floats and len(floats) == len(codes) else "F32"


def _converting(code: str, step: str, compute: str) -> int:
    """Bytes per entry `merge_tensor` allocates converting an input stored as `code`: to the
    step's dtype where that may change a value, then to the compute dtype where it differs."""
    cost = 0
    if code != step and not _RANK.get(step, 0) > _RANK.get(code, 0):
        cost, code = ITEMSIZE.get(step, 4), step
    return cost + (ITEMSIZE.get(compute, 4) if code != compute else 0)


def _mb_up(n: float) -> int:
    """Bytes as whole MB, rounded up: a limit hinted so is never just below what it must be."""
    return math.ceil((n + 1) / 1e6)
