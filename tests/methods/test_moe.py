"""`method = "moe"`: Mixtral and Qwen2-MoE outputs from dense models, router rows per
gate mode, validation, keys, and experts that are cached steps of their own."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import build_recipe, load_tensors
from safetensors.torch import load_file

from mergepkg.cli.app import main
from mergepkg.errors import MergepkgError, ModelMismatchError, RecipeError
from mergepkg.layout.steps import lay_out
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

PROJ = ("gate_proj", "up_proj", "down_proj")
EXPERTS = """
experts = [
  { model = "ft1", prompts = ["12+3=", "4+4="], negative_prompts = ["abc"] },
  { model = "ft2", prompts = ["hello"] },
  { model = "ft3", prompts = ["what?"] },
]
"""


def moe_step(mode: str = "hidden", experts: str = EXPERTS, extra: str = "", name: str = "m") -> str:
    return (
        f'[steps.{name}]\nmethod = "moe"\nbase = "base"\n{textwrap.dedent(experts)}\n'
        f'params = {{ experts_per_token = 2, gate_mode = "{mode}" }}\n{extra}\n'
    )


def load(folder: Path):
    """transformers' model of `folder`, asserting nothing was missing or left over."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    assert info["mismatched_keys"] == set() and not info["error_msgs"], info
    return model.eval()


def generates(model, folder: Path) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)("12+3=", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)


