"""MP101-MP104, from the recipe alone: each fires past its threshold and not at it, at
the recipe line of the setting or input, through gradients and filters; no model is read."""

from __future__ import annotations

import pytest

from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.pitfalls.pitfall import settle
from mergepkg.recipe.parse import load_recipe


def found(recipe_file, body: str):
    """The settled warnings of a recipe over the stub models."""
    recipe = load_recipe(recipe_file(body))
    return settle(recipe_pitfalls(recipe), recipe)


def line_of(path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


LINEAR = """
[steps.m]
method = "linear"
inputs = [{{ model = "ft1", weight = {a} }}, {{ model = "ft2", weight = {b} }}]
params.normalize = {normalize}
"""


@pytest.mark.parametrize(
    ("a", "b", "normalize", "fires"),
    [
        (0.5, 0.6, "false", True),  # sum 1.1
        (0.5, 0.505, "false", False),  # sum 1.005: within 0.01
        (0.5, 0.51, "false", False),  # sum 1.01: at the tolerance
        (0.5, 0.52, "false", True),  # sum 1.02
        (0.5, 0.6, "true", False),  # normalized: the sum does not matter
    ],
)
def test_mp101_linear_weights_not_summing_to_one(recipe_file, a, b, normalize, fires):
    pits = [p for p in found(recipe_file, LINEAR.format(a=a, b=b, normalize=normalize)) if p.code == "MP101"]
    assert bool(pits) == fires, pits
    if fires:
        assert pits[0].key == "steps.m.inputs" and f"sum to {a + b:g}" in pits[0].message
        assert "normalize" in pits[0].hint


def test_mp101_is_located_and_shown_once_for_a_gradient(recipe_file):
    path = recipe_file(
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = [0.5, 1.0] }, '
        '{ model = "ft2", weight = 0.5 }]\nparams.normalize = false\n'
    )
    recipe = load_recipe(path)
    pits = settle(recipe_pitfalls(recipe), recipe)
    assert [p.code for p in pits] == ["MP101"]
    p = pits[0]
    assert p.file == str(path) and p.line == line_of(
        path, 'inputs = [{ model = "ft1", weight = [0.5, 1.0] }, { model = "ft2", weight = 0.5 }]'
    )
    assert "at gradient position 1" in p.message and "sum to 1.5" in p.message
    assert str(p).startswith(f"MP101: {path}:{p.line}: steps.m.inputs: ")


@pytest.mark.parametrize(("a", "b", "fires"), [(0.91, 0.09, True), (0.9, 0.1, False), (0.5, 0.5, False)])
def test_mp102_one_input_dominates(recipe_file, a, b, fires):
    pits = found(recipe_file, LINEAR.format(a=a, b=b, normalize="true"))
    assert [p.code for p in pits] == (["MP102"] if fires else [])
    if fires:
        assert pits[0].key == "steps.m.inputs[0]" and "'ft1' has 91% of the weight" in pits[0].message


def test_mp102_looks_at_each_filter_and_ignores_subtracted_task_vectors(recipe_file):
    body = """
    [steps.m]
    method = "task_arithmetic"
    base = "base"
    inputs = [
      { model = "ft1", weight = [{ filter = "mlp", value = 0.95 }, { value = 0.5 }] },
      { model = "ft2", weight = 0.1 },
    ]
    """
    pits = found(recipe_file, body)
    assert [p.code for p in pits] == ["MP102"]
    assert "of tensors matching 'mlp'" in pits[0].message and pits[0].key == "steps.m.inputs[0]"
    negative = body.replace("weight = 0.1 }", "weight = -0.1 }")
    assert found(recipe_file, negative) == []


TIES = """
[steps.m]
method = "{method}"
base = "base"
inputs = [{{ model = "ft1", weight = 0.5, density = {density} }}, {{ model = "ft2", weight = 0.5, density = 0.5 }}]
"""


@pytest.mark.parametrize(
    ("method", "density", "fires"),
    [("ties", 0.09, True), ("ties", 0.1, False), ("dare_ties", 0.05, True), ("dare_linear", 0.5, False)],
)
def test_mp103_low_density(recipe_file, method, density, fires):
    pits = found(recipe_file, TIES.format(method=method, density=density))
    assert [p.code for p in pits] == (["MP103"] if fires else [])
    if fires:
        assert pits[0].key == "steps.m.inputs[0].density" and f"density {density:g}" in pits[0].message


def test_mp103_points_at_the_condition_that_sets_it(recipe_file):
    path = recipe_file(
        '[steps.m]\nmethod = "ties"\nbase = "base"\ninputs = ["ft1", "ft2"]\n'
        'params.weight = 0.5\nparams.density = [{ filter = "mlp", value = 0.05 }, { value = 0.5 }]\n'
    )
    recipe = load_recipe(path)
    (p,) = settle(recipe_pitfalls(recipe), recipe)
    assert p.code == "MP103" and p.key == "steps.m.params.density[0]" and "tensors matching 'mlp'" in p.message


SLERP = '[steps.s]\nmethod = "slerp"\nbase = "base"\ninputs = ["ft1"]\nparams.t = {t}\n'


