"""`base+adapter` references: the implicit steps they make and the located errors of
adapters named where they cannot be (recipe/adapters.py). Stub folders only: no torch."""

from __future__ import annotations

import textwrap

import pytest
from lora_adapters import stub_adapter

from mergepkg.errors import RecipeError, SourceError
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.model import LORA
from mergepkg.recipe.parse import load_recipe
from mergepkg.recipe.plan import make_plan

HEAD = '[package]\nname = "t"\nversion = "0.1.0"\n\n'


@pytest.fixture
def lora_recipe(tmp_path, stub_models):
    """lora_recipe(body) -> a recipe whose sources are base, ft1, ft2 (stub models) and ad,
    ad2 (stub LoRA adapters), and the line of each text of it."""
    stub_adapter(tmp_path / "ad")
    stub_adapter(tmp_path / "ad2", value=2.0)

    def write(body: str, name: str = "recipe.toml", extra_sources: str = ""):
        sources = "".join(f'{n} = {{ path = "{stub_models[n]}" }}\n' for n in ("base", "ft1", "ft2"))
        sources += 'ad = { path = "ad" }\nad2 = { path = "ad2" }\n' + extra_sources
        path = tmp_path / name
        path.write_text(HEAD + "[sources]\n" + sources + "\n" + textwrap.dedent(body))
        return path

    return write


def line(path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def test_a_plus_reference_is_one_implicit_step(lora_recipe):
    r = load_recipe(
        lora_recipe("""
        [steps.soup]
        method = "linear"
        inputs = [{ model = "base+ad", weight = 0.5 }, { model = "ft1", weight = 0.5 }]
        tokenizer = "base+ad"
        [steps.more]
        method = "task_arithmetic"
        base = "base"
        inputs = [{ model = "base+ad", weight = 1.0 }, { model = "soup", weight = 0.5 }]
    """)
    )
    step = r.steps["base+ad"]
    assert (step.method, step.base, step.adapter, step.dtype) == (LORA, "base", "ad", "float32")
    assert [s for s in r.steps if s.endswith("+ad")] == ["base+ad"]  # once, however often it is named
    assert r.adapters == {"ad"} and r.outputs == ("more",)
    assert r.steps["soup"].tokenizer == "base+ad"
    assert r.steps["soup"].adapter is None
    plan = make_plan(r)
    assert plan.order == ("base+ad", "soup", "more")
    assert set(plan.sources_used()) == {"base", "ft1", "ad"}


def test_adapters_apply_in_turn_and_to_steps(lora_recipe):
    r = load_recipe(
        lora_recipe("""
        [steps.soup]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]
        [steps.out]
        method = "linear"
        inputs = [{ model = "base+ad+ad2", weight = 1 }, { model = "soup+ad", weight = 1 }]
    """)
    )
    assert (r.steps["base+ad"].base, r.steps["base+ad"].adapter) == ("base", "ad")
    assert (r.steps["base+ad+ad2"].base, r.steps["base+ad+ad2"].adapter) == ("base+ad", "ad2")
    assert (r.steps["soup+ad"].base, r.steps["soup+ad"].adapter) == ("soup", "ad")
    assert make_plan(r).order.index("base+ad") < make_plan(r).order.index("base+ad+ad2")


@pytest.mark.parametrize(
    ("inputs", "message", "hint", "cls"),
    [
        ('"base+adx"', "no source or step named 'adx' (in 'base+adx')", "did you mean 'ad'", RecipeError),
        ('"base+"', "no source or step named ''", '"base+adapter"', RecipeError),
        (
            '"base+soup"',
            "'soup' in 'base+soup' is a step; only a source can be a LoRA adapter",
            "[sources]",
            RecipeError,
        ),
        ('"base+other"', "is a step of another recipe; only a Hugging Face repo or a folder", "hf =", RecipeError),
        ('"ad"', "'ad' is a LoRA adapter (applied in 'base+ad'), not a model", 'name "base+ad" here', RecipeError),
        ('"ad2"', "'ad2' is a PEFT LoRA adapter (", '"BASE+ad2", BASE a source of the model', SourceError),
    ],
)
def test_adapters_where_they_cannot_be(lora_recipe, tmp_path, inputs, message, hint, cls):
    other = tmp_path / "other.toml"
    other.write_text(HEAD + '[sources]\nb = { path = "ad" }\n[steps.s]\nmethod = "passthrough"\ninputs = ["b"]\n')
    path = lora_recipe(
        f"""
        [steps.soup]
        method = "linear"
        inputs = [{{ model = "ft1", weight = 1 }}, {{ model = "ft2", weight = 1 }}]
        [steps.uses]
        method = "linear"
        inputs = [{{ model = "base+ad", weight = 1 }}, {{ model = {inputs}, weight = 1 }}]
    """,
        extra_sources='other = { recipe = "other.toml", step = "s" }\n',
    )
    with pytest.raises(cls) as info:
        load_recipe(path)
    e = info.value
    assert message in e.message and hint in (e.hint or ""), (e.message, e.hint)
    assert (e.key, e.line) == ("steps.uses.inputs[1].model", line(path, f"model = {inputs}"))


def test_a_bare_adapter_folder_as_a_base_names_its_base_model(lora_recipe):
    path = lora_recipe("""
        [steps.s]
        method = "task_arithmetic"
        base = "ad"
        inputs = [{ model = "ft1", weight = 1 }]
    """)
    with pytest.raises(SourceError) as info:
        load_recipe(path)
    e = info.value
    assert "'ad' is a PEFT LoRA adapter" in e.message and "adapter_config.json and no config.json" in e.message
    assert e.hint == 'apply it to its base model: "BASE+ad", BASE a source of the model it was trained on (tiny/base)'
    assert (e.key, e.line) == ("steps.s.base", line(path, 'base = "ad"'))


def test_implicit_steps_of_an_imported_recipe_keep_their_parts(lora_recipe, tmp_path):
    lora_recipe(
        """
        [steps.inner]
        method = "linear"
        inputs = [{ model = "base+ad", weight = 1 }, { model = "ft1", weight = 1 }]
    """,
        name="inner.toml",
    )
    outer = tmp_path / "outer.toml"
    outer.write_text(
        HEAD + '[sources]\nin = { recipe = "inner.toml", step = "inner" }\nad = { path = "ad" }\n'
        '[steps.top]\nmethod = "linear"\ninputs = [{ model = "in+ad", weight = 1 }, { model = "in", weight = 1 }]\n'
    )
    r = flatten(load_recipe(outer))
    inner = r.steps["in::base+ad"]
    assert (inner.base, inner.adapter) == ("in::base", "in::ad")
    top = r.steps["in+ad"]
    assert (top.base, top.adapter) == ("in::inner", "ad")
    assert r.adapters == {"in::ad", "ad"}
    assert make_plan(r).order == ("in::base+ad", "in::inner", "in+ad", "top")
