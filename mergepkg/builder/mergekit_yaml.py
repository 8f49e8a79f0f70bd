"""A step as a mergekit config: the `mergekit_config.yml` an output folder gets when
mergekit can run its step, the inverse of `mergepkg import` (docs/commands/import.md).

It lives in `builder/` rather than beside the importer in `importers/mergekit/`: the
importer sits above `builder/` in the layers (it parses recipes and is driven by the
CLI), while this exporter is used by `builder/outputs.py` when outputs are placed, and
a package imports only from those below it (docs/architecture.md). It needs nothing
of the importer: the recipe's model, the resolution (pins) and the method names.

Exported: a step that is not `moe`, whose every model (base, inputs, slice sources,
token sources) is a source (a Hugging Face repo or a local folder, not another step),
with a method mergekit 0.1.5 has, no union tokenizer (mergekit builds its union
differently: docs/tokenizers.md), and a `config` model mergekit can take from its
`base_model` without merging it (`_config_as_base_model`). Written as mergekit reads it:

- `merge_method`, `base_model`, `models` (each with its `parameters`) or `slices`
  (`sources` with `layer_range`, slice `parameters`), top-level `parameters`;
  parameter values as numbers, gradients (lists) and `{ filter, value }` conditions,
  which mean in mergekit what they mean in a recipe;
- `dtype` whenever the step's is not "auto" (mergekit's default is the inputs'
  dtypes, mergepkg's float32), and `out_dtype` (the step's, else the dtype the output's
  tensors were saved in: mergekit's default is the compute dtype). An output saved in
  several dtypes (each tensor as its base tensor, fp32 norms beside bf16 weights) has no
  `out_dtype` mergekit can take, since it saves every tensor in one: the header says so;
- `tokenizer_source`, or a `tokenizer` block with `tokens` and `pad_to_multiple_of`;
  a step without base and without a tokenizer setting names its first model, whose
  tokenizer mergepkg gives the output (mergekit's pick would be another's);
- `chat_template`: the text the output has, when the step sets one (mergekit's
  built-in templates of the same names are other texts than mergepkg's);
- hub models as `repo@commit` (the locked commit), local folders by their path
  relative to the output folder (run mergekit from there); a path holding `+` or `@`
  as `{model: {path: ...}}`, since mergekit reads those in a plain string as a LoRA and
  a revision.

Random methods (DARE, DELLA) draw their masks differently in mergekit: the same
settings, other masks; the file says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from mergepkg._version import __version__
from mergepkg.methods import METHODS
from mergepkg.recipe.model import Condition, Params, Step, TokenSource
from mergepkg.resolve.resolution import Resolution

MERGEKIT_FILE = "mergekit_config.yml"
# merge_method names of mergekit 0.1.5 that mergepkg implements, with the same parameters
MERGEKIT_METHODS = (
    "linear",
    "slerp",
    "nuslerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "karcher",
    "sce",
    "arcee_fusion",
    "nearswap",
    "passthrough",
)


def exportable(res: Resolution, name: str) -> bool:
    """Whether mergekit can run step `name` as it is: see the module's docstring."""
    step = res.recipe.steps[name]
    models = {*step.models, *(t.model for t in step.tokens if t.model)}
    return (
        step.moe is None
        and step.method in MERGEKIT_METHODS
        and not step.tokenizer_union
        and all(m in res.recipe.sources and m in res.sources for m in models)
        and _config_as_base_model(step)
    )


def _config_as_base_model(step: Step) -> bool:
    """Whether mergekit can take the step's `config` model from its `base_model`, the only
    place it reads a config from. A `models:` merge also merges its base_model (linear,
    karcher: a third model) or takes it as the task vectors' base (nuslerp), so there it
    may only be one of a baseless method's inputs; slices never merge it."""
    if step.config is None or step.base is not None or not step.inputs:
        return True
    return METHODS[step.method].base == "none" and step.config in {i.model for i in step.inputs}