# -- Mixtral from Llama ----------------------------------------------------------------
def test_mixtral_loads_with_no_missing_key_experts_equal_their_mlps_and_generates(write_recipe, tmp_path, models):
    out = tmp_path / "out"
    report = build_recipe(write_recipe(moe_step()), out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["model_type"] == "mixtral"
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (3, 2)
    model = load(out)
    assert type(model).__name__ == "MixtralForCausalLM"
    base = weights(models["base"])
    sources = [weights(models[f"ft{i}"]) for i in (1, 2, 3)]
    for i, layer in enumerate(model.model.layers):
        mlp = f"model.layers.{i}.mlp."
        for e, src in enumerate(sources):  # transformers fuses gate and up: gate_up_proj[e] = [gate; up]
            gate, up, down = (src[mlp + p + ".weight"] for p in PROJ)
            assert torch.equal(layer.mlp.experts.gate_up_proj[e], torch.cat([gate, up]))
            assert torch.equal(layer.mlp.experts.down_proj[e], down)
        assert layer.mlp.gate.weight.shape == (3, 32)
        assert torch.equal(layer.self_attn.q_proj.weight, base[f"model.layers.{i}.self_attn.q_proj.weight"])
        assert torch.equal(layer.input_layernorm.weight, base[f"model.layers.{i}.input_layernorm.weight"])
    assert torch.equal(model.model.embed_tokens.weight, base["model.embed_tokens.weight"])
    assert torch.equal(model.lm_head.weight, base["lm_head.weight"])
    generates(model, out)
    # on disk: the names transformers' own save_pretrained writes, one per expert
    saved = weights(out)
    assert torch.equal(
        saved["model.layers.2.block_sparse_moe.experts.1.w1.weight"], sources[1]["model.layers.2.mlp.gate_proj.weight"]
    )
    assert torch.equal(
        saved["model.layers.2.block_sparse_moe.experts.1.w2.weight"], sources[1]["model.layers.2.mlp.down_proj.weight"]
    )
    assert torch.equal(
        saved["model.layers.2.block_sparse_moe.experts.1.w3.weight"], sources[1]["model.layers.2.mlp.up_proj.weight"]
    )
    assert not any(".mlp." in n for n in saved)
    assert report.built == ["m"]


def test_hidden_rows_are_each_layers_input_at_the_last_prompt_token(write_recipe, tmp_path, models):
    """The router row of expert e in layer i: unit(mean over prompts of hidden_states[i][-1]
    - mean over negative prompts of the same), computed here independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    build_recipe(write_recipe(moe_step()), out)
    saved = weights(out)
    model = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(models["base"])

    def mean_last(prompts):
        states = []
        for p in prompts:
            ids = tok("<s>" + p, add_special_tokens=False, return_tensors="pt").input_ids
            assert ids[0, 0] == tok.bos_token_id and ids.shape[1] == len(p) + 1
            with torch.no_grad():
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            states.append(torch.stack([h[0, -1] for h in hs[:-1]]))  # (layers, hidden): input of each layer
        return sum(states) / len(states)

    want = torch.stack(
        [
            unit(mean_last(["12+3=", "4+4="]) - mean_last(["abc"])),
            unit(mean_last(["hello"])),
            unit(mean_last(["what?"])),
        ],
        dim=1,
    )  # (layers, experts, hidden)
    for i in range(4):
        got = saved[f"model.layers.{i}.block_sparse_moe.gate.weight"]
        torch.testing.assert_close(got, want[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    # layer 0's input is the embedding: no layer has run yet
    emb = weights(models["base"])["model.embed_tokens.weight"]
    ids = [tok("<s>" + p, add_special_tokens=False).input_ids[-1] for p in ("hello", "what?")]
    torch.testing.assert_close(saved["model.layers.0.block_sparse_moe.gate.weight"][1:], unit(emb[ids]))


def test_cheap_embed_rows_are_summed_prompt_embeddings_in_every_layer(write_recipe, tmp_path, models):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    build_recipe(write_recipe(moe_step("cheap_embed")), out)
    saved = weights(out)
    emb = weights(models["base"])["model.embed_tokens.weight"]
    tok = AutoTokenizer.from_pretrained(models["base"])

    def summed(prompts):
        return unit(sum(emb[tok("<s>" + p, add_special_tokens=False).input_ids].sum(0) for p in prompts))

    want = torch.stack([unit(summed(["12+3=", "4+4="]) - summed(["abc"])), summed(["hello"]), summed(["what?"])])
    for i in range(4):
        torch.testing.assert_close(saved[f"model.layers.{i}.block_sparse_moe.gate.weight"], want)
    generates(load(out), out)


def test_random_rows_are_seeded_per_tensor_and_need_no_prompts(write_recipe, tmp_path):
    experts = 'experts = ["ft1", "ft2"]'
    path = write_recipe(moe_step("random", experts))
    a = weights(next(iter(build_recipe(path, tmp_path / "a").outputs.values())))
    b = weights(next(iter(build_recipe(path, tmp_path / "b", seed=0).outputs.values())))
    c = weights(next(iter(build_recipe(path, tmp_path / "c", seed=5).outputs.values())))
    gates = [f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(4)]
    assert all(torch.equal(a[g], b[g]) for g in gates)
    assert not any(torch.equal(a[g], c[g]) for g in gates)
    assert not torch.equal(a[gates[0]], a[gates[1]])  # a generator per tensor, not one shared draw
    assert a[gates[0]].shape == (2, 32)


@pytest.mark.parametrize("mode", ["random", "uniform_random"])
def test_random_rows_are_drawn_on_the_cpu_whatever_the_device(write_recipe, mode):
    """A CUDA generator gives other numbers than a CPU one from the same seed, and the key
    holds no device: the rows are the CPU's draws, moved ("meta" stands in for a GPU here)."""
    from mergepkg.engine.routers import routers

    layout = lay(write_recipe(moe_step(mode, 'experts = ["ft1", "ft2"]')))["m"]
    on_cpu = routers(layout, {}, device="cpu", seed=3)
    elsewhere = routers(layout, {}, device="meta", seed=3)
    assert on_cpu.keys() == elsewhere.keys() and len(on_cpu) == 4
    for name, rows in elsewhere.items():
        assert rows.device.type == "meta" and rows.shape == on_cpu[name].shape == (2, 32)


def test_uniform_random_rows_are_seeded_and_within_linear_init_bounds(write_recipe, tmp_path):
    """mergekit-moe's uniform_random: U[-1/sqrt(hidden), 1/sqrt(hidden)), as torch.nn.Linear initialises."""
    path = write_recipe(moe_step("uniform_random", 'experts = ["ft1", "ft2"]'))
    a = weights(next(iter(build_recipe(path, tmp_path / "a").outputs.values())))
    b = weights(next(iter(build_recipe(path, tmp_path / "b").outputs.values())))
    gates = [f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(4)]
    bound = 1 / 32**0.5
    for g in gates:
        assert torch.equal(a[g], b[g]) and a[g].shape == (2, 32)
        assert a[g].abs().max() <= bound and a[g].abs().max() > 0.5 * bound  # spread over the range
    assert not torch.equal(a[gates[0]], a[gates[1]])
    generates(load(tmp_path / "a"), tmp_path / "a")


def test_the_base_may_be_an_expert_with_the_opt_in(write_recipe, tmp_path, models):
    experts = """experts = [
      { model = "base", prompts = ["hello"], allow_base_expert = true },
      { model = "ft1", prompts = ["12+3="] },
    ]"""
    out = tmp_path / "out"
    build_recipe(write_recipe(moe_step(experts=experts)), out)
    saved, base = weights(out), weights(models["base"])
    assert torch.equal(
        saved["model.layers.1.block_sparse_moe.experts.0.w2.weight"], base["model.layers.1.mlp.down_proj.weight"]
    )
    generates(load(out), out)


def test_bfloat16_experts_and_out_dtype(write_recipe, tmp_path, models):
    experts = """experts = [
      { model = "ft1_bf16", prompts = ["12+3="] },
      { model = "ft2", prompts = ["hello"] },
    ]"""
    out = tmp_path / "out"
    build_recipe(write_recipe(moe_step(experts=experts)), out)
    saved = weights(out)
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the base's dtype
    src = weights(models["ft1_bf16"])["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(saved["model.layers.0.block_sparse_moe.experts.0.w3.weight"], src.float())
    out16 = tmp_path / "out16"
    build_recipe(write_recipe(moe_step(experts=experts, extra='out_dtype = "bfloat16"')), out16)
    assert {t.dtype for t in weights(out16).values()} == {torch.bfloat16}
    assert json.loads((out16 / "config.json").read_text())["dtype"] == "bfloat16"
    generates(load(out16), out16)


def test_routers_do_not_depend_on_the_thread_count(write_recipe, tmp_path, monkeypatch):
    path = write_recipe(moe_step())
    digests = []
    for threads in (1, 2):
        monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / f"home{threads}"))
        digests.append(build_recipe(path, threads=threads).lock.steps["m"].digest)
    assert digests[0] == digests[1]


