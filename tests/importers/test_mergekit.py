"""`mergepkg import`: mergekit YAML configs -> recipes.

1. The configs of mergekit's own examples and docs (tests/importers/mergekit_configs/, each naming
   where it came from) either convert to a recipe that parses, or fail with the
   documented, located error.
2. Mapping details: gradients and filters, @revision refs, local paths, source names,
   tokenizer_source, mergekit-multi files, dropped settings and their notes.
3. Bad inputs give errors at the config's line and key path.
4. The CLI: stdout, -o, exit codes.
5. Parity (where mergekit is installed): the same config run through `mergekit-yaml` (or
   `mergekit-multi`) and through `mergepkg import` + build gives the same tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import build_one, load_tensors
from importing import CONFIGS, import_error, imported, line_of

from mergepkg.cli.app import main
from mergepkg.errors import RecipeError
from mergepkg.importers.mergekit.convert import convert, import_mergekit
from mergepkg.recipe.model import Condition
from mergepkg.recipe.parse import parse_recipe

# -- 1. mergekit's own configs ----------------------------------------------------------------

# config -> {step: (method, base, number of inputs or slices)}
CONVERT = {
    "examples-linear.yml": {"examples-linear": ("linear", None, 3)},
    "examples-ties.yml": {"examples-ties": ("ties", "Llama-2-13B-fp16", 3)},
    "examples-gradient-slerp.yml": {"examples-gradient-slerp": ("slerp", "orca_mini_v3_13b", 1)},
    "examples-bio-merge.yml": {"examples-bio-merge": ("ties", "Mistral-7B-v0.1", 2)},
    "examples-orcamini-platy-44layer.yml": {"examples-orcamini-platy-44layer": ("passthrough", None, 2)},
    "examples-gpt2-small.yml": {"examples-gpt2-small": ("passthrough", None, 1)},
    "examples-vlm-linear.yml": {"examples-vlm-linear": ("linear", None, 2)},
    "examples-vlm-ties.yml": {"examples-vlm-ties": ("ties", "Florence-2-base", 1)},
    "examples-mega.yml": {
        "gradient-slerp": ("slerp", "orca_mini_v3_13b", 1),
        "gradient-slerp-ties": ("ties", "Llama-2-13B-fp16", 2),
    },
    "docs-multimerge.yml": {
        "first-merge": ("linear", None, 2),
        "second-merge": ("slerp", "first-merge", 1),
        "docs-multimerge": ("dare_ties", "Mistral-7B-v0.1", 2),
    },
    "readme-chat-template.yml": {"readme-chat-template": ("ties", "Mistral-7B-v0.1", 2)},
    "readme-tokenizer-source-union.yml": {"readme-tokenizer-source-union": ("linear", None, 2)},
    "examples-arcee_fusion.yml": {"examples-arcee_fusion": ("arcee_fusion", "model_a", 1)},
    # `pattern` has no effect (a warning): the first condition applies to every tensor
    "examples-gradient-slerp-old.yml": {"examples-gradient-slerp-old": ("slerp", "orca_mini_v3_13b", 1)},
}

# config -> (key path, part of the message, text on the line the error names)
REFUSE = {
    "docs-create_a_merge_method.yml": ("merge_method", "unknown merge method 'simple_average'", "merge_method:"),
    "examples-whisper-encoder-decoder-weighted.yml": (
        "merge_method",
        "unknown merge method 'encoder_decoder_weighted'",
        "merge_method:",
    ),
    # `lora` has no effect in mergekit 0.1.5 (a warning), which leaves one model listed twice
    "examples-whisper-lora-multilingual.yml": (
        "models[1].model",
        "listed twice",
        "- model: openai/whisper-large-v2  # Same base model",
    ),
    "examples-whisper-merge-multilingual.yml": ("merge_method", "'slerp' needs a base_model", "merge_method:"),
    # geodesic and lambda have no effect (warnings); without them no model has its required weight
    "examples-chipalign.yml": ("models[0]", "missing parameter 'weight'", "- model: instruction_model_path"),
    "examples-linear_small.yml": (None, "missing `merge_method`", "models:"),
    "readme-tokenizer-practical.yml": (
        "tokenizer.tokens.<|im_start|>.source",
        "'chatml_model' is not one of the models merged here",
        'source: "chatml_model"',
    ),
}


def test_every_saved_config_is_a_case():
    assert sorted(p.name for p in CONFIGS.glob("*.yml")) == sorted({*CONVERT, *REFUSE})
    for p in CONFIGS.glob("*.yml"):
        assert p.read_text().startswith("# from arcee-ai/mergekit "), p.name


@pytest.mark.parametrize("config", sorted(CONVERT))
def test_mergekit_config_converts(config, tmp_path):
    path = CONFIGS / config
    text = import_mergekit(path.read_text(), path, recipe_dir=tmp_path, cwd=tmp_path)
    assert text.startswith(f"# imported from {config} by mergepkg import\n")
    recipe = parse_recipe(text, tmp_path / "recipe.toml")
    assert recipe.name == path.stem
    got = {n: (s.method, s.base, len(s.inputs) or len(s.slices)) for n, s in recipe.steps.items()}
    assert got == CONVERT[config]
    assert all(src.hf for src in recipe.sources.values())  # every model of these configs is a hub repo


@pytest.mark.parametrize("config", sorted(REFUSE))
def test_mergekit_config_refused_with_located_error(config, tmp_path):
    path = CONFIGS / config
    key, message, on_line = REFUSE[config]
    with pytest.raises(RecipeError) as info:
        import_mergekit(path.read_text(), path, cwd=tmp_path)
    e = info.value
    assert e.key == key
    assert message in e.message
    assert e.file == str(path)
    assert e.line == line_of(path, on_line)
    assert e.hint


def test_readme_ties_example_details(tmp_path):
    path = CONFIGS / "examples-ties.yml"
    result = convert(path.read_text(), path, cwd=tmp_path)
    step = parse_recipe(result.text, tmp_path / "r.toml").steps["examples-ties"]
    orca, platy, wizard = step.inputs
    assert orca.params == {"density": (1.0, 0.7, 0.1), "weight": 1.0}
    assert platy.params == {"density": 0.5, "weight": (0.0, 0.3, 0.7, 1.0)}
    assert wizard.params["weight"] == (Condition("mlp", 0.5), Condition(None, 0.0))
    assert step.params == {"normalize": True}  # int8_mask dropped ...
    assert step.dtype == step.out_dtype == "float16"
    # ... with a warning, also kept in the recipe
    assert "# warning: parameters.int8_mask has no effect: a memory option" in result.text
    assert result.warnings == [
        "examples-ties: parameters.int8_mask has no effect: a memory option of mergekit that does not change results"
    ]


def test_long_params_become_a_table_that_errors_can_locate(tmp_path):
    path = CONFIGS / "examples-gradient-slerp.yml"
    text = import_mergekit(path.read_text(), path, cwd=tmp_path)
    assert "\n[steps.examples-gradient-slerp.params]\nt = [\n" in text
    broken = text.replace("{ value = 0.5 }", '{ value = "half" }')
    with pytest.raises(RecipeError) as info:
        parse_recipe(broken, tmp_path / "r.toml")
    assert info.value.line == line_of(broken, '{ value = "half" }')


def test_multimerge_doc_stages_refer_to_each_other(tmp_path):
    path = CONFIGS / "docs-multimerge.yml"
    recipe = parse_recipe(import_mergekit(path.read_text(), path, cwd=tmp_path), tmp_path / "r.toml")
    assert list(recipe.steps) == ["first-merge", "second-merge", "docs-multimerge"]
    assert recipe.steps["second-merge"].base == "first-merge"  # a step, not a source
    assert recipe.steps["docs-multimerge"].inputs[0].model == "second-merge"
    assert "first-merge" not in recipe.sources and "second-merge" not in recipe.sources
    assert recipe.steps["first-merge"].params == {"weight": 0.5}
    assert recipe.outputs == ("docs-multimerge",)
    # the unnamed final merge takes --name
    named = parse_recipe(import_mergekit(path.read_text(), path, name="bio", cwd=tmp_path), tmp_path / "r.toml")
    assert list(named.steps) == ["first-merge", "second-merge", "bio"] and named.name == "bio"


def test_base_model_parameters_are_dropped_with_a_warning(tmp_path):
    path = CONFIGS / "examples-vlm-ties.yml"
    result = convert(path.read_text(), path, cwd=tmp_path)
    assert (
        "# warning: models[1].parameters.density has no effect: mergekit does not use the base model's own parameters"
        in result.text
    )


# -- 2. mapping details ------------------------------------------------------------------------


def test_gradients_filters_and_precedence_levels(tmp_path):
    _, recipe = imported(
        """
        merge_method: slerp
        base_model: org/base
        slices:
          - sources:
              - model: org/base
                layer_range: [0, 16]
              - model: org/chat
                layer_range: [8, 24]
            parameters:
              t:
                - filter: self_attn
                  value: [0, 1]
                - filter: "*"
                  value: 0.25
          - sources:
              - model: org/base
                layer_range: [16, 32]
              - model: org/chat
                layer_range: [24, 40]
                parameters:
                  t: 0.9
        parameters:
          t: {filter: mlp, value: 0.7}
        dtype: bfloat16
        out_dtype: float32
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.base == "base"
    first, second = step.slices
    assert [(s.model, s.layers) for s in first.sources] == [("base", (0, 16)), ("chat", (8, 24))]
    assert first.params["t"] == (Condition("self_attn", (0.0, 1.0)), Condition(None, 0.25))
    # `t` is set once per merge: mergekit ignores it on a source, so does the recipe (with a note)
    assert second.sources[1].params == {}
    assert step.params["t"] == (Condition("mlp", 0.7),)
    assert (step.dtype, step.out_dtype) == ("bfloat16", "float32")


