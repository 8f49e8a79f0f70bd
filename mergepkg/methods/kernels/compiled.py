"""Compiled loops (numba) behind fused.py: one chunk of a task-vector merge per call.

Every float operation is the one `task_vectors.merge_task_vectors` does, in float32,
in the same order; numba, without fastmath, neither fuses nor reorders them. The
arrays are numpy views of torch buffers. Importing this module imports numba (0.3 s),
so fused.py imports it on first use.

The kernels read the inputs in their stored dtype and compute in float32, bfloat16 or
float16, rounding where torch rounds (dtypes.py: `_read`, `_round`, `_store`); DARE's
thinning draws as sparsify.draws does (draws.py), and the L1 rescale sums with torch's
bits (torch_sum.py). Here: the band of TIES' exact top-k, the merges (one entry point per
input count), the L1 rescale's first pass, and `warm`, which loads them.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np

from mergepkg.methods.kernels import jit
from mergepkg.methods.kernels.draws import _draw, _pack, _unpack, draw_bits
from mergepkg.methods.kernels.dtypes import MARKERS, STORED, _read, _round, _store_result
from mergepkg.methods.kernels.reduce import BLOCK
from mergepkg.methods.kernels.torch_sum import SUM_ILP, SUM_LANES, SUM_LEVELS, _torch_sum, sums

BAND_BLOCK = 32  # entries band() tests together before it collects any of them


@jit.njit(nogil=True, error_model="numpy")
def band(x, b, lo, hi, values, index, like):
    """Entries with |x - b| > hi or NaN (a count: NaN is larger than every number, as
    torch sorts it); those in [lo, hi] written to values/index (as long as x), in order.
    x and b are stored inputs (STORED), read in the compute dtype `like` names; x - b is
    rounded to it.

    Without a branch per entry: at a density of 0.5, `> hi` is a coin flip, and so is
    `>= lo`, and a mispredicted branch per entry made this 5x slower. A block of
    BAND_BLOCK entries is measured and tested at once (vectorized); only a block with an
    entry in the band (a few percent of entries) is collected, every entry written and
    only those in the band moving the write position on.
    """
    n = x.shape[0]
    block = np.empty(BAND_BLOCK, np.float32)
    above = 0
    count = 0
    for start in range(0, n - n % BAND_BLOCK, BAND_BLOCK):
        inside = 0
        for k in range(BAND_BLOCK):
            a = abs(_round(_read(x[start + k], like) - _read(b[start + k], like), like))
            block[k] = a
            above += not a <= hi  # NaN too
            inside |= (a >= lo) & (a <= hi)
        if inside:
            for k in range(BAND_BLOCK):
                a = block[k]
                values[count] = a
                index[count] = start + k
                count += (a >= lo) & (a <= hi)
    for j in range(n - n % BAND_BLOCK, n):  # the last, partial block
        a = abs(_round(_read(x[j], like) - _read(b[j], like), like))
        above += not a <= hi  # NaN too
        values[count] = a
        index[count] = j
        count += (a >= lo) & (a <= hi)
    return above, count


# The merge kernels are written out for four inputs (x0..x3) rather than looped over:
# a loop over a runtime count of inputs, a branch around a load, or a parameter read
# from an array inside the loop keeps LLVM from vectorizing and costs 5-30x. With fewer
# inputs, the spare ones are the last input again and _combine ignores them.
# Conditions become 1.0 / 0.0 by arithmetic: at density 0.5 they are coin flips.


@numba.njit(inline="always")
def _top_k(v, threshold, cut, at):
    """1.0 where TopK.keep keeps an entry of task vector value v, else 0.0."""
    a = abs(v)
    return np.float32((a > threshold) | ((a == threshold) & (at < cut)))


@numba.njit(inline="always")
def _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam, like):
    """bj + lam * combine(d): merge_task_vectors after thinning and weighting, one entry.
    Sums over inputs accumulate in float32 and are rounded once (as torch sums half
    precision over dim 0); every other operation is rounded to the compute dtype."""
    one, zero = np.float32(1.0), np.float32(0.0)
    mixed = zero + d0  # torch's sums start at +0.0: a sum of -0.0s is +0.0
    if n > 1:
        mixed = mixed + d1
    if n > 2:
        mixed = mixed + d2
    if n > 3:
        mixed = mixed + d3
    mixed = _round(mixed, like)
    total = divisor
    if elect:
        sign = np.float32(mixed >= zero) * np.float32(2.0) - one  # +1 on a tie, as torch.ge(mixed, 0) * 2 - 1
        agree = np.float32(d0 * sign > zero)  # d * sign, d * agree and agree * w are exact
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
        mixed, total = _round(mixed, like), _round(total, like)
        total = total + np.float32(total == zero)  # nothing agrees: divide by 1
    if normalize:
        mixed = _round(mixed / total, like)
    if lam != one:
        mixed = _round(mixed * lam, like)
    return _round(bj + mixed, like)


@numba.njit(inline="always")
def _dare(xj, bj, keep, factor, weight, like):
    """One input's delta, kept or not (`keep` 1 or 0, from its draw; exact: the delta or a
    signed zero), times the rescale factor, times the weight, each rounded as torch rounds."""
    return _round(_round(_round(xj - bj, like) * np.float32(keep) * factor, like) * weight, like)


# Each merge kernel is compiled once per input count, the count a constant in its loop
# (`_thinned_top_k(..., 3, ..., p)`, the loop inlined, `p` the parameters after the
# chunks): LLVM then drops the spare inputs and the branches on `n` and vectorizes the rest
# better. Per entry, 3 inputs, one thread, float32 compute over bfloat16: merge_weighted
# 1.17 to 0.24 ns (task_arithmetic's); with sign election, merge_top_k 1.65 to 1.31 ns and
# merge_drawn 2.41 to 1.95 ns (in bfloat16 compute 3.15 to 2.71 and 4.24 to 3.76 ns).
# Each count is its own entry point (`_for_count`), compiled on its first call, so a step
# compiles the loops of its own count only: merge_drawn's for 3 inputs in 1.7 s against
# 5.0 s for all four in one function, merge_weighted's 0.5 against 1.4 s.


@numba.njit(inline="always")
def _thinned_top_k(x0, x1, x2, x3, n, b, out, start, p):
    threshold, cut, factor, weight, elect, normalize, divisor, lam, like = p
    t0, t1, t2, t3 = threshold[0], threshold[1], threshold[2], threshold[3]
    c0, c1, c2, c3 = cut[0], cut[1], cut[2], cut[3]
    f0, f1, f2, f3 = factor[0], factor[1], factor[2], factor[3]
    w0, w1, w2, w3 = weight[0], weight[1], weight[2], weight[3]
    for j in range(b.shape[0]):
        bj, at = _read(b[j], like), start + j
        v0, v1 = _round(_read(x0[j], like) - bj, like), _round(_read(x1[j], like) - bj, like)
        v2, v3 = _round(_read(x2[j], like) - bj, like), _round(_read(x3[j], like) - bj, like)
        # v * keep is exact (v or a signed zero); then the rescale factor, then the weight
        d0 = _round(_round(v0 * _top_k(v0, t0, c0, at) * f0, like) * w0, like)
        d1 = _round(_round(v1 * _top_k(v1, t1, c1, at) * f1, like) * w1, like)
        d2 = _round(_round(v2 * _top_k(v2, t2, c2, at) * f2, like) * w2, like)
        d3 = _round(_round(v3 * _top_k(v3, t3, c3, at) * f3, like) * w3, like)
        merged = _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam, like)
        out[j] = _store_result(merged, out, like)


@numba.njit(inline="always")
def _kept_block(x0, x1, x2, x3, n, b, out, k0, k1, k2, k3, p):
    """One block of merge_drawn: the chunks' slices, and their keep masks as 0/1 bytes."""
    f0, f1, f2, f3, w0, w1, w2, w3, elect, normalize, divisor, lam, like = p
    for j in range(b.shape[0]):
        bj = _read(b[j], like)
        d0 = _dare(_read(x0[j], like), bj, k0[j], f0, w0, like)
        d1 = _dare(_read(x1[j], like), bj, k1[j], f1, w1, like)
        d2 = _dare(_read(x2[j], like), bj, k2[j], f2, w2, like)
        d3 = _dare(_read(x3[j], like), bj, k3[j], f3, w3, like)
        merged = _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam, like)
        out[j] = _store_result(merged, out, like)


