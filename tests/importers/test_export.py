"""The `mergekit_config.yml` an output gets (mergepkg/builder/mergekit_yaml.py): mergekit
runs it and computes the same tensors.

Each case is a step over the tiny test models, built by mergepkg; the real `mergekit-yaml`
then runs the config mergepkg wrote into the output folder (in that folder, as the
card says), and the two outputs are compared tensor by tensor. What cannot be exported
(a step over a step, a union, an moe step) gets no config; that and the config's text
are checked without running anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import build_recipe, load_tensors, mergekit_env

from mergepkg.builder.mergekit_yaml import MERGEKIT_FILE, mergekit_config, mergekit_yaml
from mergepkg.recipe.chat import builtin_template
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
TOL = dict(rtol=1e-5, atol=1e-6)  # SLERP: rounding of float32 trigonometry; karcher: summation order
TIGHT = dict(rtol=1e-6, atol=1e-7)

CASES = {
    # per-input filtered conditions and gradients; step-wide parameters
    "ties": """
method = "ties"
base = "base"
inputs = [
  { model = "ft1", weight = 1.0, density = [{ filter = "self_attn", value = 0.5 }, { value = 0.7 }] },
  { model = "ft2", weight = [0.3, 0.9], density = 0.6 },
]
params = { normalize = false, lambda = 0.9 }
""",
    "slerp": """
method = "slerp"
base = "base"
inputs = ["ft1"]
params.t = [
  { filter = "self_attn", value = [0, 0.5, 0.3, 0.7, 1] },
  { filter = "mlp", value = [1, 0.5, 0.7, 0.3, 0] },
  { value = 0.5 },
]
""",
    # no base: the config names the first model's tokenizer; a built-in chat template
    "linear": """
method = "linear"
inputs = [{ model = "ft1", weight = 0.3 }, { model = "ft2", weight = 0.9 }]
params = { normalize = false }
chat_template = "chatml"
""",
    "passthrough": """
method = "passthrough"
slices = [
  { sources = [{ model = "base", layers = [0, 2], scale = [{ filter = "mlp", value = 0.5 }, { value = 1.5 }] }] },
  { sources = [{ model = "deep", layers = [3, 6] }] },
]
""",
    "task_arithmetic": """
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 0.7 }, { model = "ft2_bin", weight = 0.4 }, { model = "ft3", weight = -0.2 }]
params = { lambda = 0.9 }
tokenizer = "ft1"
out_dtype = "bfloat16"
""",
    "slerp_slices": """
method = "slerp"
base = "base"
slices = [
  { sources = [{ model = "base", layers = [0, 2] }, { model = "ft1", layers = [0, 2] }], params = { t = [0, 1] } },
  { sources = [{ model = "base", layers = [2, 4] }, { model = "ft1", layers = [2, 4] }], params = { t = 0.25 } },
]
""",
    "model_stock": 'method = "model_stock"\nbase = "base"\ninputs = ["ft1", "ft2", "ft3"]\nparams = { filter_wise = true }\n',
    "nuslerp": 'method = "nuslerp"\ninputs = [{ model = "ft1", weight = 0.3 }, { model = "ft2", weight = 0.9 }]\n',
    "breadcrumbs": """
