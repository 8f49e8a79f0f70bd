"""Model Stock: move from the base towards the average of the fine-tunes by a ratio set
by the angle between their task vectors.

Jang et al., "Model Stock: All we need is just a few fine-tuned models",
https://arxiv.org/abs/2403.19522
t = N cos / (1 + (N - 1) cos) with cos the mean pairwise cosine of task vectors; where
the denominator vanishes the base is kept. Invariant (tests): identical fine-tunes
(cos = 1, t = 1) return that fine-tune.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from mergepkg._lazy import torch
from mergepkg.methods.kernels.reduce import row_norm, row_sum
from mergepkg.methods.spec import MethodSpec, flag


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    shape = base.shape
    if filter_wise:  # one ratio per row; a 1-D tensor is one row
        rows = lambda x: x.reshape(1, -1) if x.dim() < 2 else x
    else:
        rows = lambda x: x.reshape(-1)
    w0 = rows(base)
    offsets = [rows(t) - w0 for t in tensors]
    cosines = [  # each [rows, 1] (or [1] flattened); reductions independent of the thread count
        (row_sum(a * b) / (row_norm(a) * row_norm(b)).clamp(min=1e-6)).clamp(-1, 1) for a, b in combinations(offsets, 2)
    ]
    cos = torch.stack(cosines).mean(dim=0)
    n = len(tensors)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1, denom))
    average = sum(rows(x) for x in tensors) / n
    return (t * average + (1 - t) * w0).reshape(shape)


SPEC = MethodSpec(
    name="model_stock",
    merge=model_stock,
    params=(flag("filter_wise", False, "one ratio per row instead of per tensor"),),
    summary="Interpolate base and fine-tune average by their task vectors' angle.",
    paper="https://arxiv.org/abs/2403.19522",
    base="required",
    min_inputs=2,
)
