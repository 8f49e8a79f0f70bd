"""Forms of mergekit configs beside `models` and `slices`: the `modules` form mergekit-multi
writes, `chat_template`, a `revision` beside a model, flags written as numbers."""

from __future__ import annotations

import pytest
from importing import import_error, imported, line_of

from mergepkg.recipe.chat import builtin_names
from mergepkg.recipe.model import Condition

MODULES = """
merge_method: ties
base_model: org/base
modules:
  default:
    slices:
      - sources:
          - model: org/base
            layer_range: [0, 4]
          - model: org/a
            layer_range: [0, 4]
            parameters: {weight: 1.0, density: 0.5}
    parameters:
      normalize: false
      lambda: [{filter: mlp, value: 0.5}]
parameters:
  lambda: 0.9
  normalize: true
dtype: bfloat16
"""


def test_the_modules_form_of_one_module_is_its_slices(tmp_path):
    result, recipe = imported(MODULES, tmp_path)
    step = recipe.steps["config"]
    assert [(s.model, s.layers) for s in step.slices[0].sources] == [("base", (0, 4)), ("a", (0, 4))]
    # the module's parameters come before the top level's: a filter list that matches no
    # tensor falls through to the top level, which becomes its catch-all
    assert step.params == {"normalize": False, "lambda": (Condition("mlp", 0.5), Condition(None, 0.9))}
    assert result.warnings == []


def test_modules_errors_are_located(tmp_path):
    e, text = import_error(MODULES.replace("  default:", "  text_decoder:"), tmp_path)
    assert (e.key, e.line) == ("modules", line_of(text, "modules:"))
    assert "multi-module" in e.message
    e, text = import_error(MODULES.replace("dtype: bfloat16", "models: [{model: org/a}]"), tmp_path)
    assert e.key == "modules" and "exactly one of `models`, `slices` or `modules`" in e.message


@pytest.mark.parametrize("value", ["auto", *builtin_names(), "{% for m in messages %}{{ m.content }}{% endfor %}"])
def test_chat_template_is_carried_over(value, tmp_path):
    config = f"merge_method: linear\nmodels: [{{model: org/a, parameters: {{weight: 1}}}}]\nchat_template: {value!r}\n"
    result, recipe = imported(config, tmp_path)
    assert recipe.steps["config"].chat_template == value
    assert value == "auto" or value not in builtin_names() or f"mergepkg's own template of the {value}" in result.text


def test_a_model_named_like_a_template_is_renamed(tmp_path):
    _, recipe = imported(
        "merge_method: linear\nmodels:\n  - {model: org/chatml, parameters: {weight: 1}}\n"
        "  - {model: org/b, parameters: {weight: 1}}\nchat_template: chatml\n",
        tmp_path,
    )
    assert [i.model for i in recipe.steps["config"].inputs] == ["chatml-model", "b"]
    assert recipe.steps["config"].chat_template == "chatml"


def test_an_invalid_chat_template_is_refused_as_mergekit_does(tmp_path):
    e, text = import_error(
        "merge_method: linear\nmodels: [{model: org/a, parameters: {weight: 1}}]\nchat_template: vicuna\n", tmp_path
    )
    assert (e.key, e.line) == ("chat_template", line_of(text, "chat_template")) and "vicuna" in e.message


def test_a_revision_beside_a_model_pins_it(tmp_path):
    result, recipe = imported(
        """
        merge_method: slerp
        base_model: org/base
        slices:
          - sources:
              - {model: org/base, layer_range: [0, 2]}
              - {model: org/a, layer_range: [0, 2], revision: v2}
        parameters: {t: 0.5}
        """,
        tmp_path,
    )
    assert recipe.sources["a"].hf == "org/a" and recipe.sources["a"].revision == "v2"
    assert "slices[0].sources[1].revision" in result.text  # a note: mergekit itself does not read it


def test_flags_written_as_numbers_are_flags(tmp_path):
    _, recipe = imported(
        "merge_method: ties\nbase_model: org/base\nmodels: [{model: org/a, parameters: {weight: 1, density: 0.5}}]\n"
        "parameters: {normalize: 1.0, int8_mask: 1}\n",
        tmp_path,
    )
    assert recipe.steps["config"].params == {"normalize": True}  # pydantic's bool takes 1.0, as mergekit


@pytest.mark.parametrize("value", ['"5"', "5.0", "5"])
def test_an_integer_written_as_a_string_or_a_whole_float_is_an_integer(tmp_path, value):
    """pydantic's int takes "5" and 5.0, so mergekit runs these; the import refused them."""
    _, recipe = imported(
        f"merge_method: karcher\nmodels: [{{model: org/a}}, {{model: org/b}}]\nparameters: {{max_iter: {value}}}\n",
        tmp_path,
    )
    assert recipe.steps["config"].params == {"max_iter": 5}


def test_an_integer_with_a_fraction_is_still_refused(tmp_path):
    error, _ = import_error(
        "merge_method: karcher\nmodels: [{model: org/a}, {model: org/b}]\nparameters: {max_iter: 5.5}\n", tmp_path
    )
    assert "max_iter: expected an integer, got 5.5" in error.message


def test_della_takes_any_epsilon_where_no_input_is_pruned(tmp_path):
    """mergekit ignores epsilon at density 1; the import refused 0.5 as outside [0, 0.5)."""
    _, recipe = imported(
        "merge_method: della\nbase_model: org/base\nmodels: [{model: org/a, parameters: {weight: 1}}]\n"
        "parameters: {epsilon: 0.5}\n",
        tmp_path,
    )
    assert recipe.steps["config"].params["epsilon"] == 0.5