method = "breadcrumbs"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.9, gamma = 0.01 }, { model = "ft2", weight = 0.5, density = 0.9 }]
""",
    "karcher": 'method = "karcher"\ninputs = ["ft1", "ft2", "ft3"]\nparams = { max_iter = 5 }\n',
    "sce": 'method = "sce"\nbase = "base"\ninputs = ["ft1", "ft2"]\nparams = { select_topk = 0.5 }\n',
    "arcee_fusion": 'method = "arcee_fusion"\nbase = "base"\ninputs = ["ft1"]\n',
    "nearswap": 'method = "nearswap"\nbase = "base"\ninputs = ["ft1"]\nparams = { t = 0.001 }\n',
    "bf16_inputs": 'method = "task_arithmetic"\nbase = "ft1_bf16"\ninputs = [{ model = "ft2", weight = 0.5 }]\n',
}


def body(cases: dict[str, str]) -> str:
    return "".join(
        f"[steps.{name}]{text if text.startswith(chr(10)) else chr(10) + text}\n" for name, text in cases.items()
    )


def run_mergekit(folder: Path, out: Path) -> Path:
    """`mergekit-yaml mergekit_config.yml OUT`, run in the output folder as its card says."""
    cmd = [str(MERGEKIT_YAML), MERGEKIT_FILE, str(out), "--no-cuda", "--quiet"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300, env=mergekit_env())
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed on\n{(folder / MERGEKIT_FILE).read_text()}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def built(models, tmp_path_factory):
    """Every case built by mergepkg (each an output), and mergekit run on each exported config."""
    root = tmp_path_factory.mktemp("export")
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items())
    recipe = root / "recipe.toml"
    recipe.write_text(f'[package]\nname = "export"\nversion = "0.1.0"\n\n[sources]\n{sources}\n' + body(CASES))
    with pytest.MonkeyPatch.context() as mp:  # a store of its own (the per-test one is not made yet)
        mp.setenv("MERGEPKG_HOME", str(root / "home"))
        outputs = build_recipe(recipe, root / "out").outputs
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        theirs = {n: pool.submit(run_mergekit, outputs[n], root / "mergekit" / n) for n in CASES}
        return {n: (outputs[n], theirs[n].result()) for n in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_mergekit_runs_the_exported_config_to_the_same_tensors(case, built):
    import torch

    ours_dir, theirs_dir = built[case]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    tol = TOL if case.startswith(("slerp", "karcher")) else TIGHT
    for name in sorted(ours):
        assert ours[name].dtype == theirs[name].dtype, name
        torch.testing.assert_close(ours[name], theirs[name], msg=lambda m, n=name: f"{n}: {m}", **tol)
    ours_config = json.loads((ours_dir / "config.json").read_text())
    theirs_config = json.loads((theirs_dir / "config.json").read_text())
    assert ours_config["num_hidden_layers"] == theirs_config["num_hidden_layers"]


@pytest.mark.slow
def test_the_chat_template_travels_too(built):
    from transformers import AutoTokenizer

    ours_dir, theirs_dir = built["linear"]
    text = builtin_template("chatml")
    assert (ours_dir / "chat_template.jinja").read_text() == text
    assert AutoTokenizer.from_pretrained(theirs_dir).chat_template == text


@pytest.mark.slow
def test_hub_sources_are_written_at_their_locked_commits(tiny_hub, tmp_path):
    """mergekit lists a repo's files online even when its cache has them, so here the config
    is only read by mergekit's own model of a config, not run."""
    from mergekit.config import MergeConfiguration

    recipe = tmp_path / "hub.toml"
    recipe.write_text(
        '[package]\nname = "hub"\nversion = "0.1.0"\n\n[sources]\n'
        'base = { hf = "tiny/base" }\nft1 = { hf = "tiny/ft1" }\nft2 = { hf = "tiny/ft2" }\n\n'
        '[steps.ta]\nmethod = "task_arithmetic"\nbase = "base"\n'
        'inputs = [{ model = "ft1", weight = 0.7 }, { model = "ft2", weight = 0.3 }]\n'
    )
    (folder,) = build_recipe(recipe, tmp_path / "out").outputs.values()
    config = yaml.safe_load((folder / MERGEKIT_FILE).read_text())
    assert config["base_model"] == f"tiny/base@{tiny_hub['base']}"
    assert [m["model"] for m in config["models"]] == [f"tiny/ft1@{tiny_hub['ft1']}", f"tiny/ft2@{tiny_hub['ft2']}"]
    parsed = MergeConfiguration.model_validate(config)
    assert parsed.base_model.model.path == "tiny/base" and parsed.base_model.model.revision == tiny_hub["base"]


# -- what is exported, without running anything -------------------------------------------------


def config_of(recipe_file, text: str, step: str, **kw):
    res = resolve(load_recipe(recipe_file(text)), Session())
    local = {n: f"../m/{n}" for n, s in res.recipe.sources.items() if s.path}
    return mergekit_config(res, step, local=local, **kw)


