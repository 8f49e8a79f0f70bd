"""The kernels' dtypes: inputs read in their stored dtype, arithmetic rounded to the
compute dtype where torch rounds, results stored as torch converts (numba intrinsics).

Half-precision compute (bfloat16, float16) runs the same loops as float32: torch's CPU
kernels compute each such operation in float32 and round its result to the half dtype
(to nearest, ties to even), and sums over inputs accumulate in float32 and round once.
The kernels do the same: `_round(x, like)` after each operation where torch rounds, with
`like` an empty array whose dtype names the compute dtype (MARKERS). numba compiles one
specialization per marker type; for float32, `_round` emits nothing, so its code is the
float32 kernel's, operation for operation.

The kernels read the inputs in their stored dtype, as 16-bit integers where numpy has no
such float (STORED; `fused.raw` makes the views): `_read` widens an entry to float32 (exact)
and rounds it to the compute dtype where that differs, as torch's conversion does, so no
chunk is converted by torch into a buffer of its own first. `_store` writes a float32 as
an entry of a stored dtype, rounded as torch's conversion rounds.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import binding, ir
from numba.core import types
from numba.extending import intrinsic

from mergepkg.methods.kernels import jit

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


@jit.njit(nogil=True)
def stored(x, out, like):
    """out = float32 x as an array of a STORED dtype holds it (tests hold `_store` to
    torch's conversions with it)."""
    for j in range(x.shape[0]):
        out[j] = _store(x[j], out, like)


@jit.njit(nogil=True)
def stored_result(x, out, like):
    """out = x rounded to the compute dtype `like` names and stored as a merge kernel stores
    its result (tests)."""
    for j in range(x.shape[0]):
        out[j] = _store_result(_round(x[j], like), out, like)


@jit.njit(nogil=True)
def rounded(x, out, like):
    """out = x rounded to the compute dtype `like` names, as float32 (tests hold `_round`
    to torch's conversion with it)."""
    for j in range(x.shape[0]):
        out[j] = _round(x[j], like)


@jit.njit(nogil=True)
def read(x, out, like):
    """out = stored entries x (STORED) as the kernels read them in the compute dtype
    `like` names, as float32 (tests hold `_read` to torch's conversions with it)."""
    for j in range(x.shape[0]):
        out[j] = _read(x[j], like)
