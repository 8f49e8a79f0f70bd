"""NearSwap: take the other model's value where it is near the base's, and move the
base only a little towards it where the two are far apart.

As defined by mergekit ("nearswap", after alchemonaut's QuartetAnemoi merges),
https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001
Per entry, with a the base and b the other input: w = clamp(t / max(|a - b|, 1e-6), 0, 1)
and the result is w * b + (1 - w) * a. Elementwise, so equal to mergekit 0.1.5 bit for bit.
Invariants (tests): where |a - b| <= t the result is b; elsewhere it lies between a and
b, at most about t from a; t = 0 returns the base.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods.kernels import chunks
from mergepkg.methods.spec import MethodSpec, Param


def nearswap(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], *, t: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`out`, when given, receives the result (a streamed chunk's reused buffer)."""
    a, (b,) = base, tensors
    # the same operations as mergekit, in its order: `t / x` is t * reciprocal(x) in torch
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return torch.add(weight * b, (1 - weight) * a, out=out)


def stream_nearswap(base, tensors, *, compute, out_dtype, out=None, **params) -> torch.Tensor:
    return chunks.elementwise(nearswap, base, tensors, compute=compute, out_dtype=out_dtype, out=out, **params)


SPEC = MethodSpec(
    name="nearswap",
    merge=nearswap,
    params=(Param("t", low=0.0, doc="distance below which an entry takes the other model's value"),),
    summary="Take the other model's entries near the base's; move the far ones by about t.",
    paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    base="required",
    min_inputs=1,
    max_inputs=1,
    stream=stream_nearswap,
    rows=True,
    light=True,
)
