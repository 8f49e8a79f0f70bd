"""Compiled loops (numba) behind fused.py: one chunk of a task-vector merge per call.

Every float operation is the one `task_vectors.merge_task_vectors` does, in float32,
in the same order; numba, without fastmath, neither fuses nor reorders them. The
arrays are float32 numpy views of torch buffers. Importing this module imports numba
(0.3 s), so fused.py imports it on first use.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, error_model="numpy")
def band(x, b, lo, hi, values, index):
    """Entries with |x - b| > hi (a count); those in [lo, hi] written to values/index
    (as long as x). NaN is neither.

    Without branches: at a density of 0.5, `> hi` is a coin flip, and a mispredicted
    branch per entry made this 5x slower. Every entry is written; only those in the
    band move the write position on.
    """
    above = 0
    count = 0
    for j in range(x.shape[0]):
        a = abs(x[j] - b[j])
        above += a > hi
        values[count] = a
        index[count] = j
        count += (a >= lo) & (a <= hi)
    return above, count


# --- DARE's draws: splitmix64 of (seed, entry index), as sparsify.draws computes them

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _draw(seed, at):
    """The top 24 bits of splitmix64's output number at+1 from `seed` (uint64s)."""
    z = seed + (at + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(40)


@numba.njit(nogil=True, cache=True)
def drawn(seed, start, limit, out):
    """out[j] = 1.0 where entry start + j is kept (its draw is below `limit`), else 0.0."""
    s, first = np.uint64(seed), np.uint64(start)
    for j in range(out.shape[0]):
        out[j] = np.float32(_draw(s, first + np.uint64(j)) < limit)


# The merge kernels are written out for four inputs (d0..d3) rather than looped over:
# a loop over a runtime count of inputs, a branch around a load, or a parameter read
# from an array inside the loop keeps LLVM from vectorizing and costs 5-30x. With fewer
# inputs, the spare ones read the last input again (row r_i) and _combine ignores them.
# Conditions become 1.0 / 0.0 by arithmetic: at density 0.5 they are coin flips.


@numba.njit(inline="always")
def _top_k(v, threshold, cut, at):
    """1.0 where TopK.keep keeps an entry of task vector value v, else 0.0."""
    a = abs(v)
    return np.float32((a > threshold) | ((a == threshold) & (at < cut)))


@numba.njit(inline="always")
def _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam):
    """bj + lam * combine(d): merge_task_vectors after thinning and weighting, one entry."""
    one, zero = np.float32(1.0), np.float32(0.0)
    mixed = zero + d0  # torch's sums start at +0.0: a sum of -0.0s is +0.0
    if n > 1:
        mixed = mixed + d1
    if n > 2:
        mixed = mixed + d2
    if n > 3:
        mixed = mixed + d3
    total = divisor
    if elect:
        sign = np.float32(mixed >= zero) * np.float32(2.0) - one  # +1 on a tie, as torch.ge(mixed, 0) * 2 - 1
        agree = np.float32(d0 * sign > zero)
        mixed, total = zero + d0 * agree, zero + agree * w0
        if n > 1:
            agree = np.float32(d1 * sign > zero)
            mixed, total = mixed + d1 * agree, total + agree * w1
        if n > 2:
            agree = np.float32(d2 * sign > zero)
            mixed, total = mixed + d2 * agree, total + agree * w2
        if n > 3:
            agree = np.float32(d3 * sign > zero)
            mixed, total = mixed + d3 * agree, total + agree * w3
        total = total + np.float32(total == zero)  # nothing agrees: divide by 1
    if normalize:
        mixed = mixed / total
    if lam != one:
        mixed = mixed * lam
    return bj + mixed


# error_model="numpy": x / 0 is inf or NaN, as in torch, with no check per entry
@numba.njit(nogil=True, cache=True, error_model="numpy")
def merge_top_k(x, b, out, start, threshold, cut, factor, weight, elect, normalize, divisor, lam):
    """out = b + lam * combine(weight_i * factor_i * top_k_i(x_i - b)), as merge_task_vectors.

    x: [inputs <= 4, c]; b, out: [c]; threshold, cut, factor, weight: 4 each (TopK's
    threshold and cut, -inf keeping all; factor 1.0 for none); start: the chunk's
    first entry in the tensor; `divisor` is used without sign election.
    """
    n = x.shape[0]
    r1, r2, r3 = min(1, n - 1), min(2, n - 1), min(3, n - 1)
    t0, t1, t2, t3 = threshold[0], threshold[1], threshold[2], threshold[3]
    c0, c1, c2, c3 = cut[0], cut[1], cut[2], cut[3]
    f0, f1, f2, f3 = factor[0], factor[1], factor[2], factor[3]
    w0, w1, w2, w3 = weight[0], weight[1], weight[2], weight[3]
    for j in range(b.shape[0]):
        bj, at = b[j], start + j
        v0, v1, v2, v3 = x[0, j] - bj, x[r1, j] - bj, x[r2, j] - bj, x[r3, j] - bj
        d0 = v0 * _top_k(v0, t0, c0, at) * f0 * w0
        d1 = v1 * _top_k(v1, t1, c1, at) * f1 * w1
        d2 = v2 * _top_k(v2, t2, c2, at) * f2 * w2
        d3 = v3 * _top_k(v3, t3, c3, at) * f3 * w3
        out[j] = _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def merge_drawn(x, b, out, start, seed, limit, factor, weight, elect, normalize, divisor, lam):
    """merge_top_k with DARE's keep rule instead: entry `at` of input i is kept when its
    draw from seed[i] (uint64) is below limit[i] (2**24 keeps all)."""
    n = x.shape[0]
    r1, r2, r3 = min(1, n - 1), min(2, n - 1), min(3, n - 1)
    s0, s1, s2, s3 = seed[0], seed[1], seed[2], seed[3]
    k0, k1, k2, k3 = limit[0], limit[1], limit[2], limit[3]
    f0, f1, f2, f3 = factor[0], factor[1], factor[2], factor[3]
    w0, w1, w2, w3 = weight[0], weight[1], weight[2], weight[3]
    first = np.uint64(start)
    for j in range(b.shape[0]):
        bj, at = b[j], first + np.uint64(j)
        d0 = (x[0, j] - bj) * np.float32(_draw(s0, at) < k0) * f0 * w0
        d1 = (x[r1, j] - bj) * np.float32(_draw(s1, at) < k1) * f1 * w1
        d2 = (x[r2, j] - bj) * np.float32(_draw(s2, at) < k2) * f2 * w2
        d3 = (x[r3, j] - bj) * np.float32(_draw(s3, at) < k3) * f3 * w3
        out[j] = _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam)


def warm() -> None:
    """Load (or compile, the first time) every kernel for the argument types the
    drivers pass, so their memory is resident from here on."""
    x, v = np.zeros((1, 1), np.float32), np.zeros(1, np.float32)
    four, cut = np.ones(4, np.float32), np.zeros(4, np.int64)
    band(v, v, np.float32(0), np.float32(1), np.zeros(1, np.float32), np.zeros(1, np.int64))
    drawn(np.uint64(1), 0, np.uint64(1), np.zeros(1, np.float32))
    merge_top_k(x, v, np.zeros(1, np.float32), 0, four, cut, four, four, True, True, np.float32(1), np.float32(1))
    merge_drawn(
        x,
        v,
        np.zeros(1, np.float32),
        0,
        np.zeros(4, np.uint64),
        np.ones(4, np.uint64),
        four,
        four,
        True,
        True,
        np.float32(1),
        np.float32(1),
    )