@pytest.mark.parametrize(
    ("t", "fires"),
    [("1.2", True), ("-0.1", True), ("1.0", False), ("0.0", False), ("[0, 0.5, 1]", False), ("[0, 1.5]", True)],
)
def test_mp104_slerp_t_outside_zero_one(recipe_file, t, fires):
    pits = found(recipe_file, SLERP.format(t=t))
    assert [p.code for p in pits] == (["MP104"] if fires else [])
    if fires:
        assert pits[0].key == "steps.s.params.t" and "outside [0, 1]" in pits[0].message


def test_mp104_in_a_slice_and_under_a_filter(recipe_file):
    body = """
    [steps.s]
    method = "slerp"
    base = "base"
    [[steps.s.slices]]
    sources = [{ model = "base", layers = [0, 4] }, { model = "ft1", layers = [0, 4] }]
    params = { t = [{ filter = "self_attn", value = [0, 1.3] }, { value = 0.5 }] }
    """
    (p,) = found(recipe_file, body)
    assert p.code == "MP104" and p.key == "steps.s.slices[0].params.t[0]"
    assert "tensors matching 'self_attn'" in p.message and "'ft1'" in p.message


def test_allow_silences_one_code_for_the_recipe(recipe_file):
    body = LINEAR.format(a=0.95, b=0.03, normalize="false")  # MP101 and MP102
    assert sorted(p.code for p in found(recipe_file, body)) == ["MP101", "MP102"]
    path = recipe_file(body)
    path.write_text(path.read_text().replace('version = "0.1.0"\n', 'version = "0.1.0"\nallow = ["MP102"]\n', 1))
    recipe = load_recipe(path)
    assert recipe.allow == ("MP102",)
    assert [p.code for p in settle(recipe_pitfalls(recipe), recipe)] == ["MP101"]


def test_example_recipes_show_no_recipe_warnings():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    for path in sorted(root.glob("*.toml")):
        recipe = load_recipe(path)
        assert settle(recipe_pitfalls(recipe), recipe) == [], path


MOE = """
[steps.m]
method = "moe"
base = "base"
experts = [
  {{ model = "ft1", prompts = ["code"] }},
  {{ model = "ft2", prompts = {second} }},
  {{ model = "ft3", prompts = ["math"] }},
]
params = {{ gate_mode = "{mode}" }}
"""


@pytest.mark.parametrize(
    ("second", "mode", "fires"),
    [('["code"]', "cheap_embed", True), ('["code"]', "hidden", True), ('["chat"]', "cheap_embed", False)],
)
def test_mp105_two_experts_alike_among_others(recipe_file, second, mode, fires):
    pits = found(recipe_file, MOE.format(second=second, mode=mode))
    assert [p.code for p in pits] == (["MP105"] if fires else [])
    if fires:
        assert pits[0].key == "steps.m.experts[1].prompts" and "same prompts as expert 0 ('ft1')" in pits[0].message


def test_mp105_not_in_random_mode(recipe_file):
    body = MOE.format(second='["code"]', mode="random")
    assert found(recipe_file, body) == []


def test_a_step_name_with_a_dot_is_quoted_in_the_key_and_located(recipe_file):
    body = '[steps."soup.v2"]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.95 }, { model = "ft2", weight = 0.05 }]\n'
    path = recipe_file(body)
    (p,) = settle(recipe_pitfalls(load_recipe(path)), load_recipe(path))
    assert p.code == "MP102" and p.key == 'steps."soup.v2".inputs[0]'
    assert p.line == line_of(path, body.splitlines()[2])


def test_a_condition_written_as_an_array_of_tables_is_located(recipe_file):
    body = (
        '[steps.s]\nmethod = "slerp"\nbase = "base"\ninputs = ["ft1"]\n\n'
        '[[steps.s.params.t]]\nfilter = "mlp"\nvalue = 1.3\n\n[[steps.s.params.t]]\nvalue = -0.2\n'
    )
    path = recipe_file(body)
    high, low = found(recipe_file, body)
    assert (high.key, low.key) == ("steps.s.params.t[0]", "steps.s.params.t[1]")
    headers = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line == "[[steps.s.params.t]]"]
    assert [high.line, low.line] == headers


def test_mp103_says_where_from_the_setting_that_gives_the_density(recipe_file):
    body = """
    [steps.m]
    method = "ties"
    base = "base"
    inputs = [
      { model = "ft1", weight = 0.5, density = 0.05 },
      { model = "ft2", weight = 0.5, density = [{ filter = "mlp", value = 0.5 }, { value = 0.08 }] },
      { model = "ft3", weight = 0.5, density = [0.5, 0.02] },
    ]
    params.density = [{ filter = "self_attn", value = 0.5 }, { value = 0.5 }]
    """
    messages = {p.key: p.message for p in found(recipe_file, body)}
    assert messages["steps.m.inputs[0].density"].endswith("keeps 5% of each task vector's entries")  # a plain number
    assert messages["steps.m.inputs[1].density[1]"].endswith("entries (tensors not matching 'mlp')")
    assert messages["steps.m.inputs[2].density"].endswith("entries (at gradient position 1)")
