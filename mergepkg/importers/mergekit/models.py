"""The models a config merges as a step's base and inputs: `models` (whole models) or `slices`
(layer ranges), with their parameters and the method's input contract."""

from __future__ import annotations

from typing import Any

from mergepkg.importers.mergekit.context import Context, Step
from mergepkg.importers.mergekit.params import read_params
from mergepkg.importers.mergekit.refs import Refs
from mergepkg.methods.spec import MethodSpec
from mergepkg.recipe.tables import show

MODEL_KEYS = ("model", "parameters", "revision")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters", "revision")


def whole_models(
    ctx: Context, refs: Refs, step: Step, spec: MethodSpec, entries: Any, base: str | None, where: str = "models"
) -> None:
    """`models: [{ model, parameters }]` as the step's base and inputs; `where`: their key path."""
    if not isinstance(entries, list) or not entries:
        raise ctx.error(where, "expected a list of { model: ..., parameters: ... }")
    items: list[tuple[str, Any, str]] = []  # (name, raw params, key)
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        if isinstance(entry, str):
            raise ctx.error(
                key,
                f"expected {{ model: {entry} }}, got a bare string",
                "mergekit reads each entry as a mapping with `model` (and `parameters`)",
            )
        if not isinstance(entry, dict):
            raise ctx.error(key, f"expected {{ model: ..., parameters: ... }}, got {show(entry)}")
        ctx.only_keys(entry, MODEL_KEYS, key)
        if entry.get("model") is None:
            raise ctx.error(key, "missing `model`")
        name = _model(ctx, refs, entry, key)
        if any(n == name for n, _, _ in items):
            raise ctx.error(
                f"{key}.model",
                f"{entry['model']!r} is listed twice",
                "mergekit refuses duplicate inputs; list each model once",
            )
        items.append((name, entry.get("parameters"), key))
    if spec.base == "none":
        if base is not None and all(n != base for n, _, _ in items):
            # mergekit merges base_model as one more input of methods that take no base
            items.append((base, None, "base_model"))
            ctx.note(f"base_model is merged as one more input, as mergekit does for {spec.name}", "base_model")
        step.config = base  # mergekit's config.json, side files and tokenizer come from base_model
        if spec.max_inputs is not None and len(items) > spec.max_inputs and base is not None:
            raise ctx.error(
                "base_model",
                f"method {spec.name!r} takes {spec.inputs_text} model, got {len(items)}",
                "mergekit merges base_model as one more input here; remove base_model",
            )
    else:
        if spec.base == "required" and base is None:
            raise ctx.error(
                "base_model" if "base_model" in step.doc.data else "merge_method",
                f"method {spec.name!r} needs a base_model",
                "add base_model: <the model the others were tuned from>",
            )
        step.base = base
    for name, raw, key in items:
        is_base = spec.base != "none" and name == base
        params = read_params(ctx, raw, spec, f"{key}.parameters", level="base" if is_base else "input")
        if not is_base:
            step.inputs.append({"model": name, **params})
    _check_count(ctx, spec, len(step.inputs), where)
    for p in spec.params:
        if not p.required:
            continue
        if not p.per_input and p.name not in step.params:
            raise ctx.error(
                "parameters",
                f"missing parameter {p.name!r}",
                _misplaced(step, p.name) or f"set {p.name} in the top-level parameters (mergekit would fail too)",
            )
        for (name, _, key), inp in zip([it for it in items if spec.base == "none" or it[0] != base], step.inputs):
            if p.per_input and p.name not in inp and p.name not in step.params:
                raise ctx.error(
                    key,
                    f"missing parameter {p.name!r} for {name!r}",
                    "set it under this model's parameters or in the top-level parameters",
                )


