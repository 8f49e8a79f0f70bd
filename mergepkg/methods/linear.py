"""Linear: a weighted average of the inputs ("model soups").

Wortsman et al., "Model soups", https://arxiv.org/abs/2203.05482
Invariants (tests): weights [1, 0] return the first input; with normalize, scaling all
weights by a constant changes nothing (but rounding), and the divisor is the weights'
sum in the compute dtype, as mergekit's. Weights summing to zero with normalize are an
error (mergekit divides by zero and writes NaN).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from mergepkg._lazy import torch
from mergepkg.errors import MergeError
from mergepkg.methods.kernels import chunks
from mergepkg.methods.spec import MethodSpec, Problem, flag, weight_param


def linear(
    base,
    tensors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`out`, when given, receives the result (a streamed chunk's reused buffer)."""
    if problem := weights_problem({"weight": weight, "normalize": normalize}):
        raise MergeError(problem.message, hint=problem.hint)
    out = torch.mul(tensors[0], weight[0], out=out)
    for t, w in zip(tensors[1:], weight[1:]):
        out.add_(t, alpha=w)  # fused multiply-add, no temporary per input
    if not normalize:
        return out
    total = divisor(tuple(weight), out.dtype)
    return out if total == 1 else out.div_(total)  # x / 1 == x, bit for bit


@functools.lru_cache(maxsize=256)
def divisor(weight: tuple[float, ...], dtype: torch.dtype) -> float:
    """The weights summed as mergekit sums them: in the compute dtype, over dim 0 of a
    column (0.6 + 0.3 is 0.90000004 in float32, where Python's sum rounds to 0.9). Once per
    tensor's weights, not per chunk; the float is that dtype's value exactly."""
    return torch.tensor(weight, dtype=dtype).view(-1, 1).sum(dim=0).item()


def weights_problem(params: Mapping[str, Any]) -> Problem | None:
    """Weights summing to zero, with normalize: what `linear` refuses, found before a build."""
    total = sum(params["weight"])
    if params.get("normalize", True) and abs(total) < 1e-8:
        return Problem(
            f"linear weights sum to {total:g}; with normalize = true they must not sum to zero",
            "change the weights, or set params.normalize = false",
        )
    return None


def stream_linear(base, tensors, *, compute, out_dtype, out=None, **params) -> torch.Tensor:
    return chunks.elementwise(linear, base, tensors, compute=compute, out_dtype=out_dtype, out=out, **params)


SPEC = MethodSpec(
    name="linear",
    merge=linear,
    params=(weight_param(), flag("normalize", True, "divide by the sum of weights")),
    summary="Weighted average of the inputs.",
    paper="https://arxiv.org/abs/2203.05482",
    base="none",
    min_inputs=1,
    fp32=True,
    stream=stream_linear,
    check=weights_problem,
    version=2,  # 2: normalized by the weights' sum in the compute dtype, as mergekit (its last bits)
    rows=True,
    light=True,
)
