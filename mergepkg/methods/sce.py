"""SCE (Select, Calculate, Erase): keep the entries where the task vectors vary most,
weight each task vector by its mean square, and merge only the deltas that agree in sign.

Wan et al., "FuseChat: Knowledge Fusion of Chat Models", https://arxiv.org/abs/2408.07990
(its SCE merge, as mergekit 0.1.5 computes it). Per tensor, with delta_i = input_i - base:
1. select: with select_topk < 1, keep the k = int(c * select_topk) entries with the largest
   variance of delta_i across inputs (c: the entries of nonzero variance; k rounded as
   mergekit rounds it, in float32) and zero the others in every delta;
2. calculate: w_i = mean(delta_i²) / sum_j mean(delta_j²) (uniform when that sum is
   below 1e-6);
3. erase: per entry, keep only the nonzero deltas whose sign is the sign of sum_i delta_i
   (positive on a tie), and take their w-weighted mean (divided by max(sum of kept w, 1e-6)).
There is no per-input weight: the weights come from the tensors.

Equal to mergekit 0.1.5 bit for bit: the mean squares of several inputs are row sums
as torch's; one input's is a whole-tensor sum (kernels/reduce.py), within one unit in the
last place of mergekit's, but its weight is 1 either way. Difference: among entries whose
variance equals the k-th largest, mergepkg keeps the lowest indexes (exact top-k, as ties);
mergekit keeps whichever torch.topk returns (bfloat16 models tie; the choice then also
changes the weights, so the rounding of that tensor's other entries).
Invariants (tests): one input (select_topk = 1) returns that input; inputs equal to the
base return the base; with select_topk < 1 at most k entries move from the base, all
among the k largest variances; one input with select_topk < 1 returns the base (nothing varies).
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods import sparsify
from mergepkg.methods.kernels.reduce import row_sum
from mergepkg.methods.spec import MethodSpec, Param


def select(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """1.0 where an entry's variance across the deltas is among the k largest, else 0.0: [*shape]."""
    if select_topk <= 0:
        return torch.zeros_like(deltas[0])
    variance = torch.var(deltas, dim=0, unbiased=False)  # [*shape]
    k = int(torch.count_nonzero(variance) * select_topk)  # int64 tensor * float: float32, as mergekit
    if k == 0:  # e.g. one input: no variance anywhere
        return torch.zeros_like(variance)
    magnitudes = variance.abs().reshape(-1)
    if magnitudes.element_size() < 4:
        magnitudes = magnitudes.float()  # TopK takes float32 or wider; the conversion is exact
    whole = slice(0, magnitudes.numel())
    rule = sparsify.TopK(lambda span: magnitudes[span], magnitudes.numel(), k, [whole])
    return rule.keep(whole, magnitudes).to(deltas.dtype).view_as(variance)


def matrix_weights(deltas: torch.Tensor) -> torch.Tensor:
    """mean(delta_i²) of each input, normalized to sum to 1 (uniform when they sum to ~0): [n]."""
    n = deltas.shape[0]
    squares = deltas.square().reshape(n, -1)  # [n, entries]
    # as torch.mean: summed (row by row) in float32 or wider, divided, then rounded to the dtype
    wide = torch.promote_types(squares.dtype, torch.float32)
    means = (row_sum(squares.to(wide)).reshape(n) / squares.shape[1]).to(squares.dtype)
    total = torch.sum(means).item()
    if abs(total) < 1e-6:
        return torch.ones_like(means) / n
    return means / total


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, select_topk: float = 1.0) -> torch.Tensor:
    if not tensors:
        return base
    deltas = torch.stack([t - base for t in tensors], dim=0)  # [n, *shape]
    if select_topk < 1:
        deltas.mul_(select(deltas, select_topk))  # the same entries zeroed in every delta
    # erase: the deltas whose sign is the elected one (zeros never are)
    elected = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1  # [*shape], +1 or -1
    agree = deltas.sign() == elected  # [n, *shape]
    w = matrix_weights(deltas).view(-1, *([1] * base.dim()))  # [n, 1, ...]
    kept = agree.to(deltas.dtype).mul_(w)  # [n, *shape]: w where kept, else 0 (w * mask, in place)
    divisor = torch.sum(kept, dim=0).clamp(min=1e-6)
    merged = deltas.mul_(kept).sum(dim=0)
    return base + merged / divisor


SPEC = MethodSpec(
    name="sce",
    merge=sce,
    params=(
        Param(
            "select_topk",
            1.0,
            low=0.0,
            high=1.0,
            doc="fraction of entries kept, those whose task vectors vary most (1: all)",
        ),
    ),
    summary="Keep high-variance entries, weight task vectors by mean square, merge sign-agreeing deltas.",
    paper="https://arxiv.org/abs/2408.07990",
    base="required",
    min_inputs=1,
    base_alone=True,
    version=2,  # 2: NaN variances among the k largest, as torch.topk takes them (mergekit's selection)
)
