"""Step lock entries and keys.

The lock entry is the cache key: `step_entry` builds the one canonical description of
what a step computes, and `key_of` is its sha256. The entry names no step or source
(renaming changes nothing), holds parameters in their effective form (writing a
default out changes nothing; changing any number changes the key), and refers to its
inputs by their pins or upstream keys (so a change propagates downstream).

An `moe` step's entry has a part of its own (`moe_entry`): everything that changes the
output's bytes is in it: each expert's identity in order, `experts_per_token` (in
config.json), the gate mode, and, in the prompt-based modes, every prompt in order
(float sums depend on it); in `random` mode the recipe seed instead of the prompts,
which that mode never reads. `allow_base_expert` changes no byte and is left out.

Settings added after the first keys (`tokenizer.tokens`, `pad_to_multiple_of`,
`chat_template`) join the entry only when a step sets them, so every other step keeps
its key. So does `config`: the version of the config.json that steps of stacked layers
(`slices`) and of `dtype = "auto"` write, where it changed (layout/configs.py), and of a
union's vocabulary (layout/vocab.py).

The implicit step of a `base+adapter` reference (recipe/adapters.py) has an entry of its
own (`adapter_entry`): the base's identity, the adapter's (its pin: commit and file
hashes) and the versions, nothing of the recipe, so every recipe that applies the same
adapter to the same base has the same key and shares one artifact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergepkg._version import ENGINE_VERSION
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import RecipeError
from mergepkg.methods import get_method
from mergepkg.methods.lora import SPEC as LORA_SPEC
from mergepkg.methods.moe import PROMPTED
from mergepkg.methods.spec import Param
from mergepkg.recipe.chat import AUTO, builtin_template, template_kind
from mergepkg.recipe.model import Condition, Expert, MoE, Params, Recipe, Step
from mergepkg.recipe.tables import AUTO as AUTO_DTYPE

HASH_VERSION = 1  # bump whenever step_entry's shape or meaning changes
# the rules for the config.json (and head) a step writes, in the entries of the steps whose output
# they changed, so every other step keeps its key: 2, the per-layer settings of stacked layers and
# the dtype "auto" names (layout/configs.py); 3, the head and its tying of stacked layers
# (layout/dense.py) and special token ids whose token the output's vocabulary lacks (layout/align.py);
# 4, GPT-2's unprefixed embeddings (`wte.weight`) from the first slice, GPT-NeoX's head (`embed_out`)
# from the last (layout/types.py `is_pre`); 5, a union's vocabulary without the other models' tokens
# its BPE base reaches without a merge (layout/vocab.py `reached_unmerged`)
CONFIG_VERSION = 5


def key_of(entry: Mapping) -> str:
    return sha256_hex(canonical_json(entry))


def _value(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, tuple):
        return [float(x) for x in v]
    return float(v)


def effective(p: Param, chain: Sequence[Params]) -> Any:
    """The setting a tensor sees for `p`, normalised: the scopes' settings, highest first,
    concatenated as one first-match-wins list of conditions, cut after the first that
    matches everything, with the default as the final catch-all. A single catch-all
    collapses to its value, so `density = 1.0` written out equals the default."""
    conds: list[tuple[str | None, Any]] = []
    for scope in chain:
        if p.name not in scope:
            continue
        setting = scope[p.name]
        if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
            conds += [(c.filter, c.value) for c in setting]
        else:
            conds.append((None, setting))
    if not p.required:
        conds.append((None, p.default))
    for i, (flt, _) in enumerate(conds):
        if flt is None:
            conds = conds[: i + 1]
            break
    if len(conds) == 1 and conds[0][0] is None:
        return _value(conds[0][1])
    return [{"filter": flt, "value": _value(v)} for flt, v in conds]


def step_entry(step: Step, refs: Mapping[str, Any], seed: int) -> dict:
    """The canonical lock entry of `step`; `refs` maps each model name it reads to that
    model's identity (a source pin digest or an upstream step key)."""
    if step.adapter is not None:
        return adapter_entry(step, refs)
    spec = get_method(step.method)
    shared = [p for p in spec.params if not p.per_input]
    per_input = [p for p in spec.params if p.per_input]

    def model(name: str, own: Params, outer: Sequence[Params]) -> dict:
        entry = {"ref": refs[name]}
        if name != step.base:
            entry["params"] = {p.name: effective(p, [own, *outer]) for p in per_input}
        return entry

    entry: dict[str, Any] = {
        "hash_version": HASH_VERSION,
        "engine": ENGINE_VERSION,
        "method": spec.name,
        "method_version": spec.version,
        "base": refs[step.base] if step.base else None,
        "dtype": step.dtype,
        "out_dtype": step.out_dtype,
        "tokenizer": "union" if step.tokenizer_union else refs[step.tokenizer_model],
        "seed": seed if spec.random else None,  # deterministic methods ignore the seed
    }
    if step.moe is not None:
        entry.update(moe_entry(step.moe, refs, seed))
    elif step.inputs:
        entry["params"] = {p.name: effective(p, [step.params]) for p in shared}
        entry["inputs"] = [model(i.model, i.params, [step.params]) for i in step.inputs]
    else:
        entry["slices"] = [
            {
                "params": {p.name: effective(p, [sl.params, step.params]) for p in shared},
                "sources": [
                    dict(model(s.model, s.params, [sl.params, step.params]), layers=list(s.layers)) for s in sl.sources
                ],
            }
            for sl in step.slices
        ]
    if step.pad_to_multiple_of:  # tokenizer settings join the entry only when set: older keys stay
        entry["pad_to_multiple_of"] = step.pad_to_multiple_of
    if step.tokens:
        entry["tokens"] = [
            {
                "token": t.token,
                "source": refs[t.model] if t.model else "zero",
                "from_token": t.from_token,
                "from_id": t.from_id,
                "force": t.force,
            }
            for t in sorted(step.tokens, key=lambda t: t.token)
        ]
    if step.chat_template is not None:  # only when set, as the tokenizer settings: older keys stay
        entry["chat_template"] = chat_template_entry(step, refs)
    if step.config is not None:  # only when set: older keys stay
        entry["config_model"] = refs[step.config]
    version = config_version(step)
    if version is not None:
        entry["config"] = version  # their config.json changed: not the old outputs
    return entry


