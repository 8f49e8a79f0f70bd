"""NuSLERP: SLERP between two inputs with relative weights, optionally of their task
vectors (when a base is given), over the whole tensor or row by row.

As defined by mergekit ("nuslerp"),
https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md; t = w1 / (w0 + w1), or 0.5 when the weights sum
to ~0. Invariants (tests): weights [1, 0] return the first input; with a base, the
same holds for its task vector (first input back).
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods.kernels.reduce import row_norm, row_sum
from mergepkg.methods.spec import MethodSpec, flag, weight_param


def _nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool, eps: float = 1e-8
) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)  # interpolate along dim 0
    u0 = v0 / row_norm(v0).clamp(min=1e-7)
    u1 = v1 / row_norm(v1).clamp(min=1e-7)
    cos = row_sum(u0 * u1).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))  # keep the unused branch finite
    sin = torch.sin(theta)
    arc = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.where(colinear, 1, sin)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, arc)  # mergekit's lerp, operation for operation
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(
    base,
    tensors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    opts = dict(flatten=nuslerp_flatten, row_wise=nuslerp_row_wise)
    if base is None:
        return _nuslerp(t, tensors[0], tensors[1], **opts)
    return base + _nuslerp(t, tensors[0] - base, tensors[1] - base, **opts)


SPEC = MethodSpec(
    name="nuslerp",
    merge=nuslerp,
    params=(
        weight_param(),
        flag("nuslerp_flatten", True, "treat the whole tensor as one vector"),
        flag("nuslerp_row_wise", False, "interpolate rows (dim 0) rather than columns, when not flattened"),
    ),
    summary="SLERP of two inputs (or their task vectors) with relative weights.",
    paper="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    base="optional",
    min_inputs=2,
    max_inputs=2,
)
