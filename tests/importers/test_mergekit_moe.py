"""mergekit-moe configs -> `moe` steps (importers/mergekit/moe.py): what maps to what, what
mergekit-moe refuses, and the same bytes as mergekit-moe in cheap_embed mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_recipe
from importing import import_error, imported, line_of

from mergepkg.importers.mergekit import convert_file

MOE = """
base_model: org/base
gate_mode: cheap_embed
dtype: bfloat16
experts_per_token: 1
experts:
  - source_model: org/math
    positive_prompts: &math ["solve", "equation"]
    negative_prompts: ["poem"]
  - source_model: org/code
    positive_prompts: ["def "]
    noise_scale: null
  - source_model: org/base
    positive_prompts: *math
    negative_prompts: ["def "]
"""


def test_an_moe_config_is_an_moe_step(tmp_path):
    result, recipe = imported(MOE, tmp_path, name="moe.yml")
    step = recipe.steps["moe"]
    assert step.method == "moe" and step.base == "base"
    assert [(e.model, e.prompts, e.negative_prompts) for e in step.moe.experts] == [
        ("math", ("solve", "equation"), ("poem",)),  # a YAML anchor, read as mergekit reads it
        ("code", ("def ",), ()),
        ("base", ("solve", "equation"), ("def ",)),
    ]
    assert step.moe.experts[2].allow_base_expert  # mergekit-moe allows the base as an expert
    assert (step.moe.gate_mode, step.moe.experts_per_token) == ("cheap_embed", 1)
    assert step.out_dtype == "bfloat16"  # mergekit-moe writes every tensor in dtype
    assert {h.hf for h in recipe.sources.values()} == {"org/base", "org/math", "org/code"}
    assert result.warnings == []


def test_two_experts_alike_among_others_import_as_mergekit_moe_runs_them(tmp_path):
    """mergekit-moe refuses only experts that are all alike; two alike is warning MP105 at build."""
    config = """
    base_model: org/base
    gate_mode: cheap_embed
    experts:
      - {source_model: org/a, positive_prompts: [code]}
      - {source_model: org/b, positive_prompts: [code]}
      - {source_model: org/c, positive_prompts: [math]}
    """
    _, recipe = imported(config, tmp_path)
    assert [e.prompts for e in recipe.steps["config"].moe.experts] == [("code",), ("code",), ("math",)]


def test_hidden_mode_and_defaults(tmp_path):
    _, recipe = imported(
        """
        base_model: org/base
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
          - {source_model: org/b, positive_prompts: ["y"]}
        """,
        tmp_path,
    )
    step = recipe.steps["config"]
    # mergekit-moe's defaults: hidden states, two experts per token; the gate's forward pass in bfloat16
    assert (step.moe.gate_mode, step.moe.experts_per_token, step.dtype) == ("hidden", 2, "bfloat16")
    assert step.out_dtype is None  # no dtype: each tensor keeps its stored dtype (a note says so)


def test_shared_experts_random_modes_and_ignored_keys(tmp_path):
    """uniform_random needs prompts as mergekit-moe does (the shared expert's too), though
    its routers read none: they are not carried over, and no warning calls them useless."""
    result, recipe = imported(
        """
        base_model: Qwen/base
        gate_mode: uniform_random
        architecture: qwen
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
          - {source_model: org/b, positive_prompts: ["y"]}
        shared_experts:
          - {source_model: Qwen/base, positive_prompts: ["z"]}
        experts_per_token: 2
        lora_rank: 8
        """,
        tmp_path,
    )
    step = recipe.steps["config"]
    assert step.moe.gate_mode == "uniform_random" and step.moe.shared_expert.model == "base"
    assert [e.prompts for e in step.moe.experts] == [(), ()]
    assert step.dtype == "float32"  # no forward pass in the random modes: the default
    assert [w.split(" has no effect")[0] for w in result.warnings] == ["config: lora_rank"]


def test_random_mode_reads_no_prompts_nor_minds_one_model_twice(tmp_path):
    """mergekit-moe checks neither prompts nor models in `random`."""
    result, recipe = imported(
        """
        base_model: org/base
        gate_mode: random
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
          - {source_model: org/a}
        """,
        tmp_path,
    )
    assert [e.model for e in recipe.steps["config"].moe.experts] == ["a", "a"]
    assert [w.split(" has no effect")[0] for w in result.warnings] == ["config: experts[0].positive_prompts"]


REFUSED = {
    "all experts alike": (
        """
        base_model: org/base
        experts:
          - {source_model: org/a, positive_prompts: [""]}
          - {source_model: org/b, positive_prompts: [""]}
        """,
        "experts",
        "every expert has the same prompts",
        "experts:",
    ),
    "no prompts": (
        """
        base_model: org/base
        gate_mode: hidden
        experts:
          - {source_model: org/a, positive_prompts: []}
          - {source_model: org/b, positive_prompts: ["y"]}
        """,
        "experts[0]",
        "needs positive_prompts for every expert",
        "org/a",
    ),
    "one expert": (
        """
        base_model: org/base
        gate_mode: hidden
        experts_per_token: 1
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
        """,
        "experts",
        "a single expert",
        "experts:",
    ),
    "uniform_random without prompts": (
        """
        base_model: org/base
        gate_mode: uniform_random
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
          - {source_model: org/b}
        """,
        "experts[1]",
        "gate_mode 'uniform_random' needs positive_prompts for every expert",
        "source_model: org/b}",
    ),
    "every expert one model": (
        """
        base_model: org/base
        gate_mode: cheap_embed
        experts:
          - {source_model: org/a, positive_prompts: ["x"]}
          - {source_model: org/a, positive_prompts: ["y"]}
        """,
        "experts",
        "every expert is the same model",
        "experts:",
    ),
    "too few experts": (
        """
        base_model: org/base
        experts_per_token: 3
        experts: [{source_model: org/a, positive_prompts: ["x"]}, {source_model: org/b, positive_prompts: ["y"]}]
        """,
        "experts_per_token",
        "experts_per_token is 3 but the config has 2 expert(s)",
        "experts_per_token: 3",
    ),
    "hidden_avg": (
        """
        base_model: org/base
        gate_mode: hidden_avg
        experts: [{source_model: org/a, positive_prompts: ["x"]}]
        """,
        "gate_mode",
        "'hidden_avg' is not supported",
        "gate_mode:",
    ),
    "a typo of a gate mode": (
        "base_model: org/base\ngate_mode: cheap_embd\nexperts: [{source_model: org/a, positive_prompts: [x]}]\n",
        "gate_mode",
        "unknown gate_mode",
        "gate_mode:",
    ),
    "noise": (
        """
        base_model: org/base
        experts:
          - source_model: org/a
            positive_prompts: ["x"]
            noise_scale: 0.01
        """,
        "experts[0].noise_scale",
        "noise_scale is not supported",
        "noise_scale",
    ),
    "deepseek output": (
        """
        base_model: org/base
        architecture: deepseek
        experts: [{source_model: org/a, positive_prompts: ["x"]}, {source_model: org/b, positive_prompts: ["y"]}]
        """,
        "architecture",
        "output architecture str 'deepseek' is not supported",
        "architecture:",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_mergekit_moe_refuses_is_a_located_error(case, tmp_path):
    config, key, message, on_line = REFUSED[case]
    e, text = import_error(config, tmp_path)
    assert (e.key, e.line) == (key, line_of(text, on_line)), str(e)
    assert message in e.message, str(e)


@pytest.mark.slow
def test_cheap_embed_gives_mergekit_moe_bytes(models, tmp_path):
    """mergekit-moe and the imported recipe, both run on tiny Llamas: every tensor of the
    two Mixtral models equal, routers included (compared as transformers loads them, since
    mergekit-moe writes the fused expert tensors of transformers 5)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tmp_path / "moe.yml"
    config.write_text(
        f"""base_model: {models["base"]}
gate_mode: cheap_embed
dtype: float32
experts:
  - source_model: {models["ft1"]}
    positive_prompts: ["12+3=", "4+4="]
    negative_prompts: ["abc"]
  - source_model: {models["ft2"]}
    positive_prompts: ["hello"]
  - source_model: {models["ft3"]}
    positive_prompts: ["what?", "why"]
"""
    )
    theirs = tmp_path / "mergekit"
    cmd = [str(Path(sys.executable).parent / "mergekit-moe"), str(config), str(theirs), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe_file = tmp_path / "moe.toml"
    convert_file(config, output=recipe_file)
    ours = build_recipe(recipe_file, tmp_path / "out").outputs["moe"]
    a = AutoModelForCausalLM.from_pretrained(theirs).state_dict()
    b = AutoModelForCausalLM.from_pretrained(ours).state_dict()
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
