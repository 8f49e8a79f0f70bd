"""A mergekit-moe config (`base_model`, `experts`, `gate_mode`, ...) as an `moe` step.

mergekit-moe reads its own format (mergekit/moe/config.py); a document with `experts`
and no `merge_method` is one. Its parts map one to one onto the `moe` step
(docs/moe.md): `source_model` -> `model`, `positive_prompts` -> `prompts`,
`negative_prompts`, `experts_per_token` and `gate_mode` -> `params`, one
`shared_experts` entry -> `shared_expert`. What mergekit-moe refuses (in every gate
mode but `random`: an expert without prompts, all experts prompted alike, all experts
one model; fewer experts than experts_per_token) is refused here at its key; its
per-expert noise and residual scaling are refused as not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.importers.mergekit.context import Context, Step
from mergepkg.importers.mergekit.refs import Refs
from mergepkg.methods.moe import GATE_MODES, PROMPTED
from mergepkg.recipe.tables import show

# keys that only a mergekit-moe config has: how a document is recognised as one
MOE_KEYS = ("experts", "gate_mode", "experts_per_token", "shared_experts")
CONFIG_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")
# mergekit-moe's gate modes -> the step's: `hidden_last` is another name of `hidden`
MODES = {**{m: m for m in GATE_MODES}, "hidden_last": "hidden"}
# mergekit-moe's output architectures that mergepkg writes (chosen from the base's model type)
ARCHITECTURES = ("mixtral", "qwen")


def convert_moe(ctx: Context, refs: Refs, step: Step, data: dict, dtype: Callable[[Any, str], str | None]) -> None:
    """The mergekit-moe document `data` as the `moe` step `step`; `dtype` reads a dtype name."""
    step.method = "moe"
    ctx.only_keys(data, CONFIG_KEYS, "")
    if data.get("base_model") is None:
        raise ctx.error(
            "", "missing `base_model`", "mergekit-moe keeps the base model's attention, embeddings and tokenizer"
        )
    step.base = refs.model_ref(data["base_model"], "base_model")
    mode = _gate_mode(ctx, data.get("gate_mode"))
    per_token = _experts_per_token(ctx, data.get("experts_per_token"))
    raw = data.get("experts")
    if not isinstance(raw, list) or not raw:
        raise ctx.error("experts", "expected a list of { source_model: ..., positive_prompts: [...] }")
    experts = [_expert(ctx, refs, step, e, f"experts[{i}]", mode) for i, e in enumerate(raw)]
    if len(experts) < per_token:
        raise ctx.error(
            "experts_per_token" if "experts_per_token" in data else "experts",
            f"experts_per_token is {per_token} but the config has {len(experts)} expert(s)",
            "mergekit-moe refuses this too: list more experts or lower experts_per_token",
        )
    # mergekit-moe checks prompts in every gate mode but `random` (uniform_random too, though its routers read none)
    if mode != "random" and all(_said(r) == _said(raw[0]) for r in raw[1:]):  # one expert too, as mergekit-moe
        raise ctx.error(
            "experts",
            "a single expert: no other would ever be preferred"
            if len(raw) == 1
            else "every expert has the same prompts, so no expert would ever be preferred",
            "give each of several experts prompts for what should be routed to it (mergekit-moe refuses this too)",
        )
    if mode != "random" and all(e["model"] == experts[0]["model"] for e in experts):
        raise ctx.error(
            "experts",
            "every expert is the same model: the MoE would use more memory to give that model's output",
            "mergekit-moe refuses this too (unless told --i-understand-this-is-not-useful-without-training); "
            "to train it after merging, write the recipe's moe step by hand",
        )
    shared = data.get("shared_experts")
    if shared is not None and not isinstance(shared, list):
        raise ctx.error("shared_experts", f"expected a list with one expert, got {show(shared)}")
    if shared and len(shared) > 1:
        raise ctx.error(
            "shared_experts", f"expected one shared expert, got {len(shared)}", "mergekit-moe's Qwen2 output takes one"
        )
    architecture = data.get("architecture")
    if architecture is not None:
        if not isinstance(architecture, str) or architecture.lower() not in ARCHITECTURES:
            raise ctx.error(
                "architecture",
                f"output architecture {show(architecture)} is not supported",
                "mergepkg writes Mixtral (llama, mistral inputs) and Qwen2-MoE (qwen2 inputs)",
            )
        ctx.note("architecture: mergepkg picks the output architecture from the base's model type", "architecture")
    params: dict[str, Any] = {}
    if per_token != 2:
        params["experts_per_token"] = per_token
    if mode != "hidden":
        params["gate_mode"] = mode
    step.moe = {
        "experts": experts,
        "shared_expert": _expert(ctx, refs, step, shared[0], "shared_experts[0]", mode, shared=True)
        if shared
        else None,
        "params": params,
    }
    out = dtype(data.get("dtype"), "dtype")
    if mode == "hidden":
        step.dtype = "bfloat16"
        ctx.note("dtype = bfloat16: mergekit-moe runs the gate's forward pass in bfloat16", "gate_mode")
    if out is not None:
        step.out_dtype = out
    else:
        ctx.note(
            "no dtype: mergekit-moe writes every tensor in the base's config torch_dtype; the recipe keeps "
            "each tensor's stored dtype, the same when the base's files are in that dtype",
            "dtype",
        )


def _gate_mode(ctx: Context, value: Any) -> str:
    if value is None:
        return "hidden"
    if value == "hidden_avg":
        raise ctx.error(
            "gate_mode",
            "gate_mode 'hidden_avg' is not supported",
            "mergekit-moe averages over a left-padded batch, padding included; use hidden (the last token)",
        )
    if not isinstance(value, str) or value not in MODES:
        close = did_you_mean(str(value), list(MODES))
        raise ctx.error(
            "gate_mode",
            f"unknown gate_mode {show(value)}",
            close if close and close.startswith("did you mean") else "expected one of: " + ", ".join(MODES),
        )
    return MODES[value]


def _experts_per_token(ctx: Context, value: Any) -> int:
    if value is None:
        return 2
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pydantic's int takes 2.0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error("experts_per_token", f"expected a whole number >= 1, got {show(value)}")
    return value


def _expert(ctx: Context, refs: Refs, step: Step, raw: Any, key: str, mode: str, *, shared: bool = False) -> dict:
    """One expert as the step's `{ model, prompts, negative_prompts, allow_base_expert }`."""
    if not isinstance(raw, dict):
        raise ctx.error(key, f"expected {{ source_model: ..., positive_prompts: [...] }}, got {show(raw)}")
    ctx.only_keys(raw, EXPERT_KEYS, key)
    for k in ("noise_scale", "residual_scale"):
        if raw.get(k) is not None:
            raise ctx.error(
                f"{key}.{k}",
                f"{k} is not supported",
                "mergepkg's moe step copies each expert's MLP as it is"
                + (" (mergekit's noise is unseeded, so its bytes differ on every run)" if k == "noise_scale" else ""),
            )
    if raw.get("source_model") is None:
        raise ctx.error(key, "missing `source_model`")
    model = refs.model_ref(raw["source_model"], f"{key}.source_model")
    entry: dict[str, Any] = {"model": model}
    prompts = _prompt_list(ctx, raw.get("positive_prompts"), f"{key}.positive_prompts")
    negative = _prompt_list(ctx, raw.get("negative_prompts"), f"{key}.negative_prompts")
    if mode != "random" and not prompts:
        raise ctx.error(
            key,
            f"gate_mode {mode!r} needs positive_prompts for every expert",
            "mergekit-moe refuses this too: add prompts, or use gate_mode: random",
        )
    if mode == "random" and (prompts or negative):
        ctx.ignored(
            f"{key}.positive_prompts" if prompts else f"{key}.negative_prompts", f"gate_mode {mode} reads no prompts"
        )
    elif mode in PROMPTED and (prompts or negative):
        entry["prompts"] = prompts
        if negative:
            entry["negative_prompts"] = negative
    if model == step.base and not shared:
        entry["allow_base_expert"] = True
        ctx.note("allow_base_expert: this expert is the base model, which mergekit-moe allows", key)
    return entry


def _prompt_list(ctx: Context, value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ctx.error(key, f"expected a list of prompts (strings), got {show(value)}")
    return list(value)


def _said(raw: dict) -> tuple:
    """An expert's prompts as mergekit-moe compares them (checked lists by now)."""
    return tuple(raw.get("positive_prompts") or ()), tuple(raw.get("negative_prompts") or ())
