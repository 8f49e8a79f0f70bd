"""LoRA adapters: `base+adapter` wherever a recipe names a model.

An adapter is a source like any other (`{ hf = "org/adapter" }` or `{ path = "..." }`,
a PEFT folder with adapter_config.json); what makes it an adapter is being named after
a `+`. `"base+ad"` is the model `base` (a source or a step) with the adapter `ad`
applied, as peft's `merge_and_unload` applies it. Each such reference becomes one
implicit step named as written (`"base+ad"`: no step or source name holds a `+`), of
method `lora`, base `base` and the adapter as its one input, so the plan, the keys,
the store and the lock treat it like any step. Its key holds only the base's and the
adapter's identities and the engine version (`resolve/keys.py`), so every recipe that
applies the same adapter to the same base shares one artifact. `"a+x+y"` applies `x`,
then `y`.

Checked here, at the line of the reference: an adapter is a hub or folder source (not a
step or another recipe's step); a source is an adapter or a model, not both; and a
folder that holds an adapter (adapter_config.json, no config.json) named where a model
is expected says so. What needs the adapter's files is checked when it is pinned
(`resolve/sources.py`) and laid out (`layout/lora.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mergepkg.errors import SourceError
from mergepkg.io.folder import ADAPTER_CONFIG, is_adapter_folder
from mergepkg.recipe.model import LORA, InputRef, Source, Step
from mergepkg.recipe.tables import TableReader

SEP = "+"


def applied_name(base: str, adapter: str) -> str:
    """The name of the model `base` with `adapter` applied: the implicit step's name."""
    return f"{base}{SEP}{adapter}"


def adapter_steps(reader: TableReader, sources: Mapping[str, Source]) -> dict[str, Step]:
    """The implicit steps of the `base+adapter` references `reader` met (each once, in the
    order first met), after checking every reference to an adapter."""
    steps: dict[str, Step] = {}
    adapters: dict[str, str] = {}  # adapter source -> the first reference that applies it
    for ref, key in reader.refs.items():
        if SEP not in ref:
            continue
        applied, *names = ref.split(SEP)
        for name in names:
            src = sources.get(name)
            if src is None:
                raise reader.error(
                    key,
                    f"{name!r} in {ref!r} is a step; only a source can be a LoRA adapter",
                    '"base+adapter" applies an adapter source to a model: declare the adapter under '
                    '[sources] ({ hf = "org/adapter" } or { path = "./adapter" })',
                )
            if src.hf is None and src.path is None:
                raise reader.error(
                    key,
                    f"{name!r} in {ref!r} is a step of another recipe; only a Hugging Face repo "
                    "or a folder can be a LoRA adapter",
                    'declare the adapter as { hf = "org/adapter" } or { path = "./adapter" }',
                )
            adapters.setdefault(name, ref)
            step = applied_name(applied, name)
            # float32, as peft upcasts a half-precision adapter; each tensor keeps the base's dtype
            steps.setdefault(step, Step(name=step, method=LORA, base=applied, inputs=(InputRef(name),)))
            applied = step
    for ref, key in reader.refs.items():
        if SEP in ref:
            continue
        if ref in adapters:
            raise reader.error(
                key,
                f"{ref!r} is a LoRA adapter (applied in {adapters[ref]!r}), not a model",
                f'an adapter is applied to a model, not merged as one: name "{adapters[ref]}" here',
            )
        src = sources.get(ref)
        if src is not None and src.path is not None and is_adapter_folder(src.path):
            raise reader.error(key, *adapter_not_model(ref, src), cls=SourceError)
    return steps


def adapter_not_model(name: str, src: Source) -> tuple[str, str]:
    """(message, hint) for the adapter folder of source `name` named where a model is expected."""
    assert src.path is not None
    return (
        f"{name!r} is a PEFT LoRA adapter ({src.path} has {ADAPTER_CONFIG} and no config.json), not a model",
        f'apply it to its base model: "BASE+{name}", BASE a source of {trained_on(src.path)}',
    )


def trained_on(folder: Path) -> str:
    """The model an adapter folder says it was trained on (its `base_model_name_or_path`)."""
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError, RecursionError):
        base = None
    return f"the model it was trained on ({base})" if isinstance(base, str) and base else "the model it was trained on"
