"""Merge methods, registered by name. Each module holds one method: a pure function
over tensors and the `MethodSpec` that declares its parameters and input contract.

A merge function is called as `merge(base, tensors, **params)`: `base` is the base
tensor or None, `tensors` the other inputs in recipe order, step-wide parameters are
scalars and per-input parameters are lists aligned with `tensors`. Random methods
also get `rng(i)`, a seeded torch.Generator for input i of this tensor.
"""

from __future__ import annotations

from mergepkg.errors import RecipeError, did_you_mean
from mergepkg.methods import (
    arcee_fusion,
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    karcher,
    linear,
    model_stock,
    moe,
    nearswap,
    nuslerp,
    passthrough,
    sce,
    slerp,
    task_arithmetic,
    ties,
)
from mergepkg.methods.spec import MethodSpec, Param

METHODS: dict[str, MethodSpec] = {
    m.SPEC.name: m.SPEC
    for m in (
        linear,
        slerp,
        nuslerp,
        karcher,
        task_arithmetic,
        ties,
        dare_ties,
        dare_linear,
        breadcrumbs,
        breadcrumbs_ties,
        della,
        della_linear,
        sce,
        model_stock,
        arcee_fusion,
        nearswap,
        passthrough,
        moe,
    )
}


def get_method(name: str) -> MethodSpec:
    """The method named `name`. Unknown, the error is unlocated: the parser places it
    (`RecipeError.at`) only when it is raised, as locating every step made parsing slow."""
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(f"unknown method {name!r}", hint=did_you_mean(name, METHODS)) from None


__all__ = ["METHODS", "MethodSpec", "Param", "get_method"]
