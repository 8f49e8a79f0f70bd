"""Method parameters in a recipe: a number, a gradient (a list interpolated across
layers) or `{ filter = "...", value = ... }` conditions (first match wins), each
checked against the method's declared parameters and ranges (`methods/spec.py`)."""

from __future__ import annotations

from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.methods.spec import MethodSpec, Param
from mergepkg.recipe.model import Condition, Setting
from mergepkg.recipe.tables import TableReader


def param_table(r: TableReader, table: dict, spec: MethodSpec, key: str, *, per_input: bool) -> dict[str, Setting]:
    """A table of parameters: a step's or slice's (`per_input` off), or an input's own."""
    out = {}
    for name, value in table.items():
        pkey = f"{key}.{name}"
        param = spec.param(name)
        allowed = [q.name for q in spec.params if q.per_input or not per_input]
        if param is None or name not in allowed:
            hint = did_you_mean(name, allowed) if param is None else f"{name!r} is set once per step, in params"
            raise r.error(
                pkey, f"method {spec.name!r} has no {'per-input ' if per_input else ''}parameter {name!r}", hint
            )
        out[name] = setting(r, value, param, pkey)
    return out


def setting(r: TableReader, value: Any, param: Param, key: str) -> Setting:
    """One parameter's setting: conditions, a gradient or a scalar."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        conds = []
        for i, cond in enumerate(value):
            ckey = f"{key}[{i}]"
            r.only_keys(cond, ("filter", "value"), ckey)
            if "value" not in cond:
                raise r.error(ckey, "missing `value`", 'e.g. { filter = "self_attn", value = 0.5 }')
            flt = cond.get("filter")
            if flt is not None:
                r.expect(flt, str, f"{ckey}.filter", "a substring of tensor names")
            conds.append(
                Condition(
                    filter=None if flt in (None, "*") else flt,
                    value=scalar_or_gradient(r, cond["value"], param, f"{ckey}.value"),
                )
            )
        return tuple(conds)
    return scalar_or_gradient(r, value, param, key)


def scalar_or_gradient(r: TableReader, value: Any, param: Param, key: str) -> Any:
    if isinstance(value, list):
        if not value or param.kind is bool:
            raise r.error(
                key, f"expected {param.range_text}" + ("" if param.kind is bool else " or a non-empty gradient list")
            )
        for i, v in enumerate(value):
            if (problem := param.problem(v)) is not None:
                raise r.error(f"{key}[{i}]", problem)
        return tuple(float(v) for v in value)
    if (problem := param.problem(value)) is not None:
        raise r.error(key, problem)
    return value if param.kind is bool else float(value)