def mergekit_config(
    res: Resolution,
    name: str,
    *,
    local: Mapping[str, str],
    saved_dtypes: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> dict[str, Any] | None:
    """Step `name` as a mergekit config (None when mergekit cannot run it). `local`: each
    local source's folder relative to where the config will be run; `saved_dtypes`: the
    dtypes of the output's floating-point tensors; `chat_template`: the output's template text."""
    if not exportable(res, name):
        return None
    step = res.recipe.steps[name]

    def ref(model: str) -> str | dict[str, Any]:
        src = res.recipe.sources[model]
        if src.hf:
            return f"{src.hf}@{res.sources[model].locked.pin.commit or src.revision}"
        return local_ref(local[model])

    config: dict[str, Any] = {"merge_method": step.method}
    if donor := step.base or step.config:  # mergekit's base_model is also where the config comes from
        config["base_model"] = ref(donor)
    if step.inputs:
        config["models"] = [_with_params({"model": ref(i.model)}, i.params) for i in step.inputs]
    else:
        config["slices"] = []
        for sl in step.slices:
            sources = [_with_params({"model": ref(x.model), "layer_range": [*x.layers]}, x.params) for x in sl.sources]
            config["slices"].append(_with_params({"sources": sources}, sl.params))
    _with_params(config, step.params)
    if step.dtype != "auto":  # a compute dtype of "auto" (the inputs' own) is mergekit's default: no key
        config["dtype"] = step.dtype
    out_dtype = step.out_dtype or (saved_dtypes[0] if len(saved_dtypes) == 1 else None)
    if out_dtype:
        config["out_dtype"] = out_dtype
    source = _tokenizer_source(step, ref)
    if step.tokens or step.pad_to_multiple_of:
        block: dict[str, Any] = {"source": source or ref(step.tokenizer_model)}
        if step.tokens:
            block["tokens"] = {t.token: _token(t, ref) for t in step.tokens}
        if step.pad_to_multiple_of:
            block["pad_to_multiple_of"] = step.pad_to_multiple_of
        config["tokenizer"] = block
    elif source:
        config["tokenizer_source"] = source
    if step.chat_template is not None and chat_template is not None:
        config["chat_template"] = chat_template
    return config


def mergekit_yaml(
    res: Resolution,
    name: str,
    *,
    local: Mapping[str, str],
    saved_dtypes: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> str | None:
    """`mergekit_config` as the text of `mergekit_config.yml`, with a header saying what it is."""
    config = mergekit_config(res, name, local=local, saved_dtypes=saved_dtypes, chat_template=chat_template)
    if config is None:
        return None
    step = res.recipe.steps[name]
    head = [
        f"# Written by mergepkg {__version__}: step `{name}` of {res.recipe.path.name} (package {res.recipe.name} "
        f"{res.recipe.version}) as a mergekit config.",
        f"# Run it from this folder: mergekit-yaml {MERGEKIT_FILE} OUTPUT_FOLDER",
    ]
    if METHODS[step.method].random:
        head.append(
            f"# {step.method} is random: mergekit draws its masks differently (the same settings, other masks)."
        )
    if len(saved_dtypes) > 1 and "out_dtype" not in config and "dtype" in config:
        head.append(
            f"# mergekit saves every tensor in {config['dtype']}; this output saved each in its base tensor's dtype "
            f"({', '.join(saved_dtypes)}): the same values, rounded to those."
        )
    return "\n".join(head) + "\n" + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def local_ref(path: str) -> str | dict[str, Any]:
    """A local folder as a mergekit model reference: its path, or, where the path holds
    `+` or `@`, which mergekit reads in a plain string as `MODEL+LORA` and `MODEL@REVISION`,
    the explicit form `{model: {path: ...}}` it takes as the path alone."""
    path = path.replace("\\", "/")
    path = path if path.startswith(("/", "../")) else f"./{path}"
    return {"model": {"path": path}} if "+" in path or "@" in path else path


def _tokenizer_source(step: Step, ref: Any) -> str | dict[str, Any] | None:
    """mergekit's `tokenizer_source` for the step's tokenizer setting (None: mergekit's default
    gives the same tokenizer: the base's)."""
    if step.tokenizer is None:
        return None if step.base else ref(step.tokenizer_model)
    if step.tokenizer == "base" and step.base:
        return "base"
    return ref(step.tokenizer_model)


def _token(t: TokenSource, ref: Any) -> dict[str, Any]:
    if t.model is None:
        source: Any = {"kind": "zero"}
    elif t.from_token is not None:
        source = {"kind": "model_token", "model": ref(t.model), "token": t.from_token}
    elif t.from_id is not None:
        source = {"kind": "model_token", "model": ref(t.model), "token_id": t.from_id}
    else:
        source = ref(t.model)
    return {"source": source, **({"force": True} if t.force else {})}


def _with_params(entry: dict[str, Any], params: Params) -> dict[str, Any]:
    if params:
        entry["parameters"] = {k: _setting(v) for k, v in params.items()}
    return entry


def _setting(value: Any) -> Any:
    """A parameter setting as mergekit writes it: a value, a gradient (list) or conditions."""
    if isinstance(value, tuple) and value and isinstance(value[0], Condition):
        return [{**({"filter": c.filter} if c.filter is not None else {}), "value": _setting(c.value)} for c in value]
    if isinstance(value, tuple):
        return list(value)
    return value


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (chat templates) as literal blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)
