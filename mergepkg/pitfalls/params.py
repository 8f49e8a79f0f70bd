"""Pitfalls the recipe alone shows (MP1xx): weights, densities and slerp's `t`, read
without a model.

A parameter may be a number, a gradient across layers or `filter` conditions, so each
check looks at every place a setting can differ: for each filter string of the
settings involved a tensor whose name holds that filter alone (and one no filter
matches), at every knot of their gradients (where piecewise-linear values have their
extremes). A tensor name holding two filters is not checked; nor is a setting that
differs only between layers that fall between knots. No tensor, header or config is
read, so `validate` and `build` run these for every step, stored or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mergepkg.errors import PlanError
from mergepkg.layout.values import value_at
from mergepkg.methods import METHODS
from mergepkg.methods.moe import PROMPTED
from mergepkg.methods.spec import MethodSpec, Param
from mergepkg.pitfalls.pitfall import Pitfall, settle, written_name
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.model import Condition, Params, Recipe, Setting, Step
from mergepkg.recipe.plan import make_plan

SUM_TOLERANCE = 0.01  # MP101: weights whose sum is further than this from 1 scale the output
DOMINANT_SHARE = 0.9  # MP102: an input with more than this share of the weight, wherever it applies
LOW_DENSITY = 0.1  # MP103: a density below this keeps under a tenth of a task vector
T_RANGE = (0.0, 1.0)  # MP104: slerp's t outside this extrapolates past one of its two models

# A point of the recipe's parameter space: a tensor name and a gradient position t in [0, 1]
Point = tuple[str, float]


def unresolved_pitfalls(recipe: Recipe) -> list[Pitfall] | None:
    """The MP1xx warnings `recipe` shows (settled, placed) before it is resolved: its steps
    and those it imports from other files, flattened as a build flattens them; None for a
    recipe with registry dependencies (their recipes are installed when it is resolved).
    What `build A B --deny-warnings` checks of every recipe before it builds the first."""
    if recipe.dependencies:
        return None
    try:
        flat = flatten(recipe)
    except PlanError:  # an imported file's dependency, a cycle: the build says so, located
        return None
    return settle(recipe_pitfalls(flat, make_plan(flat).order), flat)


def recipe_pitfalls(recipe: Recipe, steps: Iterable[str] | None = None) -> list[Pitfall]:
    """What MP101-MP105 find in `steps` of `recipe` (default: every step), in step order."""
    found: list[Pitfall] = []
    for name in recipe.steps if steps is None else steps:
        step = recipe.steps[name]
        spec = METHODS.get(step.method)
        if step.moe is not None:  # an moe step has experts, not weighted inputs
            found += _alike_experts(step)
            continue
        if spec is None:
            continue
        for group in _groups(step):
            found += group.check(spec)
    return found


@dataclass(frozen=True)
class _Member:
    model: str
    at: str  # its key path in the step: inputs[0], slices[1].sources[0]
    params: Params


@dataclass(frozen=True)
class _Group:
    """Models merged together: a step's inputs, or one slice's sources (the base left out)."""

    step: Step
    at: str  # "inputs" or "slices[i].sources"
    members: tuple[_Member, ...]
    outer: tuple[tuple[str, Params], ...]  # (key path, params): a slice's, then the step's

    def settings(self, param: str) -> list[Setting]:
        scopes = [m.params for m in self.members] + [p for _, p in self.outer]
        return [s[param] for s in scopes if param in s]

    def points(self, params: Sequence[str]) -> tuple[list[str], list[float], bool]:
        """The tensor names and gradient positions that tell every case of `params` apart,
        and whether any of them is a gradient."""
        filters: set[str] = set()
        knots = {0.0, 1.0}
        gradient = False
        for param in params:
            for setting in self.settings(param):
                for value, flt in _parts(setting):
                    if flt is not None:
                        filters.add(flt)
                    if isinstance(value, tuple) and len(value) > 1:
                        gradient = True
                        knots |= {j / (len(value) - 1) for j in range(len(value))}
        return [*sorted(filters), ""], sorted(knots), gradient

    def value(self, p: Param, member: _Member | None, point: Point) -> tuple[Any, str | None, str]:
        """`p`'s value at `point` for `member` (None: a step-wide parameter), the key path
        of the setting it comes from (None: the method's default), and where that setting
        gives it (`_where`)."""
        scopes = ([(f"{member.at}.{p.name}", member.params)] if member else []) + [
            (f"{key}.{p.name}" if key else p.name, params) for key, params in self.outer
        ]
        for key, params in scopes:
            if p.name in params:
                picked = _pick(params[p.name], *point)
                if picked is not None:
                    value, index, where = picked
                    return value, key if index is None else f"{key}[{index}]", where
        return (None if p.required else p.default), None, ""

    def check(self, spec: MethodSpec) -> list[Pitfall]:
        found: list[Pitfall] = []
        weight, normalize, density = spec.param("weight"), spec.param("normalize"), spec.param("density")
        if spec.name == "linear" and weight is not None and normalize is not None:
            found += self.unnormalized(weight, normalize)
        if weight is not None and weight.per_input and len(self.members) > 1:
            found += self.dominant(weight)
        if density is not None and density.per_input:
            found += self.sparse(density)
        t = spec.param("t")
        if spec.name == "slerp" and t is not None:
            found += self.extrapolated(t)
        return found

    # -- MP101 ------------------------------------------------------------------------
    def unnormalized(self, weight: Param, normalize: Param) -> list[Pitfall]:
        names, knots, gradient = self.points([weight.name, normalize.name])
        for name in names:
            for t in knots:
                if self.value(normalize, None, (name, t))[0] is not False:
                    continue
                weights = [self.value(weight, m, (name, t))[0] for m in self.members]
                if None in weights:
                    continue
                total = sum(weights)
                if abs(total - 1) > SUM_TOLERANCE + 1e-9:  # 0.5 + 0.51 is at the tolerance, not past it
                    return [
                        Pitfall(
                            "MP101",
                            f"the weights sum to {total:g} and normalize is false: "
                            f"the merged tensors{_region(name, names, t, gradient)} are scaled by {total:g}",
                            "make the weights sum to 1, or leave normalize at its default (true), "
                            "which divides by their sum",
                            step=self.step.name,
                            at=self.at,
                        )
                    ]
        return []

    # -- MP102 ------------------------------------------------------------------------
    def dominant(self, weight: Param) -> list[Pitfall]:
        names, knots, _ = self.points([weight.name])
        found = []
        for i, member in enumerate(self.members):
            shares: dict[str, list[float]] = {}  # name -> the member's share at every knot
            for name in names:
                row = []
                for t in knots:
                    weights = [self.value(weight, m, (name, t))[0] for m in self.members]
                    if None in weights or min(weights) < 0 or sum(weights) <= 0:
                        break  # a negative weight (a task vector subtracted): shares say nothing
                    row.append(weights[i] / sum(weights))
                else:
                    if min(row) > DOMINANT_SHARE:
                        shares[name] = row
            if not shares:
                continue
            low = min(min(r) for r in shares.values())
            high = max(max(r) for r in shares.values())
            amount = f"{low:.0%}" if round(low, 2) == round(high, 2) else f"{low:.0%} to {high:.0%}"
            where = "" if len(shares) == len(names) else " of " + _names(list(shares), names)
            model = written_name(self.step, member.model)
            found.append(
                Pitfall(
                    "MP102",
                    f"{model!r} has {amount} of the weight{where}: the other inputs barely change the merge",
                    "give the other inputs more weight; if the merge is meant to stay this close "
                    f"to {model!r}, allow MP102 in [package] allow",
                    step=self.step.name,
                    at=member.at,
                )
            )
        return found

    # -- MP103 ------------------------------------------------------------------------
    def sparse(self, density: Param) -> list[Pitfall]:
        names, knots, _ = self.points([density.name])
        seen: dict[str, Pitfall] = {}
        for member in self.members:
            for name in names:
                for t in knots:
                    value, key, where = self.value(density, member, (name, t))
                    if key is None or value is None or value >= LOW_DENSITY or key in seen:
                        continue
                    seen[key] = Pitfall(
                        "MP103",
                        f"density {value:g} keeps {value:.0%} of each task vector's entries{where}",
                        "TIES and DARE merges usually keep 0.2 to 0.7; below 0.1 little of a fine-tune "
                        "survives, and DARE scales what does by 1/density",
                        step=self.step.name,
                        at=key,
                    )
        return list(seen.values())

    # -- MP104 ------------------------------------------------------------------------
    def extrapolated(self, t_param: Param) -> list[Pitfall]:
        names, knots, _ = self.points([t_param.name])
        low, high = T_RANGE
        seen: dict[str, Pitfall] = {}
        for name in names:
            for t in knots:
                value, key, where = self.value(t_param, None, (name, t))
                if key is None or value is None or low <= value <= high or key in seen:
                    continue
                past = self.step.base if value < low else self.members[0].model if self.members else None
                past = written_name(self.step, past) if past else "the input"
                seen[key] = Pitfall(
                    "MP104",
                    f"t = {value:g}{where} is outside [0, 1]: slerp extrapolates "
                    f"past {past!r} instead of interpolating between the two models",
                    "keep t in [0, 1] (0 is the base, 1 the other model); if the extrapolation is meant, "
                    "allow MP104 in [package] allow",
                    step=self.step.name,
                    at=key,
                )
        return list(seen.values())


def _groups(step: Step) -> Iterator[_Group]:
    if step.inputs:
        members = tuple(_Member(r.model, f"inputs[{i}]", r.params) for i, r in enumerate(step.inputs))
        yield _Group(step, "inputs", members, (("params", step.params),))
    for si, sl in enumerate(step.slices):
        members = tuple(
            _Member(s.model, f"slices[{si}].sources[{j}]", s.params)
            for j, s in enumerate(sl.sources)
            if s.model != step.base
        )
        yield _Group(
            step, f"slices[{si}].sources", members, ((f"slices[{si}].params", sl.params), ("params", step.params))
        )


def _parts(setting: Setting) -> list[tuple[Any, str | None]]:
    """(value, filter) of each condition of a setting; a plain value or gradient is one, unfiltered."""
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
        return [(c.value, c.filter) for c in setting]
    return [(setting, None)]


def _pick(setting: Setting, tensor: str, t: float) -> tuple[Any, int | None, str] | None:
    """(a setting's value for `tensor` at `t`, the index of the condition it comes from, when
    there are several, and where it gives that value), or None when no condition applies
    (layout/values.value_at's rule)."""
    parts = _parts(setting)
    for index, (value, flt) in enumerate(parts):
        if flt is None or flt in tensor:
            where = _where(flt, [f for _, f in parts[:index] if f is not None], value, t)
            return value_at(value, tensor, t), (index if len(parts) > 1 else None), where
    return None


def _where(flt: str | None, before: list[str], value: Any, t: float) -> str:
    """` (tensors matching 'mlp', at gradient position 0.5)`: where one condition of a setting
    (its filter `flt`, after those with the filters `before`) gives its value, said from
    that setting alone: the filters of other settings, and the knots of other gradients,
    are no part of it. Empty for a plain number."""
    words = []
    if flt is not None:
        words.append(f"tensors matching {flt!r}")
    elif before:  # a fallback: the tensors the conditions before it leave
        words.append(f"tensors not matching {before[0]!r}" if len(before) == 1 else _none_of(before))
    if isinstance(value, tuple) and len(value) > 1:
        words.append(f"at gradient position {t:g}")
    return f" ({', '.join(words)})" if words else ""


def _none_of(filters: list[str]) -> str:
    return "tensors matching none of " + ", ".join(map(repr, filters))


def _names(some: list[str], names: list[str]) -> str:
    """The tensors a list of representative names stands for."""
    words = [f"tensors matching {n!r}" for n in some if n]
    if "" in some:
        words.append("the tensors no filter matches" if len(names) > 1 else "every tensor")
    return ", ".join(words)


def _region(name: str, names: list[str], t: float, gradient: bool) -> str:
    """` (tensors matching 'mlp', at gradient position 0.5)`: where a value was found."""
    words = []
    if len(names) > 1:
        words.append(_names([name], names))
    if gradient:
        words.append(f"at gradient position {t:g}")
    return f" ({', '.join(words)})" if words else ""


def _alike_experts(step: Step) -> list[Pitfall]:
    """MP105: an expert prompted as an earlier one (prompts and negative prompts, as sets)
    in a prompt-based gate mode: their router rows are equal, so the router never prefers
    one of the two (mergekit-moe refuses only when every expert is alike, as the parser does)."""
    moe = step.moe
    assert moe is not None
    if moe.gate_mode not in PROMPTED:
        return []
    seen: dict[tuple, int] = {}
    found = []
    for i, e in enumerate(moe.experts):
        prompts = (frozenset(e.prompts), frozenset(e.negative_prompts))
        if prompts in seen:
            j = seen[prompts]
            found.append(
                Pitfall(
                    "MP105",
                    f"expert {i} ({written_name(step, e.model)!r}) has the same prompts as expert {j} "
                    f"({written_name(step, moe.experts[j].model)!r}): "
                    "their router rows are equal, so the router never prefers one of the two",
                    "give each expert prompts for what should be routed to it",
                    step=step.name,
                    at=f"experts[{i}].prompts",
                )
            )
        else:
            seen[prompts] = i
    return found
