"""The generalized task-arithmetic merge that task_arithmetic, TIES, DARE, breadcrumbs
and DELLA are all instances of: sparsify each task vector, weight it, optionally elect
signs, sum, normalize, scale by lambda, and add back to the base.

Semantics follow mergekit 0.1.5 (`generalized_task_arithmetic.py`); the code is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mergepkg._lazy import torch
from mergepkg.methods import sparsify
from mergepkg.methods.spec import MethodSpec, Param, density_param, flag, weight_param

# Sparsifier: (delta, input index, per-input params) -> thinned delta
Sparsifier = Callable[..., "torch.Tensor"]


def merge_task_vectors(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize: bool,
    lambda_: float = 1.0,
    thin: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    elect_sign: bool = False,
) -> torch.Tensor:
    """base + lambda * combine(weight_i * thin(t_i - base)).

    elect_sign (TIES): keep, per entry, only the deltas whose sign matches the sign of
    their weighted sum; normalize then divides by the weights of the deltas kept.
    """
    # deltas: [n_inputs, *shape], weighted
    deltas = torch.stack([(t - base) if thin is None else thin(t - base, i) for i, t in enumerate(tensors)])
    w = torch.tensor(list(weight), dtype=deltas.dtype, device=deltas.device)
    w = w.view(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if elect_sign:
        majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        agree = deltas.sign() == majority  # zeros never agree: they carry no vote
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return base + mixed


def family_params(*, normalize: bool, rescale: bool | None, extra: Sequence[Param] = ()) -> tuple[Param, ...]:
    """The parameters every task-vector method takes, with its own defaults."""
    params = [
        weight_param(),
        flag("normalize", normalize, "divide by the sum of weights (of the kept deltas, with sign election)"),
        Param("lambda", 1.0, doc="scale of the merged task vector"),
    ]
    if rescale is not None:
        params.insert(1, density_param())
        params.insert(3, flag("rescale", rescale, "rescale kept entries to the task vector's L1 norm"))
    return tuple(params) + tuple(extra)


def make_method(
    name: str,
    *,
    summary: str,
    paper: str,
    normalize: bool,
    rescale: bool | None,
    elect_sign: bool,
    thinner: Callable[..., torch.Tensor] | None = None,
    extra: Sequence[Param] = (),
) -> MethodSpec:
    """A MethodSpec for one member of the family; `thinner(delta, density, rescale=..,
    [gamma|epsilon], [rng])` is applied per input."""
    params = family_params(normalize=normalize, rescale=rescale, extra=extra)
    random = thinner in (sparsify.bernoulli, sparsify.magprune)
    extra_names = [p.name for p in extra]

    def merge(base, tensors, *, weight, normalize, lambda_=1.0, density=None, rescale=False, rng=None, **kw):
        def thin(delta, i):
            args = {k: kw[k][i] for k in extra_names}
            if random:
                args["rng"] = rng(i)
            return thinner(delta, density[i], rescale=rescale, **args)

        return merge_task_vectors(
            base, tensors, weight=weight, normalize=normalize, lambda_=lambda_,
            thin=thin if thinner else None, elect_sign=elect_sign,
        )

    merge.__name__ = name
    merge.__doc__ = summary
    return MethodSpec(name=name, merge=merge, params=params, summary=summary, paper=paper,
                      base="required", min_inputs=1, random=random)
