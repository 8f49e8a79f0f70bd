"""Arcee Fusion: keep the other model's value only for the entries that matter most,
by a score of how far they moved times how much their row's distribution changed.

As defined by mergekit ("arcee_fusion"; no paper yet), introduced in
https://www.arcee.ai/blog/meet-mergekit-v0-1-arcee-fusion-expanded-model-support-multi-gpu-acceleration
Per tensor, with b the base and x the other input: importance = |x - b| * KL(row), where
KL(row) = sum over the last dimension of p log(p / q), p = softmax(x) + 1e-8,
q = softmax(b) + 1e-8 (a 1-D tensor is one row). The threshold is median + 1.5 (q3 - q1)
of the importances, each quantile the sorted value at index int(q (n - 1)); entries with
importance >= threshold take b + (x - b), the others keep b. The mask is float32, as
mergekit's, so a float16 or bfloat16 merge finishes in float32.

The same bytes as mergekit 0.1.5 except where an entry's importance lies within rounding
of the threshold: mergekit's torch.softmax rounds differently on AVX2 and AVX-512 CPUs
(its lanes), so it takes other entries on each; mergepkg's softmax (below) is the same on
both, and within a few units in the last place of either. A 1-D tensor's KL sum is a
whole-tensor reduction (kernels/reduce.py). Difference: mergekit estimates the quantiles of a tensor of more
than 1,000,000 entries from 1,000,000 entries drawn at random from its global generator
(so its result changes from run to run); mergepkg takes the exact quantiles of every
entry, so it is deterministic and equal to mergekit's below that size.
Invariants (tests): every entry equals the base's or the other input's (up to the
rounding of b + (x - b)); identical inputs return the base; the entries taken are the
ones at or above the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods.kernels.reduce import row_sum
from mergepkg.methods.spec import MethodSpec

EPS = 1e-8
QUANTILES = (0.25, 0.5, 0.75)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension, the same bits on every x86 CPU with AVX2 or
    AVX-512 and any thread count: torch.softmax adds each row's exponentials in as many
    lanes as the CPU's vectors hold, so an AVX2 machine got other bits than an AVX-512
    one, other entries past the threshold, and a locked build failed there. exp and
    row_sum give the same bits on both (tests/methods/test_cpu_capability.py)."""
    wide = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # as torch.softmax computes them
    e = torch.exp(wide - wide.amax(dim=-1, keepdim=True))  # max first: no overflow, as torch.softmax
    return (e / row_sum(e)).to(x.dtype)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|x - base| times the KL divergence of the rows' softmaxes: [*shape]."""
    p = softmax(x) + EPS
    q = softmax(base) + EPS
    terms = p * torch.log(p / q)
    wide = torch.promote_types(terms.dtype, torch.float32)  # torch sums float16 and bfloat16 in float32
    kl = row_sum(terms.to(wide)).to(terms.dtype)  # [*shape[:-1], 1]
    return (x - base).abs() * kl


def quantiles(values: torch.Tensor) -> list[torch.Tensor]:
    """The entries of sorted(values) at index int(q * (n - 1)) for q in QUANTILES, the
    index rounded as mergekit rounds it (float32); kthvalue rather than a full sort."""
    flat = values.reshape(-1)
    at = (torch.tensor(QUANTILES) * (flat.numel() - 1)).long()
    return [torch.kthvalue(flat, int(i) + 1).values for i in at]


def arcee_fusion(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    (x,) = tensors
    scores = importance(x, base)
    q1, median, q3 = quantiles(scores)
    threshold = median + 1.5 * (q3 - q1)
    mask = (scores >= threshold).float()  # float32 as in mergekit: a float16 or bfloat16 merge finishes in float32
    return base + (x - base) * mask


SPEC = MethodSpec(
    name="arcee_fusion",
    merge=arcee_fusion,
    params=(),
    summary="Take the other model's entries whose change scores above median + 1.5 IQR.",
    paper="https://www.arcee.ai/blog/meet-mergekit-v0-1-arcee-fusion-expanded-model-support-multi-gpu-acceleration",
    base="required",
    min_inputs=1,
    max_inputs=1,
    version=2,  # 2: a softmax with the same bits on AVX2 and AVX-512 CPUs
)
