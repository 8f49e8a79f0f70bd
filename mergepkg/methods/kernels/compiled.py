"""Compiled loops (numba) behind fused.py: one chunk of a task-vector merge per call.

Every float operation is the one `task_vectors.merge_task_vectors` does, in float32,
in the same order; numba, without fastmath, neither fuses nor reorders them. The
arrays are float32 numpy views of torch buffers. Importing this module imports numba
(0.3 s), so fused.py imports it on first use.

Half-precision compute (bfloat16, float16) runs the same loops: torch's CPU kernels
compute each such operation in float32 and round its result to the half dtype (to
nearest, ties to even), and sums over inputs accumulate in float32 and round once.
The kernels do the same: `_round(x, like)` after each operation where torch rounds,
with `like` an empty array whose dtype names the compute dtype (MARKERS). numba
compiles one specialization per marker type; for float32, `_round` emits nothing, so
its code is the float32 kernel's, operation for operation.

The kernels read the inputs in their stored dtype, as 16-bit integers where numpy has no
such float (STORED; `fused.raw` makes the views): `_read` widens an entry to float32 (exact)
and rounds it to the compute dtype where that differs, as torch's conversion does, so no
chunk is converted by torch into a buffer of its own first.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from llvmlite import binding, ir
from numba.core import types
from numba.extending import intrinsic

from mergepkg.methods.kernels import caching
from mergepkg.methods.kernels.reduce import BLOCK


class _Refuse(importlib.abc.MetaPathFinder):
    """An import finder that refuses one package and its modules."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, name, path, target=None):
        if name == self.package or name.startswith(self.package + "."):
            raise ImportError(f"{name} is not loaded for mergepkg's kernels")
        return None


@contextlib.contextmanager
def _no_blas_probe() -> Iterator[None]:
    """numba's array implementations probe for a BLAS by importing scipy.linalg where
    SciPy is installed (0.3-0.5 s, on every build's first kernel: the registries load on
    first use, cache hits included). No kernel here calls a BLAS; numba only falls back
    to its own loop for np.convolve and np.correlate. Where scipy.linalg is loaded
    already, nothing changes."""
    if "scipy.linalg" in sys.modules:
        yield
        return
    refuse = _Refuse("scipy.linalg")
    sys.meta_path.insert(0, refuse)
    try:
        yield
    finally:
        sys.meta_path.remove(refuse)


with _no_blas_probe():
    import numba.np.arraymath  # (what a kernel's first load imports, probe included)

# The compute dtype as a type numba specializes on: numpy has no bfloat16, and numba's CPU
# target takes no float16 arrays, so 16-bit integers stand for them.
MARKERS = {
    "float32": np.empty(0, np.float32),
    "bfloat16": np.empty(0, np.uint16),
    "float16": np.empty(0, np.int16),
}
FLOAT16_BY_ARITHMETIC = np.empty(0, np.uint8)  # float16 without F16C's conversion, whatever the CPU (tests)


def _f16c() -> bool:
    """Whether the code is compiled for this host and it converts float16 in hardware
    (F16C: vcvtps2ph rounds to nearest even, subnormals included, as torch's conversion
    does with the same instruction). Compiled for another target (NUMBA_CPU_NAME), LLVM
    would call a runtime function numba may not have: arithmetic instead."""
    if getattr(numba.config, "CPU_NAME", None) or getattr(numba.config, "CPU_FEATURES", None):
        return False
    return bool(binding.get_host_cpu_features().get("f16c", False))


_I32, _F32 = ir.IntType(32), ir.FloatType()


def _int(value: int) -> ir.Constant:
    return ir.Constant(_I32, value - (1 << 32) if value >= 1 << 31 else value)  # LLVM's i32 is signed


