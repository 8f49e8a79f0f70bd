"""Keys for `[exports.NAME]`: each export keyed over its step's key, type, converter and
the metadata the converter is given (export/gguf.py), with the digest the lock holds
for that key.

Only the commands that make exports need llama.cpp's converter (`how="converter"`). The
others key exports with the converter the lock names (its code digest is in the lock),
so `push`, `validate`, `plan`, `lock` and the rest run where no converter is set, and an
update of the converter's tree changes what `build` makes, not what they compare:
`how="locked"` keeps the lock's entry of an export whose step is keyed as locked (and
re-keys the others with the lock's converter); `how="current"` keys every export again,
with the converter when one is set (what a build would make), else with the lock's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mergepkg.errors import ExportError
from mergepkg.export.gguf import Converter, export_entry, export_key, find_converter, identity_digest, model_metadata
from mergepkg.lockfile import Lock, LockedExport
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.plan import Plan

How = Literal["converter", "current", "locked"]
CARD_TAGS = ("merge", "mergepkg")  # every model card's own tags


def key_exports(
    recipe: Recipe,
    plan: Plan,
    keys: Mapping[str, str],
    lock: Lock | None,
    *,
    llama_cpp: Path | None = None,
    how: How = "converter",
) -> tuple[Converter | None, dict[str, LockedExport], dict[str, dict]]:
    """The converter (None unless `how` finds one), each export whose step is planned
    (`keys`) keyed, and their entries (what each key hashes). An export of a step left
    out of the plan keeps the lock's entry as it is; one that cannot be keyed here (no
    converter, and none in the lock for it) is left out."""
    converter = None
    if how == "converter" or (how == "current" and llama_cpp is not None):
        try:
            converter = find_converter(llama_cpp)
        except ExportError as e:
            raise recipe.locate(e, f"exports.{next(iter(recipe.exports))}") from None
    locked = lock.exports if lock else {}
    locked_steps = lock.steps if lock else {}
    exports, entries = {}, {}
    for name, export in recipe.exports.items():
        old = locked.get(name)
        if old is not None and (old.step, old.format, old.type) != (export.step, export.format, export.type):
            old = None  # the recipe declares it otherwise now
        if export.step not in keys:
            if name in locked:
                exports[name] = locked[name]
            continue
        step_locked = (s := locked_steps.get(export.step)) is not None and s.key == keys[export.step]
        if converter is None and old is not None and how == "locked" and step_locked:
            exports[name] = old  # as locked: nothing it is made from changed here
            continue
        if converter is not None:
            digest, identity = converter.digest, converter.identity
        elif old is not None:
            digest, identity = identity_digest(old.converter), old.converter
        else:
            continue  # no converter set, and the lock has never keyed it
        try:
            entry = export_entry(export, keys[export.step], digest, gguf_metadata(recipe, plan, export.step))
        except ExportError as e:  # a quantized type without llama-cpp-python
            if converter is None and old is not None:
                exports[name] = old
                continue
            raise recipe.locate(e, f"exports.{name}.type") from None
        key = export_key(entry)
        digest_held = old.digest if old is not None and old.key == key else None
        exports[name] = LockedExport(name, export.step, export.format, export.type, identity, key, digest_held)
        entries[name] = entry
    return converter, exports, entries


def gguf_metadata(recipe: Recipe, plan: Plan, step: str) -> dict[str, Any]:
    """The metadata the converter takes from the placed output folder of `step`: its
    name (a recipe's one output is placed as `out/<package>`, one of several as
    `out/<package>/<step>`; a step that is no output by its own name) and the model
    card's `base_model` and `tags`, as builder/card.py's front matter has them."""
    name = recipe.name if recipe.outputs == (step,) else step.rpartition("::")[2]
    return model_metadata(name, card_bases(recipe, plan, step), card_tags(recipe, step))


def card_bases(recipe: Recipe, plan: Plan, step: str) -> list[str]:
    """The Hugging Face repos `step` is merged from (through the steps it reads), each once:
    the model card's `base_model`, and the GGUF's."""
    upstream = plan.upstream(step)
    return list(dict.fromkeys(hf for s in plan.sources_used() if s in upstream and (hf := recipe.sources[s].hf)))


def card_tags(recipe: Recipe, step: str) -> list[str]:
    """The model card's tags (and the GGUF's), each once."""
    return list(dict.fromkeys([*CARD_TAGS, *(["moe"] if recipe.steps[step].moe else []), *recipe.tags]))
