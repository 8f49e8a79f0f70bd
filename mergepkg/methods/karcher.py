"""Karcher mean: the Riemannian barycentre of the inputs' directions on the unit sphere,
scaled by their mean norm.

As mergekit 0.1.5 computes it ("karcher", which cites https://arxiv.org/abs/2603.04972;
see https://en.wikipedia.org/wiki/Karcher_mean). Per tensor, each input is flattened and
split into its norm and its direction u_i; inputs of norm <= tol take no part in the
direction. Start from the normalized mean of the directions; then up to max_iter times,
step along the sphere by the mean of the log maps, sum_i alpha_i theta_i / sin(theta_i)
(u_i - cos(theta_i) m) with theta_i the angle between m and u_i (terms with theta_i < tol
left out), and stop early when that step is shorter than tol. The result is the
direction times the mean of all the inputs' norms. Equal weights (1 / number of inputs).
A base, if the recipe lists one among the inputs, is one more input: mergekit merges its
`base_model` as one more model here.

Norms and dot products are whole-tensor reductions (kernels/reduce.py), within one unit
in the last place of mergekit's (which sums them in float32, or float64 for float64
inputs). An angle near zero magnifies such a difference (d theta = d cos / sin theta),
so the result matches mergekit's to a few units in the last place, not bit for bit.
Invariants (tests): one input is returned as it is; identical inputs return that input;
inputs of one direction return that direction times their mean norm; two orthogonal unit
vectors meet at their midpoint on the sphere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergepkg._lazy import torch
from mergepkg.methods.kernels.reduce import row_norm, total
from mergepkg.methods.spec import MethodSpec, Param, Problem


def _norm(x: torch.Tensor, wide) -> torch.Tensor:
    """The L2 norm of x as one vector, summed in `wide` (float32 or float64): a scalar."""
    return row_norm(x.to(wide).reshape(-1)).reshape(())


def _dot(a: torch.Tensor, b: torch.Tensor, wide) -> torch.Tensor:
    """a . b over every entry, summed in `wide` and returned in a's dtype: a scalar."""
    return total(a.to(wide) * b.to(wide)).to(a.dtype)


def karcher(base, tensors: Sequence[torch.Tensor], *, max_iter: int | float = 10, tol: float = 1e-5) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    wide = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [_norm(t, wide) for t in tensors]  # scalars in `wide`
    units = [torch.zeros_like(t) if n.item() == 0.0 else (t / n).to(t.dtype) for t, n in zip(tensors, norms)]

    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        out = torch.zeros_like(tensors[0])
        for t in tensors:
            out += t * 0  # zeros (NaN where an input is NaN), as mergekit
        return out
    alpha_sum = sum(alphas[i] for i in valid)
    weights = [alphas[i] / alpha_sum for i in valid]
    directions = [units[i] for i in valid]

    # the starting point: the normalized weighted mean of the directions
    mean = torch.zeros_like(directions[0])
    for w, u in zip(weights, directions):
        mean += w * u
    mean_norm = _norm(mean, wide)
    mean = directions[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)

    for _ in range(int(max_iter)):
        tangent = torch.zeros_like(mean)  # the mean of the log maps at `mean`
        for w, u in zip(weights, directions):
            cos = torch.clamp(_dot(mean, u, wide), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += w * (theta / torch.sin(theta)) * (u - cos * mean)
        step = _norm(tangent, wide)
        if step.item() < tol:
            break
        # the exponential map: along the great circle through `mean` towards `tangent`
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)
        length = _norm(mean, wide)
        if length.item() > tol:
            mean = (mean / length).to(mean.dtype)

    scale = sum(alpha * n for alpha, n in zip(alphas, norms))  # the mean norm, of every input
    return scale * mean


def iterations_problem(params: Mapping[str, Any]) -> Problem | None:
    """A max_iter that is no whole number (a gradient between integers): mergekit refuses it too."""
    max_iter = params.get("max_iter", 10)
    if float(max_iter) != int(max_iter):
        return Problem(
            f"karcher max_iter must be a whole number, got {max_iter:g}",
            "give max_iter as an integer (a filter, not a gradient, to vary it across tensors)",
        )
    return None


SPEC = MethodSpec(
    name="karcher",
    merge=karcher,
    params=(
        Param("max_iter", 10, kind=int, low=0, doc="most iterations of the mean on the sphere"),
        Param("tol", 1e-5, low=0.0, doc="stop when a step is shorter; inputs of smaller norm are left out"),
    ),
    summary="Riemannian (Karcher) mean of the inputs' directions, scaled by their mean norm.",
    paper="https://arxiv.org/abs/2603.04972",
    base="none",
    min_inputs=1,
    check=iterations_problem,
)