# -- Qwen2 -> Qwen2-MoE ------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen2 (q/k/v biases) and two fine-tune-like variants, with the test tokenizer."""
    from tiny import VOCAB, save_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("qwen")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    base = Qwen2ForCausalLM(config)
    folders = {}
    for i in range(3):
        model = Qwen2ForCausalLM(config)
        model.load_state_dict(base.state_dict())
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02 * (i > 0))
        folders[f"q{i}"] = root / f"q{i}"
        model.save_pretrained(folders[f"q{i}"])
        save_tokenizer(folders[f"q{i}"])
    return folders


def test_qwen2_inputs_make_a_qwen2_moe_with_a_shared_expert(write_recipe, tmp_path, qwen):
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in qwen.items())
    body = """
        [steps.m]
        method = "moe"
        base = "q0"
        experts = [{ model = "q1", prompts = ["12+3="] }, { model = "q2", prompts = ["hello"] }]
        shared_expert = { model = "q0", prompts = ["what?"] }
        params = { experts_per_token = 1 }
    """
    path = write_recipe(body, sources=False)
    path.write_text(path.read_text().replace("[steps.m]", f"[sources]\n{sources}\n[steps.m]"))
    out = tmp_path / "out"
    build_recipe(path, out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2MoeForCausalLM"]
    assert (config["num_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]) == (2, 1, 64)
    model = load(out)
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    q = {k: weights(v) for k, v in qwen.items()}
    for i, layer in enumerate(model.model.layers):
        mlp = f"model.layers.{i}.mlp."
        for e, src in enumerate((q["q1"], q["q2"])):
            gate, up, down = (src[mlp + p + ".weight"] for p in PROJ)
            assert torch.equal(layer.mlp.experts.gate_up_proj[e], torch.cat([gate, up]))
            assert torch.equal(layer.mlp.experts.down_proj[e], down)
        assert torch.equal(layer.mlp.shared_expert.up_proj.weight, q["q0"][mlp + "up_proj.weight"])
        assert torch.equal(layer.self_attn.k_proj.bias, q["q0"][f"model.layers.{i}.self_attn.k_proj.bias"])
        assert layer.mlp.shared_expert_gate.weight.shape == (1, 32)
        torch.testing.assert_close(layer.mlp.shared_expert_gate.weight.norm(), torch.tensor(1.0))
    generates(model, out)

    # without a shared expert: a located error before any tensor is read
    path.write_text(path.read_text().replace('shared_expert = { model = "q0", prompts = ["what?"] }\n', ""))
    with pytest.raises(RecipeError) as info:
        lay(path)
    assert info.value.key == "steps.m" and "needs a shared expert" in info.value.message


# -- validation -----------------------------------------------------------------------------
def lay(path: Path):
    res = resolve(load_recipe(path), Session())
    return lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})[0]


BAD = [
    # (id, experts/extra, key, needle on the reported line, message fragment, hint fragment)
    (
        "fewer-experts-than-per-token",
        'experts = [{ model = "ft1", prompts = ["a"] }]',
        "steps.m.params.experts_per_token",
        "params = {",
        "experts_per_token is 2 but the step has 1 expert",
        "set params.experts_per_token = 1",
    ),
    (
        "identical-prompts",
        'experts = [{ model = "ft1", prompts = ["a", "b"] }, { model = "ft2", prompts = ["b", "a"] }]',
        "steps.m.experts[1].prompts",
        "experts = [",
        "every expert has the same prompts",
        "give each expert prompts",
    ),
    (
        "base-without-opt-in",
        'experts = [{ model = "base", prompts = ["a"] }, { model = "ft2", prompts = ["b"] }]',
        "steps.m.experts[0].model",
        "experts = [",
        "expert 'base' is the base model itself",
        "allow_base_expert = true",
    ),
    (
        "opt-in-on-a-non-base",
        'experts = [{ model = "ft1", prompts = ["a"], allow_base_expert = true }, { model = "ft2", prompts = ["b"] }]',
        "steps.m.experts[0].allow_base_expert",
        "experts = [",
        "'ft1' is not the base",
        "remove allow_base_expert",
    ),
    (
        "no-prompts-in-hidden-mode",
        'experts = [{ model = "ft1", prompts = ["a"] }, "ft2"]',
        "steps.m.experts[1]",
        "experts = [",
        "gate_mode 'hidden' needs prompts for every expert",
        'gate_mode = "random"',
    ),
    (
        "empty-prompt",
        'experts = [{ model = "ft1", prompts = ["a", ""] }, "ft2"]',
        "steps.m.experts[0].prompts[1]",
        "experts = [",
        "expected a non-empty string",
        None,
    ),
    (
        "unknown-expert-model",
        'experts = [{ model = "ft9", prompts = ["a"] }, "ft2"]',
        "steps.m.experts[0].model",
        "experts = [",
        "no source or step named 'ft9'",
        "did you mean",
    ),
    (
        "unknown-expert-key",
        'experts = [{ model = "ft1", prompt = ["a"] }, "ft2"]',
        "steps.m.experts[0].prompt",
        "experts = [",
        "unknown key 'prompt'",
        "prompts",
    ),
    (
        "inputs-instead-of-experts",
        'inputs = ["ft1", "ft2"]',
        "steps.m.inputs",
        "inputs = [",
        "method 'moe' takes no `inputs`",
        "under `experts`",
    ),
    (
        "tokenizer-setting",
        EXPERTS + 'tokenizer = "ft1"',
        "steps.m.tokenizer",
        "tokenizer =",
        "method 'moe' takes no `tokenizer`",
        "base's tokenizer",
    ),
    (
        "shared-expert-on-mixtral",
        EXPERTS + 'shared_expert = { model = "ft1", prompts = ["z"] }',
        "steps.m.shared_expert",
        "shared_expert =",
        "a Mixtral model (from 'llama' inputs) has no shared expert",
        "for Qwen2 inputs",
    ),
    (
        "different-architecture",
        'experts = [{ model = "ft1", prompts = ["a"] }, { model = "gpt", prompts = ["b"] }]',
        "steps.m.experts[1].model",
        "experts = [",
        "architecture of 'gpt' (['GPT2LMHeadModel']) differs from the base 'base'",
        "experts must share the base's architecture",
    ),
    (
        "different-shape",
        'experts = [{ model = "ft1", prompts = ["a"] }, { model = "wide", prompts = ["b"] }]',
        "steps.m.experts[1].model",
        "experts = [",
        "tensor model.layers.0.mlp.gate_proj.weight: 'wide' has shape [96, 48] but the base 'base' has [64, 32]",
        "experts need the base's MLP shapes",
    ),
    (
        "different-layer-count",
        'experts = [{ model = "ft1", prompts = ["a"] }, { model = "deep", prompts = ["b"] }]',
        "steps.m.experts[1].model",
        "experts = [",
        "'deep' has 6 layers but the base 'base' has 4",
        None,
    ),
]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt") / "gpt"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=44, n_embd=32, n_layer=4, n_head=4, n_positions=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("body,key,needle,message,hint", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_moe_steps_are_located_errors(write_recipe, gpt, capsys, body, key, needle, message, hint):
    path = write_recipe(moe_step(experts=body) + f'\n[sources.gpt]\npath = "{gpt}"\n').resolve()
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    line = next(
        i
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if needle in text and i > path.read_text().splitlines().index("[steps.m]")
    )
    assert f"error: {path}:{line}: {key}: " in err, err
    assert message in err, err
    if hint:
        assert hint in err, err
    with pytest.raises(MergepkgError) as info:
        lay(path)
    assert info.value.key == key
    assert isinstance(
        info.value,
        ModelMismatchError if "architecture" in message or "shape" in message or "layers" in message else RecipeError,
    )


def test_unknown_gate_mode_suggests_one(write_recipe, capsys):
    path = write_recipe(moe_step("hiden")).resolve()
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        "steps.m.params.gate_mode: expected one of 'hidden', 'cheap_embed', 'random', 'uniform_random', got 'hiden'"
        in err
    )
    assert "did you mean 'hidden'" in err.lower()


