"""Small helpers shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (any number of safetensors shards)."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def build_one(recipe_path: Path, out: Path, **kw) -> dict[str, torch.Tensor]:
    from mergepkg.build import build
    from mergepkg.parse import load_recipe
    from mergepkg.settings import Settings

    recipe = load_recipe(recipe_path)
    folders = build(recipe, out, Settings(), **kw)
    (folder,) = folders.values() if len(folders) == 1 else (out,)
    return load_tensors(folder)