def test_revision_refs_and_source_names(tmp_path):
    result, recipe = imported(
        """
        merge_method: task_arithmetic
        base_model: mistralai/Mistral-7B-v0.1@main
        models:
          - model: org/chat@abc123
            parameters: {weight: 0.5}
          - model: other/chat@v2
            parameters: {weight: 0.25}
          - model: org/chat@def456
            parameters: {weight: 0.125}
          - model: {model: {path: org/tool, revision: refs/pr/3}}
            parameters: {weight: 1.0e-3}
          - model: org/sci
            parameters: {weight: 1e-3}
    """,
        tmp_path,
    )
    src = recipe.sources
    assert (src["Mistral-7B-v0.1"].hf, src["Mistral-7B-v0.1"].revision) == ("mistralai/Mistral-7B-v0.1", "main")
    assert (src["chat"].hf, src["chat"].revision) == ("org/chat", "abc123")
    assert (src["chat-2"].hf, src["chat-2"].revision) == ("other/chat", "v2")
    assert (src["chat-3"].hf, src["chat-3"].revision) == ("org/chat", "def456")
    assert (src["tool"].hf, src["tool"].revision) == ("org/tool", "refs/pr/3")
    step = recipe.steps["config"]
    assert [i.model for i in step.inputs] == ["chat", "chat-2", "chat-3", "tool", "sci"]
    assert step.inputs[4].params["weight"] == 0.001  # YAML reads 1e-3 as a string; mergekit makes it a number
    assert '"Mistral-7B-v0.1" = { hf = "mistralai/Mistral-7B-v0.1", revision = "main" }' in result.text


