"""The DAG: stable order, cycles named, only what the outputs need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mergepkg.errors import CycleError
from mergepkg.recipe.parse import load_recipe
from mergepkg.recipe.plan import make_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "recipes" / "example.toml"


def test_dependency_order_follows_recipe_order_where_free(recipe_file):
    r = load_recipe(
        recipe_file(
            """
        [steps.final]
        method = "linear"
        inputs = [{ model = "left", weight = 1 }, { model = "right", weight = 1 }]
        [steps.right]
        method = "passthrough"
        inputs = ["ft2"]
        [steps.left]
        method = "passthrough"
        inputs = ["ft1"]
        [steps.unused]
        method = "passthrough"
        inputs = ["ft3"]
        [package_outputs_marker]
    """.replace("[package_outputs_marker]", "")
        )
    )
    plan = make_plan(r, ("final",))
    assert plan.order == ("right", "left", "final")
    assert plan.sources_used() == ["ft1", "ft2"]


def test_cycle_is_named(recipe_file):
    path = recipe_file("""
        [steps.a]
        method = "passthrough"
        inputs = ["b"]
        [steps.b]
        method = "linear"
        inputs = [{ model = "a", weight = 1 }, { model = "ft1", weight = 1 }]
        [steps.out]
        method = "passthrough"
        inputs = ["ft1"]
    """)
    with pytest.raises(CycleError) as info:
        make_plan(load_recipe(path))
    assert info.value.cycle == ["a", "b"]
    assert "a -> b -> a" in str(info.value)
    assert info.value.key == "steps.a" and info.value.line is not None


def test_tied_and_untied_models_name_the_setting(tmp_path, models, write_recipe):
    """One model ties its head to its embeddings (no lm_head.weight), the other does not:
    the error says so rather than only naming the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mergepkg.errors import ModelMismatchError
    from mergepkg.layout.steps import lay_out
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.resolve.resolution import resolve
    from mergepkg.store.session import Session

    tied = tmp_path / "tied"
    shutil.copytree(models["ft1"], tied)
    tensors = load_file(tied / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tied / "model.safetensors", metadata={"format": "pt"})
    for inputs in (
        '[{ model = "tied", weight = 1.0 }, { model = "ft2", weight = 1.0 }]',
        '[{ model = "ft2", weight = 1.0 }, { model = "tied", weight = 1.0 }]',
    ):
        path = write_recipe(
            f'[sources.tied]\npath = "{tied}"\n[steps.m]\nmethod = "linear"\ninputs = {inputs}\n',
            name=f"r{len(inputs) % 7}.toml",
        )
        res = resolve(load_recipe(path), Session())
        with pytest.raises(ModelMismatchError, match="'tied' ties its output head to its input embeddings"):
            lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})


@pytest.mark.slow
def test_networkx_is_imported_by_the_first_plan_made_not_before():
    """Commands that make no plan (registry, cache, remote) do not pay for networkx."""
    probe = (
        "import sys\n"
        "from mergepkg.recipe.plan import make_plan\n"
        "from mergepkg.recipe.parse import load_recipe\n"
        "before = 'networkx.classes' in sys.modules\n"
        f"make_plan(load_recipe({str(EXAMPLE)!r}))\n"
        "print(before, 'networkx.classes' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "True"]