def _bfloat16(builder, v, any_nan: bool = True):
    """float32 v rounded to bfloat16 (still float32), as c10::BFloat16 rounds: add
    0x7FFF plus the lowest kept bit, drop the low 16 bits (a carry rounds into the
    exponent, up to inf). A NaN stays a NaN, with its low 16 bits cleared.

    `any_nan`: v may be any NaN; one with low bits set could carry into the exponent (to
    inf, or past the sign to 0.0), so a select keeps it a NaN. Without it (the kernels'
    own results, `_round`), v is a NaN only as one the kernels made: every NaN they hold
    has its low 16 bits clear (KERNEL NANS), so the addition cannot carry and the NaN
    comes through as it is, two instructions of seven fewer."""
    u = builder.bitcast(v, _I32)
    odd = builder.and_(builder.lshr(u, _int(16)), _int(1))
    r = builder.and_(builder.add(builder.add(u, _int(0x7FFF)), odd), _int(0xFFFF0000))
    if not any_nan:
        return builder.bitcast(r, _F32)
    quiet = builder.and_(builder.or_(u, _int(0x00400000)), _int(0xFFFF0000))  # a quiet NaN, low bits clear
    return builder.bitcast(builder.select(builder.fcmp_unordered("uno", v, v), quiet, r), _F32)


def _float16(builder, v):
    """float32 v rounded to float16 (still float32), to nearest, ties to even, as the
    float16 conversion does: |v| + c - c, with c = 2**(e + 13) for v's exponent e
    clamped to [-14, 16], rounds |v| to multiples of 2**(e - 10) (float16's spacing; below
    2**-14, its subnormals' 2**-24) in float32's own round-to-nearest-even; past 65504 it
    is inf. The sign is put back last (-0.0 stays -0.0); NaN stays NaN."""
    u = builder.bitcast(v, _I32)
    sign = builder.and_(u, _int(0x80000000))
    magnitude = builder.bitcast(builder.and_(u, _int(0x7FFFFFFF)), _F32)
    e = builder.and_(u, _int(0x7F800000))
    lo, hi = _int((127 - 14) << 23), _int((127 + 16) << 23)
    e = builder.select(builder.icmp_signed("<", e, lo), lo, e)
    e = builder.select(builder.icmp_signed(">", e, hi), hi, e)
    c = builder.bitcast(builder.add(e, _int(13 << 23)), _F32)
    r = builder.fsub(builder.fadd(magnitude, c), c)
    r = builder.select(builder.fcmp_ordered(">", r, ir.Constant(_F32, 65504.0)), ir.Constant(_F32, float("inf")), r)
    return builder.bitcast(builder.or_(builder.bitcast(r, _I32), sign), _F32)


def _rounding(builder, v, kind, any_nan: bool = True):
    """float32 v rounded to the compute dtype whose marker's element type is `kind`
    (`any_nan`: as _bfloat16)."""
    if kind == types.uint16:
        return _bfloat16(builder, v, any_nan)
    if kind == types.int16 and _f16c():
        return builder.fpext(builder.fptrunc(v, ir.HalfType()), _F32)
    if kind in (types.int16, types.uint8):
        return _float16(builder, v)
    return v


def _widen_float16(builder, h, by_arithmetic: bool):
    """float16 bits h (i16) as float32, exactly: F16C's conversion, or arithmetic: a
    normal number's exponent rebiased, a subnormal's 10 bits times 2**-24 (exact), inf
    and NaN with their payload moved up (a NaN made quiet)."""
    if not by_arithmetic and _f16c():
        return builder.fpext(builder.bitcast(h, ir.HalfType()), _F32)
    u = builder.zext(h, _I32)
    sign = builder.shl(builder.and_(u, _int(0x8000)), _int(16))
    m = builder.and_(u, _int(0x7FFF))
    normal = builder.add(builder.shl(m, _int(13)), _int((127 - 15) << 23))
    special = builder.or_(builder.shl(m, _int(13)), _int(0x7F800000))
    quiet = builder.or_(special, _int(0x00400000))  # a NaN comes out quiet, as from F16C and torch
    special = builder.select(builder.icmp_signed(">", m, _int(0x7C00)), quiet, special)
    small = builder.bitcast(
        builder.fmul(builder.sitofp(m, _F32), ir.Constant(_F32, 2.0**-24)), _I32
    )  # subnormal or zero
    bits = builder.select(builder.icmp_signed(">=", m, _int(0x0400)), normal, small)
    bits = builder.select(builder.icmp_signed(">=", m, _int(0x7C00)), special, bits)
    return builder.bitcast(builder.or_(bits, sign), _F32)


# KERNEL NANS: in bfloat16 compute, every NaN a kernel holds has the low 16 bits of its
# float32 clear, which lets `_round` skip _bfloat16's NaN select. The values a kernel
# starts from are bfloat16 values (inputs as `_read` gives them, a NaN among them with its
# low bits cleared; the weights, divisor and rescale factors torch rounded), 0.0, 1.0 and
# the sign, or lambda, a float32 whose NaN fused.stream makes the plain one (0x7FC00000).
# An operation's NaN result is the default NaN or one of its operands' NaNs (made quiet),
# so the NaNs made from those keep their low bits clear. tests/methods/test_fused.py
# checks the reads' NaNs and the rounding of every such NaN.