def test_local_paths_relative_to_the_recipe(tmp_path):
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "my ft").mkdir(parents=True)
    absolute = tmp_path / "elsewhere" / "abs"
    absolute.mkdir(parents=True)
    config = f"""
        merge_method: linear
        models:
          - model: ./models/base
            parameters: {{weight: 1}}
          - model: models/my ft
            parameters: {{weight: 1}}
          - model: {absolute}
            parameters: {{weight: 1}}
    """
    # printed: paths relative to the config's folder (here the cwd too)
    _, recipe = imported(config, tmp_path)
    assert recipe.sources["base"].path == tmp_path / "models" / "base"
    assert recipe.sources["my-ft"].path == tmp_path / "models" / "my ft"  # an existing folder wins over a repo id
    assert recipe.sources["abs"].path == absolute
    # -o recipes/x.toml: relative to that folder; absolute paths stay absolute
    out_dir = tmp_path / "recipes"
    out_dir.mkdir()
    result, recipe = imported(config, tmp_path, recipe_dir=out_dir)
    assert 'base = { path = "../models/base" }' in result.text
    assert f'abs = {{ path = "{absolute}" }}' in result.text
    assert recipe.sources["base"].path == tmp_path / "models" / "base"


def test_missing_local_folder_is_a_warning_not_an_error(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("merge_method: linear\nmodels:\n  - model: ./not/there\n    parameters: {weight: 1}\n")
    result = convert(path.read_text(), path, cwd=tmp_path)
    assert 'there = { path = "./not/there" }' in result.text
    assert result.recipe is None and "model folder not found" in result.warnings[0]


@pytest.mark.parametrize("source, expected", [("base", "base"), ("org/chat", "chat"), ("org/base", "base")])
def test_tokenizer_source(source, expected, tmp_path):
    _, recipe = imported(
        f"""
        merge_method: slerp
        base_model: org/base
        models:
          - model: org/chat
        parameters: {{t: 0.5}}
        tokenizer_source: {source}
    """,
        tmp_path,
    )
    assert recipe.steps["config"].tokenizer == expected and not recipe.steps["config"].tokens


@pytest.mark.parametrize("form", ["tokenizer_source: base", "tokenizer: {source: base}"])
def test_tokenizer_source_base_without_a_base_model_is_the_first_model(form, tmp_path):
    """mergekit's `base` is its first referenced model when there is no base_model (it was refused)."""
    result, recipe = imported(
        f"""
        merge_method: linear
        models:
          - model: org/a
            parameters: {{weight: 1}}
          - model: org/b
            parameters: {{weight: 1}}
        {form}
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.tokenizer == "a" and step.tokenizer_model == "a" and not step.tokenizer_union
    assert "tokenizer source base without a base_model: the first model" in result.text


def test_tokenizer_block_and_union(tmp_path):
    result, recipe = imported(
        """
        merge_method: task_arithmetic
        base_model: org/base
        models:
          - model: org/chat
            parameters: {weight: 1}
          - model: org/union
            parameters: {weight: 1}
        tokenizer:
          pad_to_multiple_of: 64
          tokens:
            <|im_start|>:
              source: org/chat
            <|im_end|>:
              source: org/chat
              force: true
            <pad>:
              source: {kind: zero}
            <sep>:
              source: {kind: model_token, model: org/base, token: </s>}
            <cls>:
              source: {kind: model_token, model: org/union, token_id: 3}
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.tokenizer_union and step.tokenizer == "union" and step.pad_to_multiple_of == 64  # default source
    assert "union-model" in recipe.sources and "union" not in recipe.sources  # "union" would read as the union
    got = {t.token: (t.model, t.from_token, t.from_id, t.force) for t in step.tokens}
    assert got == {
        "<|im_start|>": ("chat", None, None, False),
        "<|im_end|>": ("chat", None, None, True),
        "<pad>": (None, None, None, False),
        "<sep>": ("base", "</s>", None, False),
        "<cls>": ("union-model", None, 3, False),
    }
    assert "union:" in result.text  # the note on how the union differs from mergekit's


def test_tokenizer_source_base_of_linear_is_the_base_input(tmp_path):
    result, recipe = imported(
        """
        merge_method: linear
        base_model: org/base
        models:
          - model: org/a
          - model: org/b
        parameters: {weight: 1.0}
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    # mergekit merges base_model as one more input of linear, and takes its config and tokenizer
    assert [i.model for i in step.inputs] == ["a", "b", "base"] and step.base is None
    assert step.config == "base" and step.tokenizer_model == "base"
    assert 'config = "base"' in result.text
    assert "base_model is merged as one more input" in result.text


def test_task_arithmetic_density_and_shared_params_on_models_dropped(tmp_path):
    result, recipe = imported(
        """
        merge_method: task_arithmetic
        base_model: org/base
        models:
          - model: org/a
            parameters: {weight: 0.5, density: 0.3, lambda: 2.0}
        parameters: {density: 0.5, rescale: true, int8_mask: true, lambda: 0.8}
        dtype: float32
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.inputs[0].params == {"weight": 0.5}
    assert step.params == {"lambda": 0.8}
    warned = {w.split(" has no effect")[0].removeprefix("config: ") for w in result.warnings}
    assert warned == {
        "models[0].parameters.density",
        "models[0].parameters.lambda",
        "parameters.density",
        "parameters.rescale",
        "parameters.int8_mask",
    }
    assert "method 'task_arithmetic' has no parameter 'density'" in result.text


def test_passthrough_slices_with_scale_and_the_config_of_base_model(tmp_path):
    result, recipe = imported(
        """
        merge_method: passthrough
        base_model: org/a
        slices:
          - sources: [{model: org/a, layer_range: [0, 8]}]
          - sources:
              - model: org/b
                layer_range: [4, 12]
                parameters:
                  scale: [{filter: down_proj, value: 0.5}, {value: 1.0}]
    """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.base is None and step.tokenizer is None
    assert step.config == "a" and step.tokenizer_model == "a"  # mergekit's donor: base_model
    assert step.slices[1].sources[0].params["scale"] == (Condition("down_proj", 0.5), Condition(None, 1.0))
    assert "base_model has no effect" not in result.text


def test_names_are_sanitised_and_unique(tmp_path):
    (tmp_path / ".hidden" / "-weird name").mkdir(parents=True)
    _, recipe = imported(
        """
        name: my merge!
        merge_method: linear
        models:
          - model: .hidden/-weird name
          - model: org/final
        parameters: {weight: 1}
    """,
        tmp_path,
        name="final",
    )
    assert recipe.name == "final" and list(recipe.steps) == ["final"]
    assert set(recipe.sources) == {"weird-name", "final-2"}  # the step keeps its name; the source yields


def test_multi_document_named_stages_in_any_order(tmp_path):
    result, recipe = imported(
        """
        merge_method: ties
        base_model: org/base
        models:
          - model: soup a
            parameters: {weight: 1, density: 0.5}
          - model: org/x
            parameters: {weight: 1, density: 0.5}
        ---
        name: soup a
        merge_method: linear
        models:
          - model: org/x
          - model: org/y
        parameters: {weight: 0.5}
        dtype: float32
    """,
        tmp_path,
        name="final",
    )
    assert list(recipe.steps) == ["final", "soup-a"]
    assert recipe.steps["final"].inputs[0].model == "soup-a"
    assert recipe.outputs == ("final",)
    assert "# from document 2" in result.text


def test_single_document_name_key_is_ignored(tmp_path):
    _, recipe = imported(
        """
        name: stage
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
    """,
        tmp_path,
    )
    assert list(recipe.steps) == ["config"]


# -- 3. bad inputs: located errors --------------------------------------------------------------


BAD = {
    "token id not a number": (
        """
        models:
          - model: org/a
            parameters: {weight: 1}
        merge_method: linear
        tokenizer:
          source: union
          tokens:
            <x>:
              source: {kind: model_token, model: org/a, token_id: abc}
    """,
        "tokenizer.tokens.<x>.source.token_id",
        "expected a token id (an integer from 0), got str 'abc'",
        "source: {kind: model_token",
    ),
    "unknown method": (
        """
        models:
          - model: org/a
        merge_method: frankenstein
    """,
        "merge_method",
        "unknown merge method 'frankenstein'",
        "merge_method:",
    ),
    "mergekit-only method": (
        """
        merge_method: multislerp
        base_model: org/base
        models: [{model: org/a}]
    """,
        "merge_method",
        "'multislerp' method is not supported",
        "merge_method:",
    ),
    "tokenizer block with pad_to_multiple_of 0": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        tokenizer:
          pad_to_multiple_of: 0
    """,
        "tokenizer.pad_to_multiple_of",
        "positive integer",
        "pad_to_multiple_of",
    ),
    "tokenizer and tokenizer_source": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        tokenizer_source: union
        tokenizer: {source: union}
    """,
        "tokenizer",
        "both",
        "tokenizer: {source: union}",
    ),
    "tokenizer of a model not merged": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        tokenizer_source: org/other
    """,
        "tokenizer_source",
        "not one of the models merged here",
        "tokenizer_source",
    ),
    "value out of range": (
        """
        merge_method: ties
        base_model: org/base
        models:
          - model: org/a
            parameters:
              weight: 1
              density: [1, 0.5, 1.5]
    """,
        "models[0].parameters.density[2]",
        "expected a number in (0, 1]",
        "density:",
    ),
    "flag as gradient": (
        """
        merge_method: ties
        base_model: org/base
        models: [{model: org/a, parameters: {weight: 1}}]
        parameters:
          normalize: [true, false]
    """,
        "parameters.normalize",
        "is a flag",
        "normalize:",
    ),
    "missing weight": (
        """
        merge_method: linear
        models:
          - model: org/a
            parameters: {weight: 1}
          - model: org/b
    """,
        "models[1]",
        "missing parameter 'weight' for 'b'",
        "model: org/b",
    ),
    "missing t": (
        """
        merge_method: slerp
        base_model: org/a
        models: [{model: org/a}, {model: org/b}]
    """,
        "parameters",
        "missing parameter 't'",
        "merge_method",
    ),
    "t only on a model": (
        """
        merge_method: slerp
        base_model: org/a
        models:
          - model: org/b
            parameters: {t: 0.5}
    """,
        "parameters",
        "missing parameter 't'",
        "merge_method",
    ),
    "bad layer range": (
        """
        merge_method: passthrough
        slices:
          - sources:
              - model: org/a
                layer_range: [8, 4]
    """,
        "slices[0].sources[0].layer_range",
        "expected [start, end]",
        "layer_range",
    ),
    "unequal slice": (
        """
        merge_method: slerp
        base_model: org/a
        parameters: {t: 0.5}
        slices:
          - sources:
              - {model: org/a, layer_range: [0, 4]}
              - {model: org/b, layer_range: [0, 6]}
    """,
        "slices[0].sources",
        "same number of layers",
        "sources:",
    ),
    "base not in slice": (
        """
        merge_method: ties
        base_model: org/base
        parameters: {weight: 1}
        slices:
          - sources:
              - {model: org/a, layer_range: [0, 4]}
    """,
        "slices[0].sources",
        "base_model must be among each slice's sources",
        "sources:",
    ),
    "too many for passthrough": (
        """
        merge_method: passthrough
        base_model: org/base
        models: [{model: org/a}]
    """,
        "base_model",
        "takes exactly 1 model, got 2",
        "base_model:",
    ),
    "too few for model_stock": (
        """
        merge_method: model_stock
        base_model: org/base
        models: [{model: org/base}, {model: org/a}]
    """,
        "models",
        "takes at least 2 models besides the base_model, got 1",
        "models:",
    ),
    "models and slices": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        slices: [{sources: [{model: org/a, layer_range: [0, 1]}]}]
    """,
        "slices",
        "exactly one of `models`, `slices` or `modules`",
        "slices:",
    ),
    "unsupported dtype": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        dtype: int8
    """,
        "dtype",
        "unsupported dtype 'int8'",
        "dtype",
    ),
    "duplicate model": (
        """
        merge_method: linear
        models:
          - model: org/a
          - model: org/a
        parameters: {weight: 1}
    """,
        "models[1].model",
        "listed twice",
        "- model: org/a",
    ),
    "modules": (
        """
        merge_method: linear
        modules:
          text_decoder:
            models: [{model: org/a}]
    """,
        "modules",
        "per-module merges of multi-module models are not supported",
        "modules:",
    ),
}


# what mergekit 0.1.5 accepts and ignores: a warning naming the key, an error with strict
IGNORED = {
    "unknown parameter": (
        """
        merge_method: ties
        base_model: org/base
        models:
          - model: org/a
            parameters: {weight: 1}
          - model: org/b
            parameters:
              weight: 1
              foo: 2
    """,
        "models[1].parameters.foo",
        "has no effect: method 'ties' has no parameter 'foo'",
        "foo: 2",
    ),
    "typo parameter": (
        """
        merge_method: ties
        base_model: org/base
        models: [{model: org/a, parameters: {weight: 1}}]
        parameters:
          densty: 0.5
    """,
        "parameters.densty",
        "has no effect: method 'ties' has no parameter 'densty'",
        "densty:",
    ),
    "unknown top-level key": (
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        dtpye: float16
    """,
        "dtpye",
        "has no effect: mergekit 0.1.5 does not read this key",
        "dtpye",
    ),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_ignored_keys_warn_and_strict_refuses_them(case, tmp_path):
    config, key, message, on_line = IGNORED[case]
    path = tmp_path / "cfg.yml"
    text = textwrap.dedent(config)
    path.write_text(text)
    result = convert(text, path, cwd=tmp_path)
    assert [w for w in result.warnings if f": {key} {message}" in w], result.warnings
    assert f"# warning: {key} {message}" in result.text
    with pytest.raises(RecipeError) as info:
        convert(text, path, cwd=tmp_path, strict=True)
    e = info.value
    assert (e.key, e.line, e.file) == (key, line_of(text, on_line), str(path)), str(e)
    assert message.removeprefix("has no effect: ") in e.message and "has no effect" in e.message
    assert "mergekit 0.1.5 accepts it" in e.hint or "did you mean" in e.hint


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_located_error(case, tmp_path):
    config, key, message, on_line = BAD[case]
    e, text = import_error(config, tmp_path)
    assert e.key == key, str(e)
    assert message in e.message, str(e)
    expected_line = line_of(text, on_line)
    if case == "duplicate model":
        expected_line += 1  # the second one
    assert e.line == expected_line, str(e)
    assert e.file == str(tmp_path / "bad.yml")
    if case == "t only on a model":
        assert "mergekit ignores it at models[0].parameters.t" in e.hint


def test_yaml_syntax_error_is_located(tmp_path):
    e, _ = import_error("merge_method: linear\nmodels:\n  - model: [org/a\n", tmp_path)
    assert e.message.startswith("invalid YAML") and e.line is not None


def alias_bomb(levels: int) -> str:
    """Aliases of aliases, ten wide, `levels` deep: a few lines that expand to 10**levels values."""
    text = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    for prev, name in zip("abcdefghi", "bcdefghij"[: levels - 1]):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    return text


@pytest.mark.parametrize(
    ("bomb", "line"),
    [
        # the reported bomb (9 levels, in parameters.weight) at 6: every key path through it was recorded
        (alias_bomb(6) + "merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: *f}\n", 5),
        # merge keys: yaml copies the merged pairs into each mapping when it constructs it
        (
            "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
            + "".join(f"{n}: &{n}\n  <<: [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")),
            9,
        ),
        ("merge_method: linear\nmodels: &m\n  - model: org/a\n    parameters: {weight: *m}\n", 2),  # holds itself
    ],
    ids=["nested", "merge-keys", "recursive"],
)
def test_an_alias_bomb_is_refused_at_its_line_before_it_is_expanded(bomb, line, tmp_path):
    """`mergepkg import` of yml/bomb.yml (9 levels) took 26 s and 2.2 GB, then a MemoryError:
    every key path through an alias was recorded. Each node is walked once now, and a file
    whose aliases repeat past MAX_EXPANDED values is refused at once, at the node that does."""
    import time

    started = time.monotonic()
    e, _ = import_error(bomb, tmp_path)
    assert time.monotonic() - started < 5
    assert e.message.startswith("invalid YAML: ") and e.line == line, str(e)
    assert ("holds itself" if "&m" in bomb else "aliases repeat more than 100000 values") in e.message


def test_aliases_a_config_reuses_are_walked_once_and_imported(tmp_path):
    """A node reached again through an alias is not walked again (the paths under it take
    the line of the path naming it): key paths grow with the text, not with what the
    aliases expand to."""
    from mergepkg.importers.mergekit.documents import load_documents

    (doc,) = load_documents(alias_bomb(4) + "merge_method: linear\n", "c.yml")  # 11110 values read through
    assert len(doc.lines) < 60 and doc.lines["d[9]"] == 3 and "d[9][0]" not in doc.lines
    _, recipe = imported(
        """
        merge_method: ties
        base_model: org/base
        models:
          - model: org/a
            parameters: &p {weight: 0.5, density: 0.7}
          - model: org/b
            parameters: *p
        """,
        tmp_path,
    )
    (step,) = recipe.steps.values()
    assert [(i.params["weight"], i.params["density"]) for i in step.inputs] == [(0.5, 0.7), (0.5, 0.7)]


def test_multi_document_errors(tmp_path):
    e, text = import_error(
        """
        name: a
        merge_method: linear
        models: [{model: b, parameters: {weight: 1}}]
        ---
        name: b
        merge_method: linear
        models: [{model: a, parameters: {weight: 1}}]
    """,
        tmp_path,
    )
    assert "cycle" in e.message
    e, text = import_error(
        """
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        ---
        merge_method: linear
        models: [{model: org/b, parameters: {weight: 1}}]
    """,
        tmp_path,
    )
    assert "two documents have no `name`" in e.message and e.line == line_of(text, "org/b") - 1
    e, text = import_error(
        """
        name: x
        merge_method: linear
        models: [{model: org/a, parameters: {weight: 1}}]
        ---
        name: y
        merge_method: linear
        models: [{model: org/b, parameters: {weight: 1}}]
        dtype: int8
    """,
        tmp_path,
    )
    assert e.key == "dtype" and e.line == line_of(text, "dtype: int8")


# -- 4. the CLI --------------------------------------------------------------------------------


def test_cli_prints_the_recipe(tmp_path, capsys):
    config = CONFIGS / "examples-ties.yml"
    assert main(["import", str(config)]) == 0
    cap = capsys.readouterr()
    assert cap.out == import_mergekit(config.read_text(), config)
    assert "warning: examples-ties: parameters.int8_mask has no effect" in cap.err


def test_cli_writes_the_recipe_and_it_builds_offline(tmp_path, capsys, models):
    import torch

    config = tmp_path / "cfg" / "soup.yml"
    config.parent.mkdir()
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {models['ft1']}\n  - model: {models['ft2']}\n"
        "parameters:\n  weight: 0.5\ndtype: float32\n"
    )
    out = tmp_path / "recipes" / "soup.toml"
    assert main(["import", str(config), "-o", str(out), "--name", "my-soup"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "wrote" in cap.err
    text = out.read_text()
    assert "[steps.my-soup]" in text and 'name = "my-soup"' in text
    tensors = build_one(out, tmp_path / "built")
    ft1, ft2 = load_tensors(models["ft1"]), load_tensors(models["ft2"])
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(tensors[name], (ft1[name] + ft2[name]) / 2)


def test_cli_errors_exit_1_with_location(tmp_path, capsys):
    config = CONFIGS / "examples-whisper-lora-multilingual.yml"
    assert main(["import", str(config), "-o", str(tmp_path / "x.toml")]) == 1
    cap = capsys.readouterr()
    assert f"{config}:{line_of(config, '# Same base model')}: models[1].model" in cap.err
    assert "listed twice" in cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "x.toml").exists()
    # --strict: a key mergekit ignores is an error at its line, and nothing is written
    ties = CONFIGS / "examples-ties.yml"
    assert main(["import", str(ties), "--strict", "-o", str(tmp_path / "x.toml")]) == 1
    err = capsys.readouterr().err
    assert f"{ties}:{line_of(ties, 'int8_mask')}: parameters.int8_mask: has no effect" in err
    assert not (tmp_path / "x.toml").exists()
    assert main(["import", str(tmp_path / "missing.yml")]) == 1
    assert "config file not found" in capsys.readouterr().err


# -- 5. parity with mergekit --------------------------------------------------------------------

SEED = 1234
TOL = dict(rtol=1e-5, atol=1e-6)
BIN = Path(sys.executable).parent

# Each config is formatted with the `models` fixture's folders. All compute and save float32.
PARITY = {
    # models + base_model (listed without parameters, as mergekit's docs do), int8_mask dropped
    "ties": """
        merge_method: ties
        base_model: {base}
        models:
          - model: {ft1}
            parameters: {{weight: 1.0, density: 0.5}}
          - model: {ft2}
            parameters: {{weight: [0.2, 0.9], density: 0.7}}
          - model: {base}
        parameters:
          normalize: true
          int8_mask: true
        dtype: float32
        out_dtype: float32
    """,
    # slices + a filtered gradient of t
    "slerp-slices": """
        merge_method: slerp
        base_model: {base}
        slices:
          - sources:
              - model: {base}
                layer_range: [0, 4]
              - model: {ft1}
                layer_range: [0, 4]
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
        dtype: float32
        out_dtype: float32
    """,
    # layer stacking, with a scaled slice
    "passthrough-slices": """
        merge_method: passthrough
        slices:
          - sources:
              - model: {base}
                layer_range: [0, 2]
          - sources:
              - model: {deep}
                layer_range: [3, 6]
                parameters:
                  scale: [{{filter: mlp, value: 0.5}}, {{value: 1.0}}]
        dtype: float32
        out_dtype: float32
    """,
    "linear": """
        merge_method: linear
        models:
          - model: {ft1}
            parameters: {{weight: 0.5}}
          - model: {ft2}
            parameters: {{weight: [0.8, 0.1]}}
          - model: {ft3}
            parameters: {{weight: 0.3}}
        dtype: float32
        out_dtype: float32
    """,
    # linear with a base_model that is not listed: mergekit merges it as one more input
    "linear-base-model": """
        merge_method: linear
        base_model: {base}
        models:
          - model: {ft1}
            parameters: {{weight: 0.6}}
        parameters:
          weight: 0.2
          normalize: false
        dtype: float32
        out_dtype: float32
    """,
    # density on task_arithmetic (ignored by mergekit, dropped by the import)
    "task_arithmetic-density": """
        merge_method: task_arithmetic
        base_model: {base}
        models:
          - model: {ft1}
            parameters: {{weight: 0.7, density: 0.2}}
          - model: {ft2}
            parameters: {{weight: 0.4}}
        parameters:
          lambda: 0.9
        dtype: float32
        out_dtype: float32
    """,
    # nuslerp over task vectors: base_model not listed among the models
    "nuslerp-base": """
        merge_method: nuslerp
        base_model: {base}
        models:
          - model: {ft1}
            parameters: {{weight: 0.6}}
          - model: {ft2}
            parameters: {{weight: 0.4}}
        dtype: float32
        out_dtype: float32
    """,
    # two stages: the second reads the first by name
    "multi": """
        name: soup
        merge_method: linear
        models:
          - model: {ft1}
          - model: {ft2}
        parameters:
          weight: 0.5
        dtype: float32
        out_dtype: float32
        ---
        merge_method: task_arithmetic
        base_model: {base}
        models:
          - model: soup
            parameters: {{weight: 0.8}}
          - model: {ft3}
            parameters: {{weight: 0.3}}
        dtype: float32
        out_dtype: float32
    """,
}


def write_config(case: str, models: dict[str, Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case}.yml"
    path.write_text(textwrap.dedent(PARITY[case]).format(**{k: str(v) for k, v in models.items()}))
    return path


def run_mergekit(case: str, models: dict[str, Path], folder: Path) -> Path:
    config = write_config(case, models, folder)
    out = folder / "out"
    common = ["--no-cuda", "--quiet", "--random-seed", str(SEED), "--no-copy-tokenizer", "--no-write-model-card"]
    if case == "multi":
        cmd = [
            str(BIN / "mergekit-multi"),
            str(config),
            "--intermediate-dir",
            str(folder / "stages"),
            "--out-path",
            str(out),
            *common,
        ]
    else:
        cmd = [str(BIN / "mergekit-yaml"), str(config), str(out), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=folder)
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed ({proc.returncode}) on\n{config.read_text()}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def mergekit_out(request, models, tmp_path_factory):
    """mergekit_out(case) -> mergekit's output folder; every case runs at once, a few at a time."""
    root = tmp_path_factory.mktemp("import-mergekit")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
    futures = {case: pool.submit(run_mergekit, case, models, root / case) for case in PARITY}
    yield lambda case: futures[case].result()
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", list(PARITY))
def test_parity_with_mergekit(case, mergekit_out, models, tmp_path):
    import torch

    theirs = load_tensors(mergekit_out(case))
    config = write_config(case, models, tmp_path / "config")
    recipe = tmp_path / "recipe" / "imported.toml"
    assert main(["import", str(config), "-o", str(recipe)]) == 0
    ours = build_one(recipe, tmp_path / "out", seed=SEED)
    assert sorted(ours) == sorted(theirs)
    for name in sorted(ours):
        assert ours[name].dtype == theirs[name].dtype == torch.float32, name
        torch.testing.assert_close(ours[name], theirs[name], msg=lambda m, n=name: f"{n}: {m}", **TOL)
    # not vacuous: what the import decided is what mergekit did
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    name = "model.layers.1.self_attn.q_proj.weight"
    if case == "linear-base-model":  # the base merged as a third input with the top-level weight
        torch.testing.assert_close(ours[name], 0.6 * ft1[name] + 0.2 * base[name], **TOL)
    if case == "multi":
        ft2, ft3 = load_tensors(models["ft2"]), load_tensors(models["ft3"])
        soup = (ft1[name] + ft2[name]) / 2
        expected = base[name] + 0.8 * (soup - base[name]) + 0.3 * (ft3[name] - base[name])
        torch.testing.assert_close(ours[name], expected, **TOL)


# -- LoRA references: model+adapter -------------------------------------------------------------


def test_lora_references_become_adapter_sources_applied_with_plus(tmp_path):
    result, recipe = imported(
        """
        merge_method: task_arithmetic
        base_model: org/base
        models:
          - model: org/base+org/adapter@v2
            parameters: {weight: 0.5}
          - model: {model: {path: org/base}, lora: {path: org/other, revision: abc}}
            parameters: {weight: 0.3}
          - model: org/chat+org/adapter@v2
            parameters: {weight: 0.2}
        """,
        tmp_path,
    )
    assert (recipe.sources["adapter"].hf, recipe.sources["other"].hf) == ("org/adapter", "org/other")
    assert (recipe.sources["adapter"].revision, recipe.sources["other"].revision) == ("v2", "abc")
    step = recipe.steps["config"]
    assert step.base == "base"
    assert [i.model for i in step.inputs] == ["base+adapter", "base+other", "chat+adapter"]
    assert (recipe.steps["base+adapter"].base, recipe.steps["base+adapter"].adapter) == ("base", "adapter")
    assert recipe.adapters == {"adapter", "other"}
    assert 'model = "base+adapter"' in result.text


def test_lora_references_in_slices_and_renamed_sources(tmp_path):
    _, recipe = imported(
        """
        merge_method: passthrough
        slices:
          - sources:
              - model: org/base+org/ad
                layer_range: [0, 2]
          - sources:
              - model: org/base
                layer_range: [2, 4]
        tokenizer_source: org/base
        """,
        tmp_path,
    )
    # `tokenizer = "base"` would mean the step's base: the source named base is renamed, in `+` too
    step = recipe.steps["config"]
    assert [sl.sources[0].model for sl in step.slices] == ["base-model+ad", "base-model"]
    assert step.tokenizer == "base-model" and recipe.steps["base-model+ad"].base == "base-model"


@pytest.mark.parametrize(
    ("model", "key", "message"),
    [
        ("org/a+org/b+org/c", "models[0].model", "invalid model reference 'org/a+org/b+org/c': more than one '+'"),
        ("org/a+", "models[0].model", "expected a LoRA adapter (org/name, org/name@revision or a folder), got str ''"),
        ("org/a+org/b@x@y", "models[0].model", "invalid adapter reference 'org/b@x@y': more than one '@'"),
        ("{model: org/a, lora: {path: org/b, rank: 2}}", "models[0].model.lora.rank", "unknown key 'rank'"),
        ("org/a+first", "models[0].model", "'first' names a merge of this file; a LoRA adapter is a Hugging Face repo"),
        ("org/a+org/z", "models[1].model", "'org/z' is a LoRA adapter in one reference and a model in another"),
    ],
)
def test_lora_reference_errors_are_located(tmp_path, model, key, message):
    second = "org/z+org/a" if model == "org/a+org/z" else "org/c"
    e, text = import_error(
        f"""
        name: first
        merge_method: linear
        models: [{{model: org/x, parameters: {{weight: 1}}}}, {{model: org/y, parameters: {{weight: 1}}}}]
        ---
        merge_method: linear
        models:
          - model: {model}
            parameters: {{weight: 1}}
          - model: {second}
            parameters: {{weight: 1}}
        """,
        tmp_path,
    )
    assert message in e.message and e.key == key, (e.key, e.message)
    assert e.line == line_of(text, f"model: {model}" if key.startswith("models[0]") else f"model: {second}")