# -- keys -------------------------------------------------------------------------------------
def keys_of(path: Path) -> dict[str, str]:
    return resolve(load_recipe(path), Session()).keys


def test_prompts_mode_and_experts_per_token_are_in_the_key_the_opt_in_is_not(write_recipe):
    base = keys_of(write_recipe(moe_step()))["m"]
    edits = [
        moe_step().replace('"hello"', '"hello!"'),
        moe_step().replace('negative_prompts = ["abc"]', 'negative_prompts = ["abd"]'),
        moe_step().replace('prompts = ["12+3=", "4+4="]', 'prompts = ["4+4=", "12+3="]'),  # float sums follow the order
        moe_step("cheap_embed"),
        moe_step().replace("experts_per_token = 2", "experts_per_token = 3"),
        moe_step().replace('model = "ft3"', 'model = "ft1_bf16"'),
    ]
    keys = [keys_of(write_recipe(body))["m"] for body in edits]
    assert len({base, *keys}) == len(edits) + 1
    # defaults written out and the opt-in change nothing
    same = moe_step().replace('params = { experts_per_token = 2, gate_mode = "hidden" }', "")
    assert keys_of(write_recipe(same))["m"] == base
    with_base = (
        'experts = [{ model = "base", prompts = ["a"], allow_base_expert = true }, { model = "ft1", prompts = ["b"] }]'
    )
    entry = resolve(load_recipe(write_recipe(moe_step(experts=with_base))), Session()).entries["m"]
    assert "allow_base_expert" not in json.dumps(entry)
    assert entry["moe"]["experts"][0]["prompts"] == ["a"] and entry["seed"] is None