@numba.njit(inline="always")
def _thinned_drawn(x0, x1, x2, x3, n, b, out, p):
    m0, m1, m2, m3, factor, weight, elect, normalize, divisor, lam, like = p
    f0, f1, f2, f3 = factor[0], factor[1], factor[2], factor[3]
    w0, w1, w2, w3 = weight[0], weight[1], weight[2], weight[3]
    q = (f0, f1, f2, f3, w0, w1, w2, w3, elect, normalize, divisor, lam, like)
    # a block's keep masks as 0/1 bytes, one row an input x0..x3, in cache (a spare
    # input's row stays 0, never read)
    k = np.zeros((4, BLOCK), np.uint8)
    total = b.shape[0]
    for lo in range(0, total, BLOCK):
        hi = min(lo + BLOCK, total)
        count, at = -(-(hi - lo) // 8), lo // 8
        _unpack(m0[at:], count, k[0])
        if n > 1:
            _unpack(m1[at:], count, k[1])
        if n > 2:
            _unpack(m2[at:], count, k[2])
        if n > 3:
            _unpack(m3[at:], count, k[3])
        # the block's slices, each loop over its own arrays from 0 (indexed from lo + j,
        # LLVM left the loop unvectorized: 4-8x slower)
        y0, y1, y2, y3 = x0[lo:hi], x1[lo:hi], x2[lo:hi], x3[lo:hi]
        _kept_block(y0, y1, y2, y3, n, b[lo:hi], out[lo:hi], k[0], k[1], k[2], k[3], q)


@numba.njit(inline="always")
def _weighted(x0, x1, x2, x3, n, b, out, p):
    """merge_top_k's loop where no input is thinned: each delta rounded, times its weight,
    rounded (v * 1.0 * 1.0, the keep and the factor of an unthinned input, is v itself)."""
    weight, elect, normalize, divisor, lam, like = p
    w0, w1, w2, w3 = weight[0], weight[1], weight[2], weight[3]
    for j in range(b.shape[0]):
        bj = _read(b[j], like)
        d0 = _round(_round(_read(x0[j], like) - bj, like) * w0, like)
        d1 = _round(_round(_read(x1[j], like) - bj, like) * w1, like)
        d2 = _round(_round(_read(x2[j], like) - bj, like) * w2, like)
        d3 = _round(_round(_read(x3[j], like) - bj, like) * w3, like)
        merged = _combine(bj, n, d0, d1, d2, d3, w0, w1, w2, w3, elect, normalize, divisor, lam, like)
        out[j] = _store_result(merged, out, like)


def _for_count(count: int) -> tuple:
    """The merge kernels' entry points for `count` inputs: merge_top_k's, merge_drawn's and
    merge_weighted's arguments less `n`. numba freezes `count`, the closure's one cell, as
    a constant, and its cache tells the counts apart by that cell's value."""
    # error_model="numpy": x / 0 is inf or NaN, as in torch, with no check per entry
    kernel = jit.njit(nogil=True, error_model="numpy")

    def top_k(x0, x1, x2, x3, b, out, start, threshold, cut, factor, weight, elect, normalize, divisor, lam, like):
        p = (threshold, cut, factor, weight, elect, normalize, divisor, lam, like)
        _thinned_top_k(x0, x1, x2, x3, count, b, out, start, p)

    def drawn(x0, x1, x2, x3, b, out, m0, m1, m2, m3, factor, weight, elect, normalize, divisor, lam, like):
        p = (m0, m1, m2, m3, factor, weight, elect, normalize, divisor, lam, like)
        _thinned_drawn(x0, x1, x2, x3, count, b, out, p)

    def weighted(x0, x1, x2, x3, b, out, weight, elect, normalize, divisor, lam, like):
        _weighted(x0, x1, x2, x3, count, b, out, (weight, elect, normalize, divisor, lam, like))

    return kernel(top_k), kernel(drawn), kernel(weighted)


class Counted:
    """A merge kernel, called as kernel(x0, x1, x2, x3, n, ...): its entry point for the
    `n` inputs (1-4) runs, compiled on first use."""

    def __init__(self, entries: list, doc: str) -> None:
        self.entries, self.__doc__ = entries, doc

    def __call__(self, x0, x1, x2, x3, n, *rest):
        return self.entries[n - 1](x0, x1, x2, x3, *rest)

    @property
    def signatures(self) -> list:
        """Every count's compiled signatures, as a numba function's."""
        return [sig for entry in self.entries for sig in entry.signatures]


_BY_COUNT = [_for_count(count) for count in range(1, 5)]  # x0..x3: up to fused.MAX_INPUTS

merge_top_k = Counted(
    [e[0] for e in _BY_COUNT],
    """merge_top_k(x0, x1, x2, x3, n, b, out, start, threshold, cut, factor, weight, elect,
    normalize, divisor, lam, like): out = b + lam * combine(weight_i * factor_i *
    top_k_i(x_i - b)), as merge_task_vectors.

    x0..x3: the n <= 4 inputs' chunks (spare ones repeat the last), b the base's, all
    stored (STORED); out: the result's chunk, in a STORED dtype too (rounded to it as
    torch converts); threshold, cut, factor, weight: 4 each (TopK's threshold and cut,
    -inf keeping all; factor 1.0 for none); start: the chunk's first entry in the tensor;
    `divisor` is used without sign election. `like` names the compute dtype (MARKERS):
    inputs are read in it, factor, weight and divisor hold its values, and each
    operation's result is rounded to it where torch's is.""",
)
merge_drawn = Counted(
    [e[1] for e in _BY_COUNT],
    """merge_drawn(x0, x1, x2, x3, n, b, out, m0, m1, m2, m3, factor, weight, elect,
    normalize, divisor, lam, like): merge_top_k with DARE's keep rule instead: entry j of
    input i is kept where bit j of its keep mask m_i is set (draw_bits, l1_drawn: bit j % 8
    of byte j // 8; all set keeps all; a spare input's mask is never read).""",
)
merge_weighted = Counted(
    [e[2] for e in _BY_COUNT],
    """merge_weighted(x0, x1, x2, x3, n, b, out, weight, elect, normalize, divisor, lam,
    like): merge_top_k where no input is thinned (task_arithmetic; TIES or DARE at density
    1), with the same bits.""",
)


# The L1 rescale's first pass (sparsify.l1_rescale): one input's task vector, in the
# compute dtype, summed in reduce.Total's blocks as |delta| and |delta * keep|: the
# kernel writes a block's magnitudes to a scratch that stays in the cache and sums them
# with torch's bits, one pair of sums per block (`before`, `after`).


@numba.njit(inline="always")
def _l1_scratch():
    """A block's magnitudes (|delta|, |delta * keep|) and _torch_sum's accumulators."""
    return np.empty((2, BLOCK), np.float32), np.empty((SUM_LEVELS, SUM_ILP * SUM_LANES), np.float32)


@numba.njit(inline="always")
def _l1_block(values, size, before, after, k, acc):
    before[k] = _torch_sum(values[0], size, acc)
    after[k] = _torch_sum(values[1], size, acc)


@jit.njit(nogil=True, error_model="numpy")
def l1_top_k(x, b, start, threshold, cut, before, after, like):
    """Per BLOCK entries of x - b (from entry `start`, a multiple of BLOCK): the sum of
    |x - b| into before, of |(x - b) * keep| with TopK's keep rule (threshold, cut) into
    after."""
    values, acc = _l1_scratch()
    n = b.shape[0]
    for k in range(-(-n // BLOCK)):
        lo = k * BLOCK
        size = min(BLOCK, n - lo)
        for j in range(size):
            v = _round(_read(x[lo + j], like) - _read(b[lo + j], like), like)
            values[0, j] = abs(v)
            values[1, j] = abs(v * _top_k(v, threshold, cut, start + lo + j))
        _l1_block(values, size, before, after, k, acc)


@jit.njit(nogil=True, error_model="numpy")
def l1_drawn(x, b, start, seed, limit, before, after, like, bits):
    """l1_top_k with DARE's keep rule: entry `at` kept when its draw from `seed` is below
    `limit`; the draws also written to `bits`, the keep mask of these entries (draw_bits)."""
    values, acc = _l1_scratch()
    kept = np.zeros(BLOCK, np.uint8)
    n = b.shape[0]
    for k in range(-(-n // BLOCK)):
        lo = k * BLOCK
        size = min(BLOCK, n - lo)
        first = np.uint64(start + lo)
        for j in range(size):
            v = _round(_read(x[lo + j], like) - _read(b[lo + j], like), like)
            keep = np.uint8(_draw(seed, first + np.uint64(j)) < limit)
            kept[j] = keep
            values[0, j] = abs(v)
            values[1, j] = abs(v * np.float32(keep))
        kept[size : -(-size // 8) * 8] = 0  # the last byte of a ragged end: no entries past it
        _pack(kept, bits[lo // 8 :], -(-size // 8))
        _l1_block(values, size, before, after, k, acc)


def warm(
    dtypes=tuple(MARKERS), stored=("float32", "bfloat16"), kernels=None, results=("float32", "bfloat16"), counts=None
):
    """Load (or compile, the first time) `kernels` (names of this module's; None: every
    merge kernel) for the argument types the drivers pass: each compute dtype in `dtypes`
    over inputs stored as `stored`, the merges writing results stored as `results` for
    `counts` inputs (None: 1-4; other types and counts are compiled on first use), so
    their memory is resident from here on."""
    wanted = set(kernels) if kernels is not None else {"band", "l1_top_k", "l1_drawn", "draw_bits", "sums", *MERGES}
    counts = counts or range(1, len(_BY_COUNT) + 1)
    f32, i64 = np.zeros(1, np.float32), np.zeros(1, np.int64)
    if "sums" in wanted:
        sums(f32, f32)
    four, cut, mask = np.ones(4, np.float32), np.zeros(4, np.int64), np.zeros(1, np.uint8)
    if "draw_bits" in wanted:
        draw_bits(np.uint64(1), 0, np.uint64(1), mask)
    for dtype in dtypes:
        like = MARKERS[dtype]
        for kind in stored:
            v = np.zeros(1, STORED[kind])
            if "band" in wanted:
                band(v, v, np.float32(0), np.float32(1), f32, i64, like)
            if "l1_top_k" in wanted:
                l1_top_k(v, v, 0, np.float32(0), 0, f32, f32, like)
            if "l1_drawn" in wanted:
                l1_drawn(v, v, 0, np.uint64(1), np.uint64(1), f32, f32, like, mask)
            rest = (four, four, True, True, np.float32(1), np.float32(1), like)
            for result, n in itertools.product([np.zeros(1, STORED[r]) for r in results], counts):
                if "merge_top_k" in wanted:
                    merge_top_k(v, v, v, v, n, v, result, 0, four, cut, *rest)
                if "merge_drawn" in wanted:
                    merge_drawn(v, v, v, v, n, v, result, mask, mask, mask, mask, *rest)
                if "merge_weighted" in wanted:
                    merge_weighted(v, v, v, v, n, v, result, four, *rest[2:])


MERGES = ("merge_top_k", "merge_drawn", "merge_weighted")  # the merge kernels, one of which writes each chunk