def config_version(step: Step) -> int | None:
    """The version of the config rules (CONFIG_VERSION) that changed `step`'s output, or
    None where none did."""
    other_vocabulary = step.tokenizer_model != step.models[0]  # the config's model is the first (the base)
    if step.tokenizer_union:
        return CONFIG_VERSION
    if step.slices:
        return 4  # version 5 changed unions only: these keep their keys
    if other_vocabulary:
        return 3  # versions 4 and 5 changed stacked layers and unions only: these keep their keys
    if step.dtype == AUTO_DTYPE and step.out_dtype is None:
        return 2
    return None


def adapter_entry(step: Step, refs: Mapping[str, Any]) -> dict:
    """The entry of an implicit `base+adapter` step: the two identities and the versions only."""
    assert step.base is not None and step.adapter is not None
    return {
        "hash_version": HASH_VERSION,
        "engine": ENGINE_VERSION,
        "method": LORA_SPEC.name,
        "method_version": LORA_SPEC.version,
        "base": refs[step.base],
        "adapter": refs[step.adapter],
    }


def chat_template_entry(step: Step, refs: Mapping[str, Any]) -> Any:
    """What decides the output's chat template: the text (a built-in's text, so naming it and
    writing it out are one key), the identity of the model it comes from, or "auto" (the
    models, in their order, are in the entry already)."""
    assert step.chat_template is not None
    kind = template_kind(step.chat_template, step.models)
    if kind == "model":
        return {"model": refs[step.chat_template]}
    if kind == "auto":
        return AUTO
    text = builtin_template(step.chat_template) if kind == "builtin" else step.chat_template
    return {"text": text}


def moe_entry(moe: MoE, refs: Mapping[str, Any], seed: int) -> dict:
    prompted = moe.gate_mode in PROMPTED

    def expert(e: Expert) -> dict:
        entry: dict[str, Any] = {"ref": refs[e.model]}
        if prompted:
            entry["prompts"] = list(e.prompts)
            entry["negative_prompts"] = list(e.negative_prompts)
        return entry

    return {
        "seed": None if prompted else seed,
        "moe": {
            "experts": [expert(e) for e in moe.experts],
            "experts_per_token": moe.experts_per_token,
            "gate_mode": moe.gate_mode,
            "shared_expert": expert(moe.shared_expert) if moe.shared_expert else None,
        },
    }


def check_experts(recipe: Recipe, step: Step, refs: Mapping[str, Any]) -> None:
    """An expert that is the base, by name or by identity (the same folder or commit under
    another name, the same upstream step), needs `allow_base_expert = true`, and only
    such an expert may set it."""
    assert step.moe is not None and step.base is not None
    written = recipe.written(step.name)
    for i, e in enumerate(step.moe.experts):
        key = f"{written.key}.experts[{i}]"
        same = refs[e.model] == refs[step.base]
        if same and not e.allow_base_expert:
            alias = "" if e.model == step.base else f" ({step.base!r} under another name)"
            raise written.error(
                RecipeError,
                f"{key}.model",
                f"expert {e.model!r} is the base model itself{alias}",
                "its MLP would be the base's own; if that is what you want, "
                "set allow_base_expert = true on this expert",
            )
        if e.allow_base_expert and not same:
            raise written.error(
                RecipeError,
                f"{key}.allow_base_expert",
                f"allow_base_expert is set but {e.model!r} is not the base",
                "remove allow_base_expert",
            )
