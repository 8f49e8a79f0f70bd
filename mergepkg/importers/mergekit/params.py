"""Merge parameters of a config as recipe parameters: values, gradients, filtered conditions,
checked against the method's spec; what mergekit ignores is dropped with a note."""

from __future__ import annotations

from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.importers.mergekit.context import Context
from mergepkg.methods.spec import MethodSpec, Param
from mergepkg.recipe.tables import show

# what pydantic's bool accepts, as mergekit validates flags with it
TRUE = ("true", "yes", "on", "1", "t", "y")
FALSE = ("false", "no", "off", "0", "f", "n")


def read_params(ctx: Context, table: Any, spec: MethodSpec, key: str, *, level: str) -> dict:
    """The `parameters` mapping at `key`; level: "step", "slice", "input" (a model or slice
    source) or "base" (the base's own entry)."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ctx.error(key, f"expected a mapping of parameter names to values, got {show(table)}")
    out = {}
    for name, value in table.items():
        pkey = f"{key}.{name}"
        if name == "int8_mask":
            ctx.note("int8_mask dropped: a memory option of mergekit that does not change results", pkey)
            continue
        if spec.name == "task_arithmetic" and name in ("density", "rescale"):
            ctx.note(
                f"{name} dropped: task_arithmetic never sparsifies, mergekit ignores it "
                "and mergepkg has no such parameter",
                pkey,
            )
            continue
        p = spec.param(name) if isinstance(name, str) else None
        if p is None:
            known = [q.name for q in spec.params]
            hint = did_you_mean(str(name), known) if known else None
            raise ctx.error(
                pkey, f"method {spec.name!r} has no parameter {name!r}", hint or f"{spec.name} takes no parameters"
            )
        value = setting(ctx, value, p, pkey)
        if level == "base":
            ctx.note("the base model's own parameters dropped: mergekit does not use them", pkey)
            continue
        if level == "input" and not p.per_input:
            ctx.note(f"{name} dropped here: it is set once per merge and mergekit ignores it on a model", pkey)
            continue
        out[name] = value
    return out


def setting(ctx: Context, value: Any, p: Param, key: str) -> Any:
    """One parameter's value: a number or gradient, or a list of { filter, value } conditions."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        conds = []
        for i, cond in enumerate(value):
            ckey = f"{key}[{i}]"
            if not isinstance(cond, dict):
                raise ctx.error(ckey, "a list mixes conditions ({ filter, value }) and plain values")
            for k in cond:
                if k not in ("filter", "value"):
                    hint = (
                        "`pattern` is old mergekit syntax that mergekit 0.1.5 ignores (the value then "
                        "applies to every tensor); write `filter`"
                        if k == "pattern"
                        else ctx.unknown_key_hint(str(k), ("filter", "value"))
                    )
                    raise ctx.error(f"{ckey}.{k}", f"unknown key {k!r}", hint)
            if "value" not in cond:
                raise ctx.error(ckey, "missing `value`", "e.g. { filter: self_attn, value: 0.5 }")
            flt = cond.get("filter")
            if flt is not None and not isinstance(flt, str):
                raise ctx.error(f"{ckey}.filter", f"expected a substring of tensor names, got {show(flt)}")
            if isinstance(cond["value"], (dict, type(None))) or (
                isinstance(cond["value"], list) and any(isinstance(v, (dict, list)) for v in cond["value"])
            ):
                raise ctx.error(f"{ckey}.value", f"expected a number or a gradient, got {show(cond['value'])}")
            entry = {} if flt in (None, "*") else {"filter": flt}
            entry["value"] = scalar_or_gradient(ctx, cond["value"], p, f"{ckey}.value")
            conds.append(entry)
        return conds
    return scalar_or_gradient(ctx, value, p, key)


def scalar_or_gradient(ctx: Context, value: Any, p: Param, key: str) -> Any:
    """A value, or a gradient (a list of values across the layers)."""
    if isinstance(value, list):
        if not value:
            raise ctx.error(key, "expected a value, got an empty list")
        if p.kind is bool:
            raise ctx.error(key, f"{p.name!r} is a flag: mergepkg takes true or false, not a list")
        return [scalar(ctx, v, p, f"{key}[{i}]") for i, v in enumerate(value)]
    return scalar(ctx, value, p, key)


def scalar(ctx: Context, value: Any, p: Param, key: str) -> Any:
    """A flag or a number as mergekit's validation reads it, checked against the parameter's range."""
    if p.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise ctx.error(key, f"expected true or false, got {show(value)}")
    if isinstance(value, str):  # YAML reads 1e-5 as a string; mergekit's validation makes it a number
        try:
            number = float(value)
        except ValueError:
            raise ctx.error(key, f"expected a number, got {show(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(key, f"expected a number, got {show(value)}")
    else:
        number = value
    if (problem := p.problem(number)) is not None:
        raise ctx.error(key, f"{p.name}: {problem}")
    return number
