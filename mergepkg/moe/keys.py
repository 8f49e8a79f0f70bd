"""The part of an `moe` step's lock entry (and so its key) that other steps do not have.

Everything that changes the output's bytes is in it: each expert's identity in order,
`experts_per_token` (in config.json), the gate mode, and, in the prompt-based modes,
every prompt in order (float sums depend on it); in `random` mode the recipe seed
instead of the prompts, which that mode never reads. `allow_base_expert` changes no
byte and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergepkg.errors import RecipeError
from mergepkg.locate import locate
from mergepkg.methods.moe import PROMPTED
from mergepkg.recipe import Expert, MoE, Recipe, Step


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
    origin = step.origin
    file, text, name = (origin.path, origin.text, origin.name) if origin else (recipe.path, recipe.text, step.name)
    for i, e in enumerate(step.moe.experts):
        key = f"steps.{name}.experts[{i}]"
        same = refs[e.model] == refs[step.base]
        if same and not e.allow_base_expert:
            alias = "" if e.model == step.base else f" ({step.base!r} under another name)"
            raise RecipeError(f"expert {e.model!r} is the base model itself{alias}", file=file,
                              line=locate(text, f"{key}.model"), key=f"{key}.model",
                              hint="its MLP would be the base's own; if that is what you want, "
                                   "set allow_base_expert = true on this expert")
        if e.allow_base_expert and not same:
            raise RecipeError(f"allow_base_expert is set but {e.model!r} is not the base", file=file,
                              line=locate(text, f"{key}.allow_base_expert"), key=f"{key}.allow_base_expert",
                              hint="remove allow_base_expert")