def test_random_mode_keys_the_seed_not_the_prompts(write_recipe):
    path = write_recipe(moe_step("random"))
    entry = resolve(load_recipe(path), Session(), seed=3).entries["m"]
    assert entry["seed"] == 3 and "prompts" not in json.dumps(entry)
    assert keys_of(path) == keys_of(write_recipe(moe_step("random").replace('"hello"', '"bye"')))


# -- cached experts ----------------------------------------------------------------------------
CACHED = """
[steps.e1]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 0.3 }]

[steps.e2]
method = "ties"
base = "base"
inputs = [{ model = "ft2", weight = 1.0, density = 0.5 }, { model = "ft3", weight = 0.5, density = 0.5 }]

[steps.e3]
method = "linear"
inputs = [{ model = "ft3", weight = 0.7 }, { model = "ft1", weight = 0.3 }]

[steps.moe]
method = "moe"
base = "base"
experts = [
  { model = "e1", prompts = ["12+3="] },
  { model = "e2", prompts = ["hello"] },
  { model = "e3", prompts = ["what?"] },
]
"""


def test_editing_one_expert_rebuilds_that_expert_and_the_moe_only(write_recipe, tmp_path, capsys):
    from helpers import plan_steps

    path = write_recipe(CACHED).resolve()
    first = build_recipe(path, tmp_path / "out")
    assert first.built == ["e1", "e2", "e3", "moe"]
    e2_before = load_tensors(first.artifacts["e2"].folder)

    path.write_text(path.read_text().replace('density = 0.5 }, { model = "ft3"', 'density = 0.6 }, { model = "ft3"'))
    assert main(["plan", str(path)]) == 0
    cap = capsys.readouterr()
    states = {n: s["state"].split()[0] for n, s in plan_steps(cap.out).items()}
    assert states == {"moe": "build", "e1": "stored", "e2": "build", "e3": "stored"}
    assert "2 stored, 2 to build" in cap.err

    second = build_recipe(path, tmp_path / "out")
    assert second.built == ["e2", "moe"] and second.reused == ["e1", "e3"]
    assert second.lock.steps["e1"] == first.lock.steps["e1"] and second.lock.steps["e3"] == first.lock.steps["e3"]
    out = load_tensors(tmp_path / "out")
    e2 = load_tensors(second.artifacts["e2"].folder)
    assert not torch.equal(e2["model.layers.1.mlp.up_proj.weight"], e2_before["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(
        out["model.layers.1.block_sparse_moe.experts.1.w3.weight"], e2["model.layers.1.mlp.up_proj.weight"]
    )
    generates(load(tmp_path / "out"), tmp_path / "out")


def test_validate_and_plan_know_the_moe_tensors_before_reading_any(write_recipe, models):
    lay_ = lay(write_recipe(moe_step()))["m"]
    names = [t.name for t in lay_.tensors]
    assert len(names) == 3 + 4 * (4 + 2 + 3 * 3 + 1)  # outer; per layer attention, norms, experts, router
    routers = [t for t in lay_.tensors if not t.parts]
    assert [t.name for t in routers] == [f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(4)]
    assert all(t.info.shape == (3, 32) for t in routers)
    assert lay_.config["num_local_experts"] == 3 and lay_.bytes_in == sum(
        t.info.nbytes for t in lay_.tensors if t.parts
    )


# -- steps of other recipes ----------------------------------------------------------------------
def test_an_moe_step_of_another_recipe_keeps_its_key_and_reports_errors_in_its_file(write_recipe, tmp_path):
    other = write_recipe(CACHED, name="other.toml")
    main_ = write_recipe(
        '[steps.top]\nmethod = "linear"\ninputs = [{ model = "mix", weight = 1.0 }]\n', name="main.toml"
    )
    main_.write_text(
        main_.read_text().replace("[sources]\n", '[sources]\nmix = { recipe = "other.toml", step = "moe" }\n')
    )
    alone = resolve(load_recipe(other), Session())
    res = resolve(load_recipe(main_), Session())
    assert res.plan.order == ("mix::e1", "mix::e2", "mix::e3", "mix::moe", "top")
    assert res.recipe.steps["mix::moe"].moe.models == ("mix::e1", "mix::e2", "mix::e3")
    assert res.keys["mix::moe"] == alone.keys["moe"]
    build_recipe(other, tmp_path / "o1")
    report = build_recipe(main_, tmp_path / "o2")
    assert report.built == ["top"] and len(report.reused) == 4
    generates(load(tmp_path / "o2"), tmp_path / "o2")

    # a layout error of the imported step is located in its own file
    other.write_text(
        other.read_text().replace('{ model = "e3", prompts = ["what?"] }', '{ model = "deep", prompts = ["what?"] }')
    )
    with pytest.raises(ModelMismatchError) as info:
        lay(main_)
    assert info.value.file == str(other.resolve()) and info.value.key == "steps.moe.experts[2].model"
    assert info.value.line == other.read_text().splitlines().index('  { model = "deep", prompts = ["what?"] },') + 1


def test_an_imported_step_may_be_an_expert(write_recipe, tmp_path):
    write_recipe(CACHED, name="other.toml")
    main_ = write_recipe(
        moe_step(experts='experts = [{ model = "x", prompts = ["a"] }, { model = "ft1", prompts = ["b"] }]'),
        name="main.toml",
    )
    main_.write_text(
        main_.read_text().replace("[sources]\n", '[sources]\nx = { recipe = "other.toml", step = "e2" }\n')
    )
    report = build_recipe(main_, tmp_path / "o")
    assert report.built == ["x::e2", "m"]
    out, e2 = weights(tmp_path / "o"), load_tensors(report.artifacts["x::e2"].folder)
    assert torch.equal(
        out["model.layers.3.block_sparse_moe.experts.0.w1.weight"], e2["model.layers.3.mlp.gate_proj.weight"]
    )


def test_mistral_inputs_make_a_mixtral_too(write_recipe, tmp_path):
    from tiny import VOCAB, save_tokenizer
    from transformers import MistralConfig, MistralForCausalLM

    folders = {}
    for i in range(3):
        torch.manual_seed(i)
        config = MistralConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=16,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
        folders[i] = tmp_path / f"mistral{i}"
        MistralForCausalLM(config).save_pretrained(folders[i])
        save_tokenizer(folders[i])
    path = write_recipe(
        moe_step(experts='experts = [{ model = "m1", prompts = ["a"] }, { model = "m2", prompts = ["b"] }]').replace(
            'base = "base"', 'base = "m0"'
        ),
        sources=False,
    )
    path.write_text(
        path.read_text().replace(
            "[steps.m]",
            "[sources]\n" + "".join(f'm{i} = {{ path = "{f}" }}\n' for i, f in folders.items()) + "\n[steps.m]",
        )
    )
    out = tmp_path / "out"
    build_recipe(path, out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["sliding_window"] is None
    generates(load(out), out)


def test_the_lock_records_moe_settings_that_change_no_byte(write_recipe):
    """allow_base_expert and random-mode prompts are not in the key, but the recipe hash
    in the lock still sees them, so `--locked` says the recipe changed."""
    from mergepkg.lockfile import differences

    with_base = (
        'experts = [{ model = "base", prompts = ["a"], allow_base_expert = true }, { model = "ft1", prompts = ["b"] }]'
    )
    path = write_recipe(moe_step("random", with_base))
    before = resolve(load_recipe(path), Session()).lock({})
    path.write_text(path.read_text().replace('prompts = ["a"]', 'prompts = ["c"]'))
    after = resolve(load_recipe(path), Session()).lock({})
    assert before.steps == after.steps
    assert differences(before, after) == ["the recipe changed"]


def test_a_lower_compute_dtype_never_rounds_the_copied_weights(write_recipe, tmp_path, models):
    """`dtype` is the gate forward pass's; copied tensors keep their stored bytes."""
    out = tmp_path / "out"
    build_recipe(write_recipe(moe_step(extra='dtype = "bfloat16"')), out)
    saved, base, ft1 = weights(out), weights(models["base"]), weights(models["ft1"])
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(
        saved["model.layers.1.block_sparse_moe.experts.0.w1.weight"], ft1["model.layers.1.mlp.gate_proj.weight"]
    )


def test_an_moe_output_has_its_base_vocabulary_before_it_is_built(write_recipe, tmp_path, models):
    """A step after an unbuilt moe step aligns against the base's vocabulary, as it
    will after the build: a union over it plans and builds."""
    other = """experts = [
      { model = "ft3", prompts = ["12+3="] },
      { model = "ft1", prompts = ["hello"] },
      { model = "ft2", prompts = ["what?"] },
    ]"""
    body = (
        moe_step()
        + moe_step(experts=other, name="m2")
        + (
            '[steps.u]\nmethod = "linear"\ntokenizer = { source = "union" }\n'
            'inputs = [{ model = "m", weight = 0.5 }, { model = "m2", weight = 0.5 }]\n'
        )
    )
    path = write_recipe(body)
    res = resolve(load_recipe(path), Session())
    laid, _ = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    assert laid["m"].vocab is not None
    report = build_recipe(path, tmp_path / "out")
    assert (report.outputs["u"] / "tokenizer.json").is_file()


def test_the_base_under_another_name_is_the_base(write_recipe, models, capsys):
    """The same folder as a second source is still the base: the opt-in is needed, and
    accepted there."""
    again = f'[sources.base_again]\npath = "{models["base"]}"\n'
    experts = """experts = [{ model = "base_again", prompts = ["a"] }, { model = "ft1", prompts = ["b"] }]"""
    path = write_recipe(again + moe_step(experts=experts), name="again.toml")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "steps.m.experts[0].model: expert 'base_again' is the base model itself ('base' under another name)" in err
    allowed = experts.replace('prompts = ["a"] }', 'prompts = ["a"], allow_base_expert = true }')
    assert main(["validate", str(write_recipe(again + moe_step(experts=allowed), name="ok.toml"))]) == 0
