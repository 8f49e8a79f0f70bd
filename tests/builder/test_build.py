"""End to end through the engine: real safetensors in, real models out."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import build_one, build_recipe, load_tensors

from mergepkg.layout.steps import lay_out
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

W = "weight = 1.0"
STEPS = {
    "linear": 'inputs = [{ model = "ft1", weight = 0.6 }, { model = "ft2", weight = 0.4 }]',
    "slerp": 'base = "base"\ninputs = ["ft1"]\nparams = { t = [0, 0.5, 1] }',
    "nuslerp": 'inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]',
    "task_arithmetic": f'base = "base"\ninputs = [{{ model = "ft1", {W} }}, {{ model = "ft2", weight = 0.5 }}]',
    "ties": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.5 }}, {{ model = "ft2", {W}, density = 0.5 }}]',
    "dare_ties": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.5 }}, {{ model = "ft2", {W}, density = 0.5 }}]',
    "dare_linear": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.5 }}, {{ model = "ft2", {W}, density = 0.5 }}]',
    "breadcrumbs": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.8 }}, {{ model = "ft2", {W}, density = 0.8 }}]',
    "breadcrumbs_ties": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.8 }}, {{ model = "ft2", {W}, density = 0.8 }}]',
    "della": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.5 }}, {{ model = "ft2", {W}, density = 0.5 }}]',
    "della_linear": f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = 0.5 }}, {{ model = "ft2", {W}, density = 0.5 }}]',
    "model_stock": 'base = "base"\ninputs = ["ft1", "ft2", "ft3"]',
    "passthrough": 'slices = [\n  { sources = [{ model = "ft1", layers = [0, 3] }] },\n  { sources = [{ model = "ft2", layers = [1, 4] }] },\n]',
}


def step(method: str, name: str = "m", extra: str = "") -> str:
    return f'[steps.{name}]\nmethod = "{method}"\n{STEPS[method]}\n{extra}\n'


@pytest.mark.parametrize("method", sorted(STEPS))
def test_every_method_builds_a_model_transformers_loads_and_generates(method, write_recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    tensors = build_one(write_recipe(step(method)), out)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("12+3=", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()


def test_passthrough_stacks_renumbers_and_updates_config(write_recipe, tmp_path, models):
    out = tmp_path / "out"
    tensors = build_one(write_recipe(step("passthrough")), out)
    ft1, ft2 = load_tensors(models["ft1"]), load_tensors(models["ft2"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    for i in range(3):
        assert torch.equal(tensors[f"model.layers.{i}.mlp.up_proj.weight"], ft1[f"model.layers.{i}.mlp.up_proj.weight"])
        assert torch.equal(
            tensors[f"model.layers.{3 + i}.self_attn.q_proj.weight"],
            ft2[f"model.layers.{1 + i}.self_attn.q_proj.weight"],
        )
    assert torch.equal(tensors["model.embed_tokens.weight"], ft1["model.embed_tokens.weight"])  # first slice
    assert torch.equal(tensors["lm_head.weight"], ft2["lm_head.weight"])  # last slice
    assert not any(k.startswith("model.layers.6.") for k in tensors)


def test_gradient_runs_across_layers(write_recipe, tmp_path, models):
    tensors = build_one(write_recipe(step("slerp")), tmp_path / "out")
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    name = "model.layers.{}.self_attn.o_proj.weight"
    torch.testing.assert_close(tensors[name.format(0)], base[name.format(0)])  # t = 0 at the first layer
    torch.testing.assert_close(tensors[name.format(3)], ft1[name.format(3)])  # t = 1 at the last
    torch.testing.assert_close(tensors["lm_head.weight"], base["lm_head.weight"])  # non-layer tensors: t = 0


def test_filters_pick_values_per_tensor(write_recipe, tmp_path, models):
    path = write_recipe("""
        [steps.m]
        method = "linear"
        inputs = [
          { model = "ft1", weight = [{ filter = "mlp", value = 1.0 }, { value = 0.0 }] },
          { model = "ft2", weight = [{ filter = "mlp", value = 0.0 }, { value = 1.0 }] },
        ]
    """)
    tensors = build_one(path, tmp_path / "out")
    ft1, ft2 = load_tensors(models["ft1"]), load_tensors(models["ft2"])
    assert torch.equal(tensors["model.layers.1.mlp.gate_proj.weight"], ft1["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(tensors["model.layers.1.self_attn.k_proj.weight"], ft2["model.layers.1.self_attn.k_proj.weight"])


def test_sharded_and_bin_inputs_read_like_single_files(write_recipe, tmp_path):
    body = 'inputs = [{ model = "%s", weight = 1 }, { model = "%s", weight = 1 }]'
    plain = build_one(write_recipe('[steps.m]\nmethod = "linear"\n' + body % ("ft1", "ft2")), tmp_path / "a")
    other = build_one(
        write_recipe('[steps.m]\nmethod = "linear"\n' + body % ("ft1_sharded", "ft2_bin"), name="r2.toml"),
        tmp_path / "b",
    )
    assert plain.keys() == other.keys()
    assert all(torch.equal(plain[k], other[k]) for k in plain)


def test_output_is_sharded_with_an_index(write_recipe, tmp_path):
    from transformers import AutoModelForCausalLM

    build_recipe(write_recipe(step("linear")), tmp_path / "out", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 3 and all((tmp_path / "out" / f).is_file() for f in files)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_out_dtype_and_compute_dtype(write_recipe, tmp_path):
    tensors = build_one(write_recipe(step("ties", extra='dtype = "bfloat16"\nout_dtype = "float16"')), tmp_path / "out")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def test_bf16_inputs_keep_their_dtype_by_default(write_recipe, tmp_path):
    path = write_recipe(
        '[steps.m]\nmethod = "task_arithmetic"\nbase = "ft1_bf16"\ninputs = [{ model = "ft2", weight = 1 }]\n'
    )
    tensors = build_one(path, tmp_path / "out")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_steps_feed_steps_and_tokenizer_choice(write_recipe, tmp_path, models):
    path = write_recipe(
        step("linear", "soup")
        + step("ties", "final").replace('model = "ft2"', 'model = "soup"')
        + 'tokenizer = "soup"\n'
    )
    res = resolve(load_recipe(path), Session())
    assert res.plan.order == ("soup", "final")
    laid, _ = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    assert laid["final"].tokenizer_from == "soup"
    outputs = build_recipe(path, tmp_path / "out").outputs
    assert list(outputs) == ["final"] and (tmp_path / "out" / "tokenizer.json").is_file()


def test_random_methods_are_reproducible_and_order_independent(write_recipe, tmp_path):
    a = step("dare_ties", "x") + step("della", "y")
    b = step("della", "y") + step("dare_ties", "x")
    first = build_recipe(write_recipe(a, name="a.toml"), tmp_path / "a", home=tmp_path / "h1").outputs
    again = build_recipe(write_recipe(a, name="a.toml"), tmp_path / "a2", home=tmp_path / "h2", threads=1).outputs
    swapped = build_recipe(write_recipe(b, name="b.toml"), tmp_path / "b", home=tmp_path / "h3").outputs
    for name in ("x", "y"):
        t1, t2, t3 = (load_tensors(d[name]) for d in (first, again, swapped))
        assert all(torch.equal(t1[k], t2[k]) and torch.equal(t1[k], t3[k]) for k in t1)
    reseeded = build_recipe(write_recipe(a, name="a.toml"), tmp_path / "c", seed=7).outputs
    t1, t4 = load_tensors(first["x"]), load_tensors(reseeded["x"])
    assert not all(torch.equal(t1[k], t4[k]) for k in t1)


def test_validate_reports_sizes_without_reading_tensors(write_recipe):
    res = resolve(load_recipe(write_recipe(step("linear"))), Session())
    layout = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})[0]["m"]
    assert layout.bytes_in == 2 * layout.bytes_out > 0


def test_slices_with_a_merge_method_and_slice_params(write_recipe, tmp_path, models):
    path = write_recipe("""
        [steps.blend]
        method = "slerp"
        base = "base"
        slices = [
          { sources = [{ model = "base", layers = [0, 2] }, { model = "ft1", layers = [0, 2] }], params = { t = [0, 1] } },
          { sources = [{ model = "base", layers = [2, 4] }, { model = "ft1", layers = [2, 4] }], params = { t = 0.5 } },
        ]
    """)
    out = build_one(path, tmp_path / "out")
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    name = "model.layers.{}.mlp.up_proj.weight"
    torch.testing.assert_close(out[name.format(0)], base[name.format(0)])
    torch.testing.assert_close(out[name.format(1)], ft1[name.format(1)])
    assert not torch.allclose(out[name.format(2)], base[name.format(2)])
    assert not torch.allclose(out[name.format(2)], ft1[name.format(2)])


@pytest.mark.slow
def test_gpt2_style_layers_are_stacked_too(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=50, n_positions=32)).save_pretrained(
        tmp_path / "g"
    )
    path = tmp_path / "r.toml"
    path.write_text(
        '[package]\nname = "g"\nversion = "1"\n[sources]\ng = { path = "g" }\n[steps.tall]\n'
        'method = "passthrough"\nslices = [{ sources = [{ model = "g", layers = [0, 3] }] },'
        ' { sources = [{ model = "g", layers = [1, 3] }] }]\n'
    )
    tensors = build_one(path, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_layer"] == 5
    assert "transformer.h.4.attn.c_attn.weight" in tensors
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.n_layer == 5


def test_an_all_nan_input_is_warned_about_by_name(write_recipe, tmp_path, models, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mergepkg.cli.app import main

    nan = tmp_path / "nan"
    shutil.copytree(models["ft1"], nan)
    tensors = load_file(nan / "model.safetensors")
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    path = write_recipe(
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "bad", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nbad = {{ path = "{nan}" }}\n'))
    code = main(["build", str(path), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 0
    assert (
        "warning: MP302: " in err and "steps.m.inputs[0]: 'bad' tensor model.norm.weight: every value is NaN" in err
    ), err
    assert err.count("every value is NaN") == 1


def test_outputs_take_the_shard_size_asked_for_even_when_stored(write_recipe, tmp_path, models, capsys):
    from helpers import load_tensors

    from mergepkg.cli.app import main
    from mergepkg.io.digest import model_digest

    path = write_recipe(
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    assert main(["build", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    assert main(["build", str(path), "--out", str(tmp_path / "many"), "-q", "--shard-size", "20KB"]) == 0
    err = capsys.readouterr().err
    assert "0 built, 1 reused" in err, err
    shards = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "many" / "model.safetensors.index.json").is_file(), shards
    assert [p.name for p in (tmp_path / "one").glob("*.safetensors")] == ["model.safetensors"]
    assert model_digest(tmp_path / "many") == model_digest(tmp_path / "one")
    one, many = load_tensors(tmp_path / "one"), load_tensors(tmp_path / "many")
    assert one.keys() == many.keys() and all(one[k].equal(many[k]) for k in one)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "many")  # transformers follows the index


def test_a_slice_of_the_base_alone_keeps_the_base_s_layers(write_recipe, tmp_path, models):
    """As mergekit's task-vector family returns the base when a slice has no other model."""
    from mergepkg.errors import RecipeError

    body = """
        [steps.m]
        method = "{method}"
        base = "base"
        slices = [
          {{ sources = [{{ model = "base", layers = [0, 2] }}, {{ model = "ft1", layers = [0, 2], weight = 1.0{more} }}] }},
          {{ sources = [{{ model = "base", layers = [2, 4] }}] }},
        ]
        """
    tensors = build_one(write_recipe(body.format(method="ties", more=", density = 0.5")), tmp_path / "out")
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    name = "model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(tensors[name.format(2)], base[name.format(2)]) and torch.equal(
        tensors[name.format(3)], base[name.format(3)]
    )
    assert not torch.equal(tensors[name.format(0)], base[name.format(0)])
    assert not torch.equal(tensors[name.format(0)], ft1[name.format(0)])
    with pytest.raises(RecipeError, match=r"takes exactly 1 model besides the base, got 0"):
        load_recipe(
            write_recipe(body.format(method="slerp", more="").replace(", weight = 1.0", "") + "params = { t = 0.5 }\n")
        )
