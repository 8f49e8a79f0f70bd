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

from mergepkg.methods.moe import PROMPTED
from mergepkg.recipe import MoE, Expert


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
