"""torch's float32 sum in compiled code, bit for bit: the L1 rescale's sums and slerp's
dot products without torch.

torch's CPU sum of a contiguous float32 row (ATen's SumKernel.cpp: cascade_sum, then
vectorized_inner_sum) adds vectors of LANES floats into ILP interleaved accumulators,
moves those up a cascade of LEVELS accumulators every 2**power rows, then adds the
entries past the last whole vector and the lanes, in order, to a float 0. Rows shorter
than a vector go the same way one entry wide. LANES is torch's Vectorized<float> width
in the kernel it runs: 8 on x86 (its AVX-512 dispatch keeps the AVX2 sum) and on ARM's
NEON; fused.sums_agree checks the bits against torch before a step relies on them.
"""

from __future__ import annotations

import numba
import numpy as np

from mergepkg.methods.kernels import jit
from mergepkg.methods.kernels.reduce import BLOCK

SUM_LANES, SUM_ILP, SUM_LEVELS = 8, 4, 4


@numba.njit(inline="always")
def _ceil_log2(x):
    """c10's CeilLog2: 1 up to 2, else the bits of x - 1."""
    if x <= 2:
        return 1
    bits, v = 0, x - 1
    while v:
        bits, v = bits + 1, v >> 1
    return bits


@numba.njit(inline="always")
def _cascade(x, rows, width, acc):
    """torch's multi_row_sum: rows of `width` entries of x (row i at i * width), each
    entry position summed on its own, into acc[0, :width] (acc: SUM_LEVELS x width)."""
    power = max(4, _ceil_log2(rows) // SUM_LEVELS)
    step, mask = 1 << power, (1 << power) - 1
    acc[:, :width] = 0
    i = 0
    while i + step <= rows:
        # level 0, from 0, over `step` rows, moved up into level 1: position by position
        # (independent: LLVM vectorizes across them, as torch's lanes and accumulators)
        at = i * width
        for p in range(width):
            s = np.float32(0)
            for j in range(step):
                s += x[at + j * width + p]
            acc[1, p] += s
        i += step
        for level in range(2, SUM_LEVELS + 1):
            if i & (mask << ((level - 1) * power)) or level == SUM_LEVELS:
                break
            for p in range(width):
                acc[level, p] += acc[level - 1, p]
                acc[level - 1, p] = 0
    while i < rows:
        for p in range(width):
            acc[0, p] += x[i * width + p]
        i += 1
    for level in range(1, SUM_LEVELS):
        for p in range(width):
            acc[0, p] += acc[level, p]


@numba.njit(inline="always")
def _lanes_sum(x, n, lanes, acc):
    """torch's sum of x[:n] in `lanes`-wide vectors (1: its scalar loop), each call site a
    constant `lanes`, so that LLVM unrolls and vectorizes the positions."""
    vectors = n // lanes
    rows = vectors // SUM_ILP
    _cascade(x, rows, SUM_ILP * lanes, acc)
    for v in range(rows * SUM_ILP, vectors):  # the vectors past the last whole row
        for lane in range(lanes):
            acc[0, lane] += x[v * lanes + lane]
    for k in range(1, SUM_ILP):
        for lane in range(lanes):
            acc[0, lane] += acc[0, k * lanes + lane]
    total = np.float32(0)
    for j in range(vectors * lanes, n):  # the entries past the last whole vector
        total += x[j]
    for lane in range(lanes):
        total += acc[0, lane]
    return np.float32(0) + total  # into torch's output, filled with 0


# Called, not inlined: its three cascades inlined at every call site made a cold compile
# of slerp's loops 18.9 s (called: 3.8 s), for a few ms over a whole build.
@numba.njit
def _torch_sum(x, n, acc):
    """x[:n].sum() with torch's bits (float32, its CPU kernel's order); acc: scratch of
    SUM_LEVELS x (SUM_ILP * SUM_LANES)."""
    if n == BLOCK:  # a whole block: its constant length lets LLVM unroll and vectorize (8x)
        return _lanes_sum(x, BLOCK, SUM_LANES, acc)
    if n >= SUM_LANES:
        return _lanes_sum(x, n, SUM_LANES, acc)
    return _lanes_sum(x, n, 1, acc)  # shorter than a vector: torch's scalar loop


@jit.njit(nogil=True)
def sums(x, out):
    """out[k] = torch's sum of x's k-th BLOCK entries (the last may be fewer), with
    torch's bits (tests and fused.sums_agree hold it to torch)."""
    acc = np.empty((SUM_LEVELS, SUM_ILP * SUM_LANES), np.float32)
    for k in range(out.shape[0]):
        lo = k * BLOCK
        out[k] = _torch_sum(x[lo : lo + BLOCK], min(BLOCK, x.shape[0] - lo), acc)
