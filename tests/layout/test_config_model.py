"""A step's `config`: the model whose config.json, side files and (by default) tokenizer
the output takes, for methods without a base (mergekit's `base_model` there)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import build_one, load_tensors

from mergepkg.errors import RecipeError
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

STACK = """
[steps.stack]
method = "passthrough"
slices = [{ sources = [{ model = "ft1", layers = [0, 2] }] }, { sources = [{ model = "ft2", layers = [2, 4] }] }]
"""


def test_it_is_read_first_and_keyed_only_when_set(recipe_file):
    recipe = load_recipe(recipe_file(STACK + 'config = "base"\n'))
    step = recipe.steps["stack"]
    assert step.config == "base" and step.models == ("base", "ft1", "ft2") and step.tokenizer_model == "base"
    with_config = resolve(recipe, Session()).entries["stack"]
    without = resolve(load_recipe(recipe_file(STACK)), Session()).entries["stack"]
    assert "config_model" in with_config and "config_model" not in without
    assert with_config["config_model"] != with_config["slices"][0]["sources"][0]["ref"]  # base's identity, not ft1's


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('config = "nope"', "no source or step named 'nope'"),
        ('config = "stack"', "cannot take its config from itself"),
    ],
)
def test_bad_settings_are_located(recipe_file, extra, message):
    path = recipe_file(STACK + extra + "\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert e.value.key == "steps.stack.config" and message in e.value.message


def test_a_step_with_a_base_takes_the_base_s_config(recipe_file):
    body = '[steps.t]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1.0 }]\n'
    assert load_recipe(recipe_file(body + 'config = "base"\n')).steps["t"].config == "base"
    with pytest.raises(RecipeError, match="is the base's"):
        load_recipe(recipe_file(body + 'config = "ft2"\n'))


def test_the_output_takes_the_config_side_files_and_tokenizer_of_that_model(models, write_recipe, tmp_path):
    """As mergekit takes them from base_model: the donor is read, not merged."""
    donor = shutil.copytree(models["base"], tmp_path / "donor")
    config = json.loads((donor / "config.json").read_text())
    config.update(max_position_embeddings=256, rope_theta=5000.0)
    (donor / "config.json").write_text(json.dumps(config))
    (donor / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "top_k": 7}))
    (donor / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    path = write_recipe(
        STACK.replace("[steps.stack]", f'[sources.donor]\npath = "{donor}"\n\n[steps.stack]') + 'config = "donor"\n'
    )
    out = tmp_path / "out"
    tensors = build_one(path, out)
    written = json.loads((out / "config.json").read_text())
    assert written["max_position_embeddings"] == 256 and written["rope_theta"] == 5000.0
    assert written["num_hidden_layers"] == 4
    assert json.loads((out / "generation_config.json").read_text())["top_k"] == 7
    assert (out / "chat_template.jinja").read_text() == (donor / "chat_template.jinja").read_text()
    ft1 = load_tensors(models["ft1"])
    assert tensors["model.embed_tokens.weight"].equal(ft1["model.embed_tokens.weight"])  # not the donor's

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
