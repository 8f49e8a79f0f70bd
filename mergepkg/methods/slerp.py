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

from mergepkg._lazy import torch
from mergepkg.methods.reduce import total
from mergepkg.methods.spec import MethodSpec, Param

DOT_THRESHOLD = 0.9995


def slerp(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, t: float, eps: float = 1e-8) -> torch.Tensor:
    v0, v1 = base, tensors[0]
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = total(a * a).sqrt(), total(b * b).sqrt()  # thread-count independent
    na = na if na > eps else torch.ones_like(na)  # zero vectors: treat as unit, fall to lerp
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = (total(a * b) / (na * nb)).clamp(-1, 1).item()
    if abs(dot) > DOT_THRESHOLD:
        return torch.lerp(v0, v1, t)
    theta = math.acos(dot)  # scalars: plain float64 math
    c0 = math.sin((1 - t) * theta) / math.sin(theta)
    c1 = math.sin(t * theta) / math.sin(theta)
    return (v0 * c0).add_(v1, alpha=c1)


SPEC = MethodSpec(
    name="slerp",
    merge=slerp,
    params=(Param("t", low=0.0, high=1.0, doc="interpolation factor: 0 = base, 1 = the other input"),),
    summary="Spherical interpolation between the base and one other model.",
    paper="https://en.wikipedia.org/wiki/Slerp",
    base="required",
    min_inputs=1,
    fp32=True,
    max_inputs=1,
)
