"""Merge parameters of a config as recipe parameters: values, gradients, filtered conditions,
checked against the method's spec; what mergekit ignores is dropped with a warning that
says it has no effect (an error when importing with --strict)."""

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
            ctx.ignored(pkey, "a memory option of mergekit that does not change results")
            continue
        p = spec.param(name) if isinstance(name, str) else None
        if p is None:
            known = [q.name for q in spec.params]
            close = did_you_mean(str(name), known) if known else None
            ctx.ignored(
                pkey,
                f"method {spec.name!r} has no parameter {name!r}, and mergekit reads only the ones a method declares",
                close if close and close.startswith("did you mean") else None,
            )
            continue
        value = setting(ctx, value, p, pkey)
        if level == "base":
            ctx.ignored(pkey, "mergekit does not use the base model's own parameters")
            continue
        if level == "input" and not p.per_input:
            ctx.ignored(
                pkey, f"{name} is set once per merge; mergekit reads it only from slice and top-level parameters"
            )
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
                if k == "pattern":
                    ctx.ignored(
                        f"{ckey}.pattern",
                        "old mergekit syntax that mergekit 0.1.5 does not read, so this value applies to every "
                        "tensor the conditions before it leave",
                        "write `filter` to restrict it",
                    )
                elif k not in ("filter", "value"):
                    ctx.unknown_key(k, ("filter", "value"), ckey)
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
            if "filter" not in entry:
                break  # a catch-all: mergekit never reaches the conditions after it
        if len(conds) == 1 and "filter" not in conds[0]:
            return conds[0]["value"]
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
        if isinstance(value, (int, float)) and value in (0, 1):  # pydantic's bool takes 1 and 1.0
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
    if p.kind is int and isinstance(number, float) and number.is_integer():
        number = int(number)  # pydantic's int takes "5" and 5.0, as mergekit's validation does
    if (problem := p.problem(number)) is not None:
        raise ctx.error(key, f"{p.name}: {problem}")
    return number


def layered(inner: Any, outer: Any) -> Any:
    """One setting for two precedence levels (a module's parameter over the top level's), as
    mergekit resolves them: the inner one wins, but a filter list that matches no tensor
    name falls through to the outer level, so the outer level becomes its catch-all."""
    if inner is None or outer is None:
        return outer if inner is None else inner
    if not (isinstance(inner, list) and inner and isinstance(inner[0], dict)):
        return inner  # a value or gradient: every tensor takes it
    if any("filter" not in cond for cond in inner):
        return inner  # already has a catch-all
    fallback = outer if isinstance(outer, list) and outer and isinstance(outer[0], dict) else [{"value": outer}]
    return [*inner, *fallback]