def test_what_mergekit_cannot_run_gets_no_config(recipe_file):
    steps = """
[steps.a]
method = "linear"
inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]

[steps.b]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "a", weight = 0.5 }]

[steps.u]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 0.5 }]
tokenizer = "union"

[steps.m]
method = "moe"
base = "base"
params = { gate_mode = "random" }
experts = [{ model = "ft1" }, { model = "ft2" }]
"""
    assert config_of(recipe_file, steps, "a") is not None
    for step in ("b", "u", "m"):
        assert config_of(recipe_file, steps, step) is None, step


def test_the_config_says_what_the_recipe_says(recipe_file):
    text = """
[steps.s]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = [0.2, 0.8], density = [{ filter = "mlp", value = 0.4 }, { value = 1.0 }] }, "ft2"]
params = { weight = 0.5 }
tokenizer = { source = "base", tokens = { "<x>" = { source = "ft1", force = true }, "<z>" = { source = { kind = "zero" } } }, pad_to_multiple_of = 8 }
chat_template = "auto"
"""
    config = config_of(recipe_file, text, "s", saved_dtypes=("bfloat16",), chat_template="{{ x }}")
    assert config == {
        "merge_method": "ties",
        "base_model": "../m/base",
        "models": [
            {
                "model": "../m/ft1",
                "parameters": {"weight": [0.2, 0.8], "density": [{"filter": "mlp", "value": 0.4}, {"value": 1.0}]},
            },
            {"model": "../m/ft2"},
        ],
        "parameters": {"weight": 0.5},
        "dtype": "float32",
        "out_dtype": "bfloat16",
        "tokenizer": {
            "source": "base",
            "tokens": {"<x>": {"source": "../m/ft1", "force": True}, "<z>": {"source": {"kind": "zero"}}},
            "pad_to_multiple_of": 8,
        },
        "chat_template": "{{ x }}",
    }


@pytest.mark.parametrize(("dtype", "note"), [("", True), ('dtype = "auto"', False), ('out_dtype = "float16"', False)])
def test_an_output_saved_in_several_dtypes_says_what_mergekit_saves(recipe_file, dtype, note):
    """fp32 norms beside bf16 weights: mergekit has no out_dtype for that and saves every
    tensor in its compute dtype; with dtype "auto" it saves each in its inputs' dtype."""
    text = (
        f'[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{{ model = "ft1", weight = 0.5 }}]\n{dtype}\n'
    )
    res = resolve(load_recipe(recipe_file(text)), Session())
    local = {n: f"../m/{n}" for n, s in res.recipe.sources.items() if s.path}
    written = mergekit_yaml(res, "s", local=local, saved_dtypes=("bfloat16", "float32"))
    assert written is not None
    config = yaml.safe_load(written)
    assert config.get("out_dtype") == ("float16" if "out_dtype" in dtype else None)
    line = "# mergekit saves every tensor in float32; this output saved each in its base tensor's dtype (bfloat16, float32)"
    assert (line in written) is note


@pytest.mark.parametrize(
    ("method", "config", "base_model"),
    [("linear", "ft1", "../m/ft1"), ("linear", "base", None), ("karcher", "base", None), ("nuslerp", "ft1", None)],
)
def test_a_config_model_over_inputs_is_written_only_where_mergekit_would_not_merge_it(
    recipe_file, method, config, base_model
):
    """mergekit merged a base_model outside `models` as a third input (linear, karcher) or
    took it as nuslerp's base: other tensors than the step's, or no file at all."""
    weights = "" if method == "karcher" else ", weight = 0.5"
    text = f"""
[steps.m]
method = "{method}"
inputs = [{{ model = "ft1"{weights} }}, {{ model = "ft2"{weights} }}]
config = "{config}"
"""
    config_file = config_of(recipe_file, text, "m")
    assert (config_file and config_file["base_model"]) == base_model


def test_a_step_s_config_model_is_written_as_base_model(recipe_file):
    text = """
[steps.stack]
method = "passthrough"
slices = [{ sources = [{ model = "ft1", layers = [0, 2] }] }, { sources = [{ model = "ft2", layers = [2, 4] }] }]
config = "base"
"""
    config = config_of(recipe_file, text, "stack")
    assert config["base_model"] == "../m/base" and "base_model" not in str(config["slices"])