def sliced(
    ctx: Context, refs: Refs, step: Step, spec: MethodSpec, raw: Any, base: str | None, where: str = "slices"
) -> None:
    """`slices: [{ sources: [{ model, layer_range, parameters }], parameters }]` as the step's slices;
    `where`: their key path."""
    if not isinstance(raw, list) or not raw:
        raise ctx.error(where, "expected a list of { sources: [...] }")
    if spec.base == "none":
        step.config = base  # not merged: mergekit takes config.json, side files and tokenizer from it
    else:
        if spec.base == "required" and base is None:
            raise ctx.error(
                "base_model" if "base_model" in step.doc.data else "merge_method",
                f"method {spec.name!r} needs a base_model",
            )
        step.base = base
    for si, sl in enumerate(raw):
        key = f"{where}[{si}]"
        if not isinstance(sl, dict):
            raise ctx.error(key, f"expected {{ sources: [...] }}, got {show(sl)}")
        ctx.only_keys(sl, SLICE_KEYS, key)
        if sl.get("base_model") is not None:
            own = refs.model_ref(sl["base_model"], f"{key}.base_model")
            if own != base or spec.base == "none":
                raise ctx.error(
                    f"{key}.base_model",
                    "a slice's own base_model is not supported",
                    "use one base_model for the whole merge (split it into several merges otherwise)",
                )
        if sl.get("residual_weight") is not None:
            ctx.ignored(f"{key}.residual_weight", "mergekit 0.1.5 reads it but never uses it")
        sources = sl.get("sources")
        if not isinstance(sources, list) or not sources:
            raise ctx.error(f"{key}.sources", "expected a list of { model: ..., layer_range: [start, end] }")
        out_sources: list[dict] = []
        lengths: list[int] = []
        for j, src in enumerate(sources):
            skey = f"{key}.sources[{j}]"
            if not isinstance(src, dict):
                raise ctx.error(skey, f"expected {{ model: ..., layer_range: [start, end] }}, got {show(src)}")
            ctx.only_keys(src, SOURCE_KEYS, skey)
            if src.get("model") is None:
                raise ctx.error(skey, "missing `model`")
            name = _model(ctx, refs, src, skey)
            if any(s["model"] == name for s in out_sources):
                raise ctx.error(
                    f"{skey}.model",
                    f"{src['model']!r} is listed twice in one slice",
                    "mergekit refuses duplicate inputs",
                )
            lr = src.get("layer_range")
            if (
                not isinstance(lr, list)
                or len(lr) != 2
                or not all(type(x) is int for x in lr)
                or not 0 <= lr[0] < lr[1]
            ):
                raise ctx.error(f"{skey}.layer_range", f"expected [start, end] with 0 <= start < end, got {show(lr)}")
            is_base = spec.base != "none" and name == base
            params = read_params(
                ctx, src.get("parameters"), spec, f"{skey}.parameters", level="base" if is_base else "input"
            )
            out_sources.append({"model": name, "layers": list(lr), **params})
            lengths.append(lr[1] - lr[0])
        if len(set(lengths)) > 1:
            raise ctx.error(
                f"{key}.sources", f"sources of one slice must span the same number of layers, got {lengths}"
            )
        if step.base is not None and all(s["model"] != step.base for s in out_sources):
            raise ctx.error(f"{key}.sources", f"base_model must be among each slice's sources for {spec.name}")
        slice_params = read_params(ctx, sl.get("parameters"), spec, f"{key}.parameters", level="slice")
        non_base = [s for s in out_sources if s["model"] != step.base]
        _check_count(ctx, spec, len(non_base), f"{key}.sources", in_slice=True)
        for p in spec.params:
            if not p.required or p.name in step.params or p.name in slice_params:
                continue
            if not p.per_input:
                raise ctx.error(
                    f"{key}",
                    f"missing parameter {p.name!r}",
                    _misplaced(step, p.name)
                    or "set it in the slice's or the top-level parameters (mergekit would fail too)",
                )
            for j, s in enumerate(out_sources):
                if s["model"] != step.base and p.name not in s:
                    raise ctx.error(
                        f"{key}.sources[{j}]",
                        f"missing parameter {p.name!r}",
                        "set it on the source, the slice or the top-level parameters",
                    )
        step.slices.append({"sources": out_sources, "params": slice_params})
    if (
        spec.base == "none"
        and base is not None
        and base in step.models
        and step.slices[0]["sources"][0]["model"] != base
    ):
        step.tokenizer = base  # mergekit copies the base model's tokenizer


def _model(ctx: Context, refs: Refs, entry: dict, key: str) -> str:
    """The model of a `models` entry or slice source; a `revision` beside it pins that model."""
    revision = entry.get("revision")
    if revision is None:
        return refs.model_ref(entry["model"], f"{key}.model")
    if not isinstance(revision, str) or not revision or not isinstance(entry["model"], str) or "@" in entry["model"]:
        raise ctx.error(
            f"{key}.revision",
            f"expected a revision for the model {show(entry['model'])}, got {show(revision)}",
            "write the model as org/name@revision instead",
        )
    ctx.note(
        "revision carried over as the model's pinned revision (mergekit 0.1.5 does not read this key "
        "and fetches the default branch)",
        f"{key}.revision",
    )
    return refs.model_ref(f"{entry['model']}@{revision}", f"{key}.model")


def _misplaced(step: Step, name: str) -> str | None:
    """A hint when a per-merge parameter was only given on models (where mergekit ignores it)."""
    keys = [k for k, why in step.ignored.items() if why.startswith(f"{name} is set once per merge")]
    if keys:
        return (
            f"{name} is set once per merge; mergekit ignores it at {keys[0]} (and fails the same way): "
            "move it to the top-level or the slice's parameters"
        )
    return None


def _check_count(ctx: Context, spec: MethodSpec, count: int, key: str, *, in_slice: bool = False) -> None:
    if (problem := spec.count_problem(count, "the base_model", in_slice=in_slice)) is not None:
        raise ctx.error(key, problem)