@intrinsic
def _round_to(typingctx, x, like):
    """x (float32, a kernel's result: KERNEL NANS) rounded to the compute dtype `like`
    names (MARKERS), as float32."""
    if x != types.float32 or not isinstance(like, types.Array):
        return None
    kind = like.dtype

    def codegen(context, builder, signature, args):
        return _rounding(builder, args[0], kind, any_nan=False)

    return types.float32(x, like), codegen


_round: Any = _round_to  # called as _round(x, like) in compiled code (the typing context is numba's)

# The stored dtypes of inputs as the kernels take them (numba has neither bfloat16 nor
# float16 arrays): float32 as itself, bfloat16 and float16 bits as 16-bit integers, by the
# same convention as MARKERS (fused.raw makes the views).
STORED = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.int16}


@intrinsic
def _read_as(typingctx, x, like):
    """An entry of a stored input (STORED) as the torch stream reads it: widened to float32
    (exact), then rounded to the compute dtype `like` names when that is half precision
    and not the stored dtype (torch's conversion goes through float32 too)."""
    stored = x
    if stored not in (types.float32, types.uint16, types.int16) or not isinstance(like, types.Array):
        return None
    compute = like.dtype

    def codegen(context, builder, signature, args):
        v = args[0]
        if stored == types.uint16:  # bfloat16: the high half of a float32
            v = builder.bitcast(builder.shl(builder.zext(v, _I32), _int(16)), _F32)
        elif stored == types.int16:
            v = _widen_float16(builder, v, compute == types.uint8)
        float16 = (types.int16, types.uint8)
        if compute == types.float32 or stored == compute or (stored == types.int16 and compute in float16):
            return v
        return _rounding(builder, v, compute)

    return types.float32(x, like), codegen


_read: Any = _read_as  # called as _read(x[j], like) in compiled code

_I16 = ir.IntType(16)


def _float16_bits(builder, r):
    """The float16 bits of float32 r, already a float16 value (`_float16`): a normal
    number's exponent rebiased, a subnormal's multiple of 2**-24 counted; inf as inf,
    NaN as a quiet NaN."""
    u = builder.bitcast(r, _I32)
    sign = builder.and_(builder.lshr(u, _int(16)), _int(0x8000))
    a = builder.and_(u, _int(0x7FFFFFFF))
    normal = builder.sub(builder.lshr(a, _int(13)), _int((127 - 15) << 10))
    magnitude = builder.bitcast(a, _F32)
    small = builder.fptoui(builder.fmul(magnitude, ir.Constant(_F32, 2.0**24)), _I32)
    special = builder.select(builder.icmp_unsigned(">", a, _int(0x7F800000)), _int(0x7E00), _int(0x7C00))
    h = builder.select(builder.icmp_unsigned(">=", a, _int(0x38800000)), normal, small)
    h = builder.select(builder.icmp_unsigned(">=", a, _int(0x7F800000)), special, h)
    return builder.trunc(builder.or_(h, sign), _I16)


def _storing(kind, like, rounded: bool):
    """The codegen of float32 v as an entry of an array of STORED dtype `kind`: itself, or
    rounded to bfloat16 or float16 (to nearest, ties to even, as torch's conversion) and
    its bits; a NaN as a quiet NaN (bfloat16's as torch's 0x7FC0). float16 by arithmetic
    where F16C is missing or `like` asks for it (FLOAT16_BY_ARITHMETIC, tests). `rounded`:
    v is a bfloat16 value already, rounded in bfloat16 compute, so its bits are the high
    half of its float32 and a second rounding would change nothing."""

    def codegen(context, builder, signature, args):
        x = args[0]
        if kind == types.float32:
            return x
        if kind == types.uint16:
            r = builder.lshr(builder.bitcast(x if rounded else _bfloat16(builder, x), _I32), _int(16))
            r = builder.select(builder.fcmp_unordered("uno", x, x), _int(0x7FC0), r)
            return builder.trunc(r, _I16)
        if _f16c() and like.dtype != types.uint8:
            return builder.bitcast(builder.fptrunc(x, ir.HalfType()), _I16)
        return _float16_bits(builder, _float16(builder, x))

    return codegen


