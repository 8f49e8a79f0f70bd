"""A parameter's value for one output tensor: filters, gradients, scopes and defaults.

Settings come from the recipe (`recipe/model.py`: a number, a gradient, or `filter`
conditions, first match wins); scopes are searched from the most specific (an input's
own parameters, then its slice's, then the step's) to the method's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mergepkg.errors import RecipeError
from mergepkg.methods.spec import Param
from mergepkg.recipe.model import Condition, Params, Setting, Written


def value_at(setting: Setting, tensor: str, t: float) -> Any:
    """A setting's value for tensor `tensor` at gradient position t in [0, 1] (None: no
    filter matched)."""
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
        for cond in setting:
            if cond.filter is None or cond.filter in tensor:
                return value_at(cond.value, tensor, t)
        return None
    if isinstance(setting, tuple):  # gradient: piecewise-linear over t in [0, 1]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    return setting


def param_value(p: Param, scopes: Sequence[Params], tensor: str, t: float, where: Written, key: str) -> Any:
    """`p`'s value for `tensor`: from the first scope whose setting applies to it, else its
    default; a required parameter nothing applies to is an error at `key`."""
    for scope in scopes:
        if p.name in scope:
            value = value_at(scope[p.name], tensor, t)
            if value is not None:
                return value
    if p.required:
        raise where.error(
            RecipeError,
            key,
            f"no value of {p.name!r} applies to tensor {tensor}",
            "add a condition without `filter` as the last entry, or a step-wide value",
        )
    return p.default
