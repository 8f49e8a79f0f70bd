"""Compiled loops (numba) behind methods/fused_slerp.py: slerp's sums and its
interpolation, one chunk per call, in float32 (slerp computes in at least float32).

torch computes `out.add_(x, alpha=w)` and `torch.lerp` as fused multiply-adds: its
vectorized CPU kernels call `fmadd`, one rounding for a product and a sum, and so do the
scalar loops of the entries past the last whole vector. `_fma` emits LLVM's fma, the
same instruction on a CPU that has it (a correctly rounded library call where not), so
these loops give the torch stream's bits; numba without fastmath fuses nothing else.
Inputs are read in their stored dtype and results written in the saved one, as
compiled.py's task-vector loops do (dtypes.py: `_read`, `_store`), `like` naming float32
compute (dtypes.MARKERS). tests/methods/test_fused_slerp.py holds each loop to torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba.core import types
from numba.extending import intrinsic

from mergepkg.methods.kernels import jit
from mergepkg.methods.kernels.dtypes import MARKERS, STORED, _read, _store
from mergepkg.methods.kernels.reduce import BLOCK
from mergepkg.methods.kernels.torch_sum import SUM_ILP, SUM_LANES, SUM_LEVELS, _torch_sum

KERNELS = ("slerp_sums", "slerp_mix", "lerp")


@intrinsic
def _fma_f32(typingctx, a, b, c):
    """a * b + c with one rounding (float32s)."""
    if not a == b == c == types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(a, b, c), codegen


_fma: Any = _fma_f32  # called as _fma(a, b, c) in compiled code


@jit.njit(nogil=True)
def slerp_sums(a, b, aa, bb, ab, like):
    """Per BLOCK entries of a and b (from a chunk's start, a multiple of BLOCK): torch's
    sums of a * a, b * b and a * b, with its bits, into aa, bb, ab (reduce.Total's block
    sums, so `reduce.total_of_blocks` gives slerp's three totals). A block's products are
    written to a scratch that stays in the cache."""
    products = np.empty((3, BLOCK), np.float32)
    acc = np.empty((SUM_LEVELS, SUM_ILP * SUM_LANES), np.float32)
    n = a.shape[0]
    for k in range(-(-n // BLOCK)):
        lo = k * BLOCK
        hi = min(lo + BLOCK, n)
        x, y = a[lo:hi], b[lo:hi]  # indexed from 0: LLVM vectorizes the loop
        for j in range(hi - lo):
            u, v = _read(x[j], like), _read(y[j], like)
            products[0, j] = u * u
            products[1, j] = v * v
            products[2, j] = u * v
        aa[k] = _torch_sum(products[0], hi - lo, acc)
        bb[k] = _torch_sum(products[1], hi - lo, acc)
        ab[k] = _torch_sum(products[2], hi - lo, acc)


@jit.njit(nogil=True, error_model="numpy")
def slerp_mix(a, b, out, c0, c1, like):
    """out = a * c0 + b * c1, as torch.mul(a, c0).add_(b, alpha=c1): the product rounded,
    then one fused multiply-add."""
    for j in range(out.shape[0]):
        out[j] = _store(_fma(c1, _read(b[j], like), _read(a[j], like) * c0), out, like)


@jit.njit(nogil=True, error_model="numpy")
def lerp(a, b, out, weight, like):
    """out = torch.lerp(a, b, weight), as ATen's lerp computes it: below |0.5|,
    weight * (b - a) + a, else (weight - 1) * (b - a) + b, each one fused multiply-add
    (the form that is exact at weight 1)."""
    small = abs(weight) < np.float32(0.5)
    coefficient = weight if small else weight - np.float32(1)
    for j in range(out.shape[0]):
        u, v = _read(a[j], like), _read(b[j], like)
        out[j] = _store(_fma(coefficient, v - u, u if small else v), out, like)


def warm(kernels=KERNELS, stored=("float32", "bfloat16"), results=("float32", "bfloat16")) -> None:
    """Load (or compile, the first time) `kernels` for inputs stored as `stored` writing
    results stored as `results` (compiled.warm's counterpart; other types compile on first use)."""
    like, f32 = MARKERS["float32"], np.zeros(1, np.float32)
    for kind in stored:
        v = np.zeros(1, STORED[kind])
        if "slerp_sums" in kernels:
            slerp_sums(v, v, f32, f32, f32, like)
        for result in (np.zeros(1, STORED[r]) for r in results):
            if "slerp_mix" in kernels:
                slerp_mix(v, v, result, np.float32(1), np.float32(0), like)
            if "lerp" in kernels:
                lerp(v, v, result, np.float32(0.5), like)