def _store_typing(v, out, like):
    """The signature of _store_as and _store_result, or None where they do not apply."""
    if v != types.float32 or not isinstance(out, types.Array) or not isinstance(like, types.Array):
        return None
    if out.dtype not in (types.float32, types.uint16, types.int16):
        return None
    return out.dtype(v, out, like)


@intrinsic
def _store_as(typingctx, v, out, like):
    """float32 v (any float) as an entry of `out`, an array of a STORED dtype (_storing)."""
    signature = _store_typing(v, out, like)
    return None if signature is None else (signature, _storing(out.dtype, like, rounded=False))


@intrinsic
def _store_result_as(typingctx, v, out, like):
    """_store_as for a merge's result v, already rounded to the compute dtype `like` names
    (`_round`): in bfloat16 compute into bfloat16, its bits without a second rounding."""
    signature = _store_typing(v, out, like)
    if signature is None:
        return None
    return signature, _storing(out.dtype, like, rounded=out.dtype == like.dtype == types.uint16)


_store: Any = _store_as  # called as out[j] = _store(v, out, like) in compiled code
_store_result: Any = _store_result_as  # out[j] = _store_result(merged, out, like), merged from _combine


@caching.njit(nogil=True)
def stored(x, out, like):
    """out = float32 x as an array of a STORED dtype holds it (tests hold `_store` to
    torch's conversions with it)."""
    for j in range(x.shape[0]):
        out[j] = _store(x[j], out, like)


@caching.njit(nogil=True)
def stored_result(x, out, like):
    """out = x rounded to the compute dtype `like` names and stored as a merge kernel stores
    its result (tests)."""
    for j in range(x.shape[0]):
        out[j] = _store_result(_round(x[j], like), out, like)


@caching.njit(nogil=True)
def rounded(x, out, like):
    """out = x rounded to the compute dtype `like` names, as float32 (tests hold `_round`
    to torch's conversion with it)."""
    for j in range(x.shape[0]):
        out[j] = _round(x[j], like)


@caching.njit(nogil=True)
def read(x, out, like):
    """out = stored entries x (STORED) as the kernels read them in the compute dtype
    `like` names, as float32 (tests hold `_read` to torch's conversions with it)."""
    for j in range(x.shape[0]):
        out[j] = _read(x[j], like)


BAND_BLOCK = 32  # entries band() tests together before it collects any of them


