"""The generalized task-arithmetic merge that task_arithmetic, TIES, DARE, breadcrumbs
and DELLA are all instances of: sparsify each task vector, weight it, optionally elect
signs, sum, normalize, scale by lambda, and add back to the base.

Semantics follow mergekit 0.1.5 (`generalized_task_arithmetic.py`); the code is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mergepkg._lazy import lazy_import, torch
from mergepkg.methods import sparsify
from mergepkg.methods.kernels import chunks
from mergepkg.methods.spec import MethodSpec, Param, Problem, density_param, flag, weight_param

fused = lazy_import("mergepkg.methods.fused")  # numpy and numba: imported when a merge runs

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
    scratch: chunks.Scratch | None = None,
) -> torch.Tensor:
    """base + lambda * combine(weight_i * thin(t_i - base)).

    elect_sign (TIES): keep, per entry, only the deltas whose sign matches the sign of
    their weighted sum; normalize then divides by the weights of the deltas kept.
    `thin(delta, i)` may return `delta` changed in place.
    """
    # deltas: [n_inputs, *shape], thinned, then weighted. Masks multiply as floats (the
    # same bits as booleans, at a fraction of the cost); work buffers come from
    # `scratch` so that a streamed merge reuses them chunk after chunk.
    scratch = scratch or chunks.Scratch(base.device)
    shape, dtype = tuple(base.shape), base.dtype
    deltas = scratch.get("deltas", (len(tensors), *shape), dtype)
    for i, t in enumerate(tensors):
        delta = torch.sub(t, base, out=deltas[i])
        if thin is not None and (kept := thin(delta, i)) is not delta:
            delta.copy_(kept)
    w = torch.tensor(list(weight), dtype=dtype, device=base.device).view(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if elect_sign:
        mixed = torch.sum(deltas, dim=0, out=scratch.get("mixed", shape, dtype))
        sign = torch.ge(mixed, 0, out=scratch.get("sign", shape, dtype)).mul_(2).sub_(1)  # elected: +1 on a tie
        work = scratch.get("work", deltas.shape, dtype)
        agree = torch.gt(torch.mul(deltas, sign, out=work), 0, out=scratch.get("agree", deltas.shape, dtype))
        # agree: 1.0 where a delta has the elected sign; zeros carry no vote
        mixed = torch.sum(torch.mul(deltas, agree, out=work), dim=0, out=mixed)
        divisor = torch.sum(torch.mul(agree, w, out=work), dim=0, out=scratch.get("divisor", shape, dtype))
        divisor += torch.eq(divisor, 0, out=sign)  # nothing agrees: mixed is 0, divide by 1
    else:
        mixed = torch.sum(deltas, dim=0, out=scratch.get("mixed", shape, dtype))
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return torch.add(base, mixed, out=mixed)


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


# Streaming (see chunks.py): for each input, a rule that says which entries of a chunk
# of its task vector survive. A planner returns None when everything survives.
Rule = Callable[[slice, "torch.Tensor"], "torch.Tensor"]  # (chunk, its delta) -> 1.0 where kept, else 0.0
Planner = Callable[..., Rule | None]


def plan_magnitude(flat: chunks.Flat, i: int, density: float, **_) -> Rule | None:
    if density >= 1 or flat.n == 0:
        return None
    rule = sparsify.TopK(
        lambda span: flat.delta_at(i, span).abs_(), flat.n, sparsify.top_k(density, flat.n), flat.spans()
    )

    def keep(span, delta):  # 1.0 / 0.0 per entry of the chunk
        magnitudes = torch.abs(delta, out=flat.scratch.get("magnitudes", delta.shape, delta.dtype))
        return rule.keep(span, magnitudes, out=flat.scratch.get("mask", delta.shape, delta.dtype))

    return keep


def plan_bernoulli(flat: chunks.Flat, i: int, density: float, rng, **_) -> Rule | None:
    if density >= 1:
        return None
    seed, limit = rng(i).initial_seed(), sparsify.draw_limit(density)  # draws by entry index: chunk by chunk

    def keep(span, delta):  # 1.0 / 0.0 per entry of the chunk
        drawn = sparsify.draws(seed, span.start, span.stop - span.start, delta.device)
        return torch.lt(drawn, limit, out=flat.scratch.get("mask", delta.shape, delta.dtype))

    return keep


PLANNERS: dict[Sparsifier, Planner] = {sparsify.magnitude: plan_magnitude, sparsify.bernoulli: plan_bernoulli}


def stream_task_vectors(
    base,
    tensors,
    *,
    compute,
    out_dtype,
    weight,
    normalize,
    lambda_=1.0,
    density=None,
    rescale=False,
    rng=None,
    elect_sign: bool,
    planner: Planner | None,
    out=None,
) -> torch.Tensor:
    """merge_task_vectors over chunks: the same bits as the whole-tensor merge, cast to
    out_dtype. First pass: each input's keep rule (and L1 rescale factor); second pass:
    the merge itself, chunk by chunk. On the CPU, fused.py does both in compiled loops."""
    if fused.usable(base, tensors, compute, planner and planner.__name__.removeprefix("plan_"), rescale):
        return fused.stream(
            base,
            tensors,
            compute=compute,
            out_dtype=out_dtype,
            weight=weight,
            normalize=normalize,
            lambda_=lambda_,
            density=density,
            rescale=rescale,
            rng=rng,
            elect_sign=elect_sign,
            planner=planner and planner.__name__.removeprefix("plan_"),
            out=out,
        )
    flat = chunks.Flat(base, tensors, compute)

    rules = [planner(flat, i, density=density[i], rng=rng) if planner else None for i in range(len(tensors))]
    factors = [
        sparsify.l1_rescale(flat, i, rule) if rescale and rule is not None else None for i, rule in enumerate(rules)
    ]

    out = chunks.output(out, flat.shape, out_dtype, flat.device)
    dest = out.view(-1)
    for span in flat.spans():

        def thin(delta, i, _span=span):
            if rules[i] is None:
                return delta
            delta.mul_(rules[i](_span, delta))  # in place: the mask (1.0 / 0.0) zeroes what is dropped
            return delta.mul_(factors[i]) if factors[i] is not None else delta

        dest[span] = merge_task_vectors(
            flat.base_at(span),
            [flat.input_at(i, span) for i in range(len(tensors))],
            weight=weight,
            normalize=normalize,
            lambda_=lambda_,
            thin=thin if planner else None,
            elect_sign=elect_sign,
            scratch=flat.scratch,
        )
    return out


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
    version: int = 1,
    check: Callable[[Mapping[str, Any]], Problem | None] | None = None,
) -> MethodSpec:
    """A MethodSpec for one member of the family; `thinner(delta, density, rescale=..,
    [gamma|epsilon], [rng])` is applied per input."""
    params = family_params(normalize=normalize, rescale=rescale, extra=extra)
    random = thinner in (sparsify.bernoulli, sparsify.magprune)
    extra_names = [p.name for p in extra]

    def merge(base, tensors, *, weight, normalize, lambda_=1.0, density=None, rescale=False, rng=None, **kw):
        def thin(delta, i):
            assert thinner is not None  # thin is passed on only with a thinner
            args = {k: kw[k][i] for k in extra_names}
            if random:
                args["rng"] = rng(i)
            return thinner(delta, density[i], rescale=rescale, **args)

        return merge_task_vectors(
            base,
            tensors,
            weight=weight,
            normalize=normalize,
            lambda_=lambda_,
            thin=thin if thinner else None,
            elect_sign=elect_sign,
        )

    merge.__name__ = name
    merge.__doc__ = summary
    stream = None
    if thinner is None or thinner in PLANNERS:

        def stream(base, tensors, *, compute, out_dtype, **params):
            return stream_task_vectors(
                base,
                tensors,
                compute=compute,
                out_dtype=out_dtype,
                elect_sign=elect_sign,
                planner=PLANNERS[thinner] if thinner is not None else None,
                **params,
            )

    return MethodSpec(
        name=name,
        merge=merge,
        params=params,
        summary=summary,
        paper=paper,
        base="required",
        min_inputs=1,
        base_alone=True,
        random=random,
        stream=stream,
        check=check,
        version=version,
        rows=thinner is None and not elect_sign,
        light=thinner is None and not elect_sign,
        fused=stream is not None,
        thinner=PLANNERS[thinner].__name__.removeprefix("plan_") if thinner in PLANNERS else None,
    )
