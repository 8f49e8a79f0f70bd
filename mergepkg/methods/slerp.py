"""SLERP: spherical interpolation between the base and one other model, per tensor.

Shoemake, "Animating rotation with quaternion curves" (1985),
https://en.wikipedia.org/wiki/Slerp; per-tensor, as mergekit applies it.
t = 0 returns the base, t = 1 the other input. Each tensor is flattened into one
vector; when the normalized vectors are nearly colinear (|cos| > 0.9995) the formula
is ill-conditioned and plain linear interpolation is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mergepkg._lazy import lazy_import, torch
from mergepkg.methods.kernels import chunks
from mergepkg.methods.kernels.reduce import Total, total
from mergepkg.methods.spec import MethodSpec, Param

fused = lazy_import("mergepkg.methods.fused_slerp")  # numpy and numba: imported when a merge runs

DOT_THRESHOLD = 0.9995


def _coefficients(aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor, t: float, eps: float):
    """(c0, c1) of the result c0 * v0 + c1 * v1, from the sums a.a, b.b and a.b; None
    for plain linear interpolation."""
    na, nb = aa.sqrt(), bb.sqrt()
    na = na if na > eps else torch.ones_like(na)  # zero vectors: treat as unit, fall to lerp
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = (ab / (na * nb)).clamp(-1, 1).item()
    if abs(dot) > DOT_THRESHOLD:
        return None
    theta = math.acos(dot)  # scalars: plain float64 math
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def _combine(v0: torch.Tensor, v1: torch.Tensor, t: float, coefficients, out=None) -> torch.Tensor:
    if coefficients is None:
        return torch.lerp(v0, v1, t, out=out)
    c0, c1 = coefficients
    return torch.mul(v0, c0, out=out).add_(v1, alpha=c1)


def slerp(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, t: float, eps: float = 1e-8) -> torch.Tensor:
    v0, v1 = base, tensors[0]
    a, b = v0.reshape(-1), v1.reshape(-1)
    # sums that do not depend on the thread count
    return _combine(v0, v1, t, _coefficients(total(a * a), total(b * b), total(a * b), t, eps))


def stream_slerp(base, tensors, *, compute, out_dtype, t: float, eps: float = 1e-8, out=None) -> torch.Tensor:
    """slerp over chunks (chunks.py): the three sums in a first pass, then the combination,
    every intermediate in a reused buffer and the chunks shared out to the worker threads;
    on the CPU in compiled loops (fused_slerp.py)."""
    if fused.usable(base, tensors[0], compute, out_dtype):
        aa, bb, ab = fused.sums(base, tensors[0])
        coefficients = _coefficients(aa, bb, ab, t, eps)
        return fused.combine(base, tensors[0], t, coefficients, out_dtype=out_dtype, out=out)
    first = chunks.Flat(base, tensors, compute)

    def sums(group: list[slice]) -> tuple[Total, Total, Total]:
        flat = chunks.Flat(base, tensors, compute)  # this thread's scratch
        aa, bb, ab = Total(), Total(), Total()
        for span in group:
            a, b = flat.base_at(span), flat.input_at(0, span)
            product = flat.scratch.get("product", a.shape, compute)
            aa.add(torch.mul(a, a, out=product))
            bb.add(torch.mul(b, b, out=product))
            ab.add(torch.mul(a, b, out=product))
        return aa, bb, ab

    parts = chunks.parallel(sums, chunks.groups(first.spans()))
    aa, bb, ab = (Total.joined(p[k] for p in parts) for k in range(3))
    coefficients = _coefficients(aa.result(), bb.result(), ab.result(), t, eps)
    out = chunks.output(out, first.shape, out_dtype, first.device)
    dest = out.view(-1)

    def combine(group: list[slice]) -> None:
        flat = chunks.Flat(base, tensors, compute)
        for span in group:
            result = flat.scratch.get("result", (span.stop - span.start,), compute)
            dest[span].copy_(_combine(flat.base_at(span), flat.input_at(0, span), t, coefficients, out=result))

    chunks.parallel(combine, chunks.groups(first.spans()))
    return out


SPEC = MethodSpec(
    name="slerp",
    merge=slerp,
    params=(
        Param("t", doc="interpolation factor: 0 = base, 1 = the other input (outside [0, 1]: extrapolates, MP104)"),
    ),
    summary="Spherical interpolation between the base and one other model.",
    paper="https://en.wikipedia.org/wiki/Slerp",
    base="required",
    min_inputs=1,
    fp32=True,
    max_inputs=1,
    stream=stream_slerp,
    kernels=("slerp_sums", "slerp_mix", "lerp", "sums"),
    light=True,
)