@caching.njit(nogil=True, error_model="numpy")
def band(x, b, lo, hi, values, index, like):
    """Entries with |x - b| > hi (a count); those in [lo, hi] written to values/index
    (as long as x), in order. NaN is neither. x and b are stored inputs (STORED), read in
    the compute dtype `like` names; x - b is rounded to it.

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
            above += a > hi
            inside |= (a >= lo) & (a <= hi)
        if inside:
            for k in range(BAND_BLOCK):
                a = block[k]
                values[count] = a
                index[count] = start + k
                count += (a >= lo) & (a <= hi)
    for j in range(n - n % BAND_BLOCK, n):  # the last, partial block
        a = abs(_round(_read(x[j], like) - _read(b[j], like), like))
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


@caching.njit(nogil=True)
def drawn(seed, start, limit, out):
    """out[j] = 1.0 where entry start + j is kept (its draw is below `limit`), else 0.0."""
    s, first = np.uint64(seed), np.uint64(start)
    for j in range(out.shape[0]):
        out[j] = np.float32(_draw(s, first + np.uint64(j)) < limit)


# DARE's keep masks, one bit an entry: merge_drawn reads whether it keeps an entry from a
# mask rather than drawing it, so each entry of an input is drawn once. A rescaled input's
# L1 pass (l1_drawn) draws every entry already and writes the mask as it goes; without a
# rescale, draw_bits writes it just before the merge. Entry start + 8q + i is bit i of
# byte q (start a multiple of 8: chunks start at multiples of BLOCK). Three draws an entry
# cost 0.6-0.9 ns in the merge loop, unpacking three masks a few hundredths of that.

PACK = np.uint64(0x0102040810204080)  # times 8 bytes of 0 or 1: byte i lands on bit 56 + i, no carries
SPREAD = np.uint64(0x0101010101010101)  # times a byte: the byte in each of 8 bytes
BIT_OF_BYTE = np.uint64(0x8040201008040201)  # bit i of byte i
BELOW_TOP = np.uint64(0x7F7F7F7F7F7F7F7F)  # added to bytes of 0 or 2**i: bit 7 set where not 0


@numba.njit(inline="always")
def _pack(kept, bits, count):
    """bits[q] = the 0/1 bytes kept[8q : 8q + 8] as bits 0..7, for `count` bytes (8 bytes
    as one little-endian word, times PACK)."""
    words = kept.view(np.uint64)
    for q in range(count):
        bits[q] = np.uint8((words[q] * PACK) >> np.uint64(56))


@numba.njit(inline="always")
def _unpack(bits, count, kept):
    """kept[8q + i] = bit i of bits[q] (a 0/1 byte), for `count` bytes: _pack undone."""
    words = kept.view(np.uint64)
    for q in range(count):
        spread = (np.uint64(bits[q]) * SPREAD) & BIT_OF_BYTE  # byte i: 0 or 2**i
        words[q] = ((spread + BELOW_TOP) >> np.uint64(7)) & SPREAD  # byte i: 0 or 1


@caching.njit(nogil=True)
def draw_bits(seed, start, limit, bits):
    """bits = the keep mask of entries start, start + 1, ... (8 a byte, start a multiple of
    8): bit set where the entry's draw from `seed` is below `limit`."""
    kept = np.empty(BLOCK, np.uint8)
    s, first = np.uint64(seed), np.uint64(start)
    n = bits.shape[0] * 8
    for lo in range(0, n, BLOCK):
        size = min(BLOCK, n - lo)
        at = first + np.uint64(lo)
        for j in range(size):
            kept[j] = np.uint8(_draw(s, at + np.uint64(j)) < limit)
        _pack(kept, bits[lo // 8 :], size // 8)


@caching.njit(nogil=True)
def unpacked(bits, kept):
    """kept = the keep mask `bits` as 0/1 bytes (tests)."""
    _unpack(bits, bits.shape[0], kept)


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
    jit = caching.njit(nogil=True, error_model="numpy")

    def top_k(x0, x1, x2, x3, b, out, start, threshold, cut, factor, weight, elect, normalize, divisor, lam, like):
        p = (threshold, cut, factor, weight, elect, normalize, divisor, lam, like)
        _thinned_top_k(x0, x1, x2, x3, count, b, out, start, p)

    def drawn(x0, x1, x2, x3, b, out, m0, m1, m2, m3, factor, weight, elect, normalize, divisor, lam, like):
        p = (m0, m1, m2, m3, factor, weight, elect, normalize, divisor, lam, like)
        _thinned_drawn(x0, x1, x2, x3, count, b, out, p)

    def weighted(x0, x1, x2, x3, b, out, weight, elect, normalize, divisor, lam, like):
        _weighted(x0, x1, x2, x3, count, b, out, (weight, elect, normalize, divisor, lam, like))

    return jit(top_k), jit(drawn), jit(weighted)


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


# --- torch's float32 sum, bit for bit: the L1 rescale's sums without torch
# torch's CPU sum of a contiguous float32 row (ATen's SumKernel.cpp: cascade_sum, then
# vectorized_inner_sum) adds vectors of LANES floats into ILP interleaved accumulators,
# moves those up a cascade of LEVELS accumulators every 2**power rows, then adds the
# entries past the last whole vector and the lanes, in order, to a float 0. Rows shorter
# than a vector go the same way one entry wide. LANES is torch's Vectorized<float> width
# in the kernel it runs: 8 on x86 (its AVX-512 dispatch keeps the AVX2 sum) and on ARM's
# NEON; fused.sums_agree checks the bits against torch before a step relies on them.

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


@caching.njit(nogil=True)
def sums(x, out):
    """out[k] = torch's sum of x's k-th BLOCK entries (the last may be fewer), with
    torch's bits (tests and fused.sums_agree hold it to torch)."""
    acc = np.empty((SUM_LEVELS, SUM_ILP * SUM_LANES), np.float32)
    for k in range(out.shape[0]):
        lo = k * BLOCK
        out[k] = _torch_sum(x[lo : lo + BLOCK], min(BLOCK, x.shape[0] - lo), acc)


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


@caching.njit(nogil=True, error_model="numpy")
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


@caching.njit(nogil=True, error_model="numpy")
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
