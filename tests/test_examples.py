"""Every recipe shipped in recipes/ builds against its committed lock (so the lock is
current and the build reproduces the locked digests), and transformers loads every output."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_recipe, llama_cpp_tree

from mergepkg.recipe.parse import load_recipe

pytestmark = pytest.mark.slow  # builds every shipped recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


def test_there_are_examples():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_example_recipe_builds_and_loads(path, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(path)
    converter = {"llama_cpp": llama_cpp_tree()} if recipe.exports else {}  # demo-gguf: llama.cpp's converter
    outputs = build_recipe(path, tmp_path / "out", mode="locked", **converter).outputs
    assert list(outputs) == list(recipe.outputs)
    for folder in outputs.values():
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.num_hidden_layers > 0
