"""Lay out steps: read what is known of each model (config and headers), then describe
every step's output in plan order; a step not yet built is described to the steps
after it by its own layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from mergepkg.errors import SourceError
from mergepkg.io.folder import ADAPTER_CONFIG, is_adapter_folder
from mergepkg.io.tensors import scan_tensors
from mergepkg.layout.chat import output_template
from mergepkg.layout.dense import DenseLayout
from mergepkg.layout.lora import adapter_layout, read_adapter_info
from mergepkg.layout.moe import MoeLayout
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.recipe.model import Recipe, Step


def read_model_info(folder: Path) -> ModelInfo:
    """A model folder's config and tensor headers (its tokenizer.json is read when a step needs it)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        if is_adapter_folder(folder):
            raise SourceError(
                f"a PEFT LoRA adapter ({ADAPTER_CONFIG}), not a model folder",
                file=folder,
                hint='apply it to its base model: write "BASE+ADAPTER" where the model is used',
            ) from None
        raise SourceError("model folder has no config.json", file=folder) from None
    except (OSError, ValueError, RecursionError) as e:
        raise SourceError(f"cannot read config.json: {e}", file=folder) from None
    if not isinstance(config, dict):
        raise SourceError(
            "config.json is not a JSON object",
            file=folder,
            hint="a model's config.json is the object transformers' save_pretrained writes",
        )
    return ModelInfo(config, scan_tensors(folder), folder)


def step_layout(recipe: Recipe, step: Step, infos: Mapping[str, ModelInfo]) -> StepLayout:
    """What `step` writes, given what is known of each model it reads."""
    if step.moe is not None:  # experts and routers: its own tensors and config
        layout = MoeLayout(recipe, step, dict(infos)).layout()
    elif step.adapter is not None:  # an implicit `base+adapter` step: the base, the adapter applied
        layout = adapter_layout(recipe, step, dict(infos))
    else:
        layout = DenseLayout(recipe, step, dict(infos)).layout()
    return replace(layout, chat_template=output_template(step, infos, recipe.written(step.name)))


def lay_out(
    recipe: Recipe, order: Iterable[str], folders: Mapping[str, Path]
) -> tuple[dict[str, StepLayout], dict[str, ModelInfo]]:
    """The layouts of the steps in `order` (dependencies first) and what is known of
    every model. `folders` holds the sources and any step already built (read from its
    files); the other steps are described by their own layouts. LoRA adapters are read as
    adapters (`layout/lora.py`)."""
    adapters = recipe.adapters
    infos = {
        name: (read_adapter_info if name in adapters else read_model_info)(folder) for name, folder in folders.items()
    }
    out = {}
    for name in order:
        out[name] = step_layout(recipe, recipe.steps[name], infos)
        if name not in infos:
            infos[name] = out[name].info
    return out, infos
