"""LoRA adapters applied by the engine (`base+adapter`): the applied model is peft's
`merge_and_unload` bit for bit (float32, bfloat16, float16; linear, embedding,
modules_to_save, rank and alpha patterns, rsLoRA, GPT-2's fan_in_fan_out with lora_bias),
mergekit's `model: base+adapter` (its --lora-merge-cache) gives the same bytes as the
imported recipe, two recipes share one applied model, and a hub adapter builds offline.

Adapters are made by peft on the tiny models, seeded (tests/lora_adapters.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import build_recipe, load_tensors
from hfcache import add_to_cache
from lora_adapters import peft_adapter, peft_merged, peft_merged_model

from mergepkg.errors import SourceError

pytestmark = pytest.mark.slow  # transformers, peft and mergekit beside the engine

FULL = dict(  # every kind a Llama adapter can have, with patterns that change r and alpha
    target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
    modules_to_save=["lm_head"],
    rank_pattern={"layers.1.self_attn.q_proj": 2},
    alpha_pattern={"v_proj": 3},
)


@pytest.fixture(scope="module")
def lora(models, tmp_path_factory) -> dict[str, Path]:
    """Bases (the tiny Llama in float32, bfloat16, float16; a tiny GPT-2 in float32 and
    bfloat16) and adapters made by peft on them."""
    from safetensors.torch import load_file, save_file
    from tiny import make_model, save_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("lora")
    m = {"base": models["base"], "ft1": models["ft1"]}
    m["base_bf16"] = make_model(root / "base_bf16", seed=0, dtype=torch.bfloat16)
    m["base_fp16"] = make_model(root / "base_fp16", seed=0, dtype=torch.float16)
    m["full"] = peft_adapter(root / "full", m["base"], seed=1, **FULL)
    m["rslora"] = peft_adapter(root / "rslora", m["base"], seed=2, target_modules="all-linear", use_rslora=True, r=8)
    m["dora"] = peft_adapter(root / "dora", m["base"], seed=3, use_dora=True)
    # the full adapter saved in bfloat16
    half = root / "full_bf16"
    half.mkdir()
    shutil.copy(m["full"] / "adapter_config.json", half)
    tensors = load_file(m["full"] / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, half / "adapter_model.safetensors")
    m["full_bf16"] = half
    torch.manual_seed(7)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=44, n_positions=64))
    for name, dtype in (("gpt2", torch.float32), ("gpt2_bf16", torch.bfloat16)):
        gpt2.to(dtype).save_pretrained(root / name)
        save_tokenizer(root / name)
        m[name] = root / name
    m["gpt2_lora"] = peft_adapter(
        root / "gpt2_lora",
        m["gpt2"],
        seed=4,
        model_class="GPT2LMHeadModel",
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    return m


def recipe(folder: Path, sources: dict[str, Path | str], body: str, name: str = "recipe.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{n} = {v}\n" if isinstance(v, str) else f'{n} = {{ path = "{v}" }}\n' for n, v in sources.items())
    path = folder / name
    path.write_text(f'[package]\nname = "{path.stem}"\nversion = "0.1.0"\n[sources]\n{lines}\n{textwrap.dedent(body)}')
    return path


def applied(path: Path, step: str = "b+a") -> tuple[dict[str, torch.Tensor], object]:
    report = build_recipe(path)
    return load_tensors(report.artifacts[step].folder), report


def linear_over(model: str, other: str) -> str:
    return f"""
        [steps.soup]
        method = "linear"
        inputs = [{{ model = "{model}", weight = 0.6 }}, {{ model = "{other}", weight = 0.4 }}]
    """


CASES = {  # base, adapter, the dtype peft loads the base in, model class
    "float32": ("base", "full", torch.float32, "LlamaForCausalLM"),
    "bfloat16": ("base_bf16", "full", torch.bfloat16, "LlamaForCausalLM"),
    "float16": ("base_fp16", "full", torch.float16, "LlamaForCausalLM"),
    "bfloat16-adapter": ("base_bf16", "full_bf16", torch.bfloat16, "LlamaForCausalLM"),
    "bfloat16-adapter-float32-base": ("base", "full_bf16", torch.float32, "LlamaForCausalLM"),
    "rslora-all-linear": ("base", "rslora", torch.float32, "LlamaForCausalLM"),
    "rslora-bfloat16": ("base_bf16", "rslora", torch.bfloat16, "LlamaForCausalLM"),
    "gpt2-fan_in_fan_out-lora_bias": ("gpt2", "gpt2_lora", torch.float32, "GPT2LMHeadModel"),
    "gpt2-bfloat16": ("gpt2_bf16", "gpt2_lora", torch.bfloat16, "GPT2LMHeadModel"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_applied_model_is_peft_merge_and_unload_bit_for_bit(case, lora, tmp_path):
    base, adapter, dtype, cls = CASES[case]
    other = "ft1" if cls == "LlamaForCausalLM" else base
    path = recipe(tmp_path, {"b": lora[base], "a": lora[adapter], "o": lora[other]}, linear_over("b+a", "o"))
    ours, _ = applied(path)
    theirs = peft_merged(lora[base], lora[adapter], dtype, cls)
    assert set(ours) <= set(theirs) and set(theirs) - set(ours) <= {"lm_head.weight"}  # GPT-2 ties its head
    differing = {k: int((ours[k] != theirs[k]).sum()) for k in ours if not torch.equal(ours[k], theirs[k])}
    assert differing == {}, differing
    assert {k: ours[k].dtype for k in ours} == {k: theirs[k].dtype for k in ours}
    # not vacuous: the adapter changed what it targets, and left the rest alone
    plain = load_tensors(lora[base])
    changed = {k for k in ours if not torch.equal(ours[k], plain[k])}
    if cls == "GPT2LMHeadModel":
        assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"} <= changed
    elif adapter == "rslora":  # every linear module but the head
        assert {"model.layers.0.self_attn.k_proj.weight", "model.layers.3.mlp.up_proj.weight"} <= changed
        assert not {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} & changed
    else:
        assert {"model.embed_tokens.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.weight"} <= changed
        assert "model.layers.0.self_attn.k_proj.weight" not in changed


def test_two_recipes_share_one_applied_model(lora, tmp_path):
    first = recipe(tmp_path / "one", {"b": lora["base"], "a": lora["full"], "o": lora["ft1"]}, linear_over("b+a", "o"))
    second = recipe(
        tmp_path / "two",
        {"llama": lora["base"], "ft": lora["ft1"], "tuned": lora["full"]},
        """
        [steps.arith]
        method = "task_arithmetic"
        base = "llama"
        inputs = [{ model = "ft", weight = 0.3 }, { model = "llama+tuned", weight = 0.7 }]
        """,
        name="other.toml",
    )
    one = build_recipe(first)
    assert one.built == ["b+a", "soup"]
    two = build_recipe(second)
    assert two.reused == ["llama+tuned"] and two.built == ["arith"]
    assert two.artifacts["llama+tuned"].folder == one.artifacts["b+a"].folder
    assert two.lock.steps["llama+tuned"].key == one.lock.steps["b+a"].key
    assert two.lock.steps["llama+tuned"].digest == one.lock.steps["b+a"].digest
    # the applied model has the base's side files: config and tokenizer
    folder = one.artifacts["b+a"].folder
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (folder / "tokenizer.json").is_file()


def test_a_dora_adapter_is_refused_at_its_source(lora, tmp_path):
    path = recipe(tmp_path, {"b": lora["base"], "a": lora["dora"], "o": lora["ft1"]}, linear_over("b+a", "o"))
    with pytest.raises(SourceError) as info:
        build_recipe(path)
    e = info.value
    assert "adapter 'a' uses DoRA (use_dora), which mergepkg cannot apply" in e.message
    assert "merge_and_unload" in (e.hint or "") and e.key == "sources.a" and e.line == 6


def test_a_hub_adapter_builds_offline_as_a_folder_does(lora, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    add_to_cache(cache, "tiny/base", lora["base"])
    add_to_cache(cache, "tiny/ft1", lora["ft1"])
    commit = add_to_cache(cache, "tiny/adapter", lora["full"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = {"b": '{ hf = "tiny/base" }', "a": '{ hf = "tiny/adapter" }', "o": '{ hf = "tiny/ft1" }'}
    report = build_recipe(recipe(tmp_path / "hub", hub, linear_over("b+a", "o")))
    assert report.lock.sources["a"].pin.commit == commit
    local = build_recipe(
        recipe(tmp_path / "local", {"b": lora["base"], "a": lora["full"], "o": lora["ft1"]}, linear_over("b+a", "o"))
    )
    assert report.lock.steps["b+a"].digest == local.lock.steps["b+a"].digest
    assert report.lock.steps["soup"].digest == local.lock.steps["soup"].digest


# -- mergekit's `model: base+adapter` ---------------------------------------------------------

MERGEKIT = {  # case -> (config template, the base for the adapter): {b}, {a}, {o} are folders
    "passthrough": ("merge_method: passthrough\nmodels:\n  - model: {b}+{a}\n", "base"),
    "linear": (
        "merge_method: linear\ndtype: float32\nmodels:\n"
        "  - model: {b}+{a}\n    parameters: {{weight: 0.6}}\n  - model: {o}\n    parameters: {{weight: 0.4}}\n",
        "base",
    ),
    "task_arithmetic-bfloat16": (
        "merge_method: task_arithmetic\nbase_model: {b}\nmodels:\n"
        "  - model: {b}+{a}\n    parameters: {{weight: 0.5}}\n",
        "base_bf16",
    ),
}


@pytest.mark.parametrize("case", list(MERGEKIT))
def test_mergekit_base_plus_adapter_gives_the_same_bytes(case, lora, tmp_path):
    from mergepkg.cli.app import main

    template, base = MERGEKIT[case]
    config = tmp_path / "config.yml"
    config.write_text(template.format(b=lora[base], a=lora["full"], o=lora["ft1"]))
    cache, out = tmp_path / "lora-cache", tmp_path / "mergekit-out"
    cmd = [
        str(Path(sys.executable).parent / "mergekit-yaml"),
        str(config),
        str(out),
        "--lora-merge-cache",
        str(cache),
        "--no-cuda",
        "--quiet",
        "--no-copy-tokenizer",
        "--no-write-model-card",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    imported = tmp_path / "recipe" / "imported.toml"
    assert main(["import", str(config), "-o", str(imported)]) == 0
    assert '+full"' in imported.read_text()  # the adapter is a source of its own, applied with `+`
    report = build_recipe(imported, tmp_path / "ours")
    (ours_folder,) = report.outputs.values()
    ours, theirs = load_tensors(ours_folder), load_tensors(out)
    assert sorted(ours) == sorted(theirs)
    differing = {k: int((ours[k] != theirs[k]).sum()) for k in ours if not torch.equal(ours[k], theirs[k])}
    assert differing == {}, differing
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in theirs.items()}
    # and the applied model itself: mergekit's cached merge of base and adapter
    (cached,) = [p for p in cache.iterdir() if p.is_dir()]
    (step,) = [n for n in report.artifacts if "+" in n]
    assert load_tensors(cached).keys() == load_tensors(report.artifacts[step].folder).keys()
    mine, its = load_tensors(report.artifacts[step].folder), load_tensors(cached)
    assert all(torch.equal(mine[k], its[k]) and mine[k].dtype == its[k].dtype for k in its)


# -- a base that ties its head to its embeddings ------------------------------------------------

TIED = {  # case -> the LoraConfig of an adapter peft makes on a tied base
    "lora-embed": dict(target_modules=["embed_tokens", "q_proj"]),
    "lora-head": dict(target_modules=["lm_head", "q_proj"]),  # peft folds it into the shared matrix
    "modules_to_save-embed": dict(modules_to_save=["embed_tokens"]),  # peft unties the two
    "modules_to_save-head": dict(modules_to_save=["lm_head"]),
    "modules_to_save-both": dict(modules_to_save=["embed_tokens", "lm_head"]),
    "lora-embed-modules_to_save-head": dict(target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"]),
    "lora-head-modules_to_save-embed": dict(target_modules=["lm_head", "q_proj"], modules_to_save=["embed_tokens"]),
    "ensure_weight_tying": dict(modules_to_save=["embed_tokens"], ensure_weight_tying=True),  # tied again
    # refused: two updates of the one matrix
    "lora-both": dict(target_modules=["embed_tokens", "lm_head", "q_proj"]),
    "ensure_weight_tying-lora": dict(target_modules=["embed_tokens", "q_proj"], ensure_weight_tying=True),
}
REFUSED_TIED = ("lora-both", "ensure_weight_tying-lora")
PASSTHROUGH = '[steps.out]\nmethod = "passthrough"\ninputs = ["b+a"]\n'


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with tie_word_embeddings (no lm_head.weight saved) in float32 and
    bfloat16, and the adapters of TIED, made by peft on it."""
    from tiny import save_tokenizer, tiny_config
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    config = tiny_config()
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    m = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model.to(dtype).save_pretrained(root / name)
        save_tokenizer(root / name)
        m[name] = root / name
    assert "lm_head.weight" not in load_tensors(m["float32"])
    for case, settings in TIED.items():
        m[case] = peft_adapter(root / case, m["float32"], seed=5, **settings)
    return m


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", [c for c in TIED if c not in REFUSED_TIED])
def test_on_a_tied_base_the_applied_model_is_peft_merge_and_unload(case, dtype, tied, tmp_path):
    from transformers import LlamaForCausalLM

    ours, report = applied(recipe(tmp_path, {"b": tied[dtype], "a": tied[case]}, PASSTHROUGH))
    merged = peft_merged_model(tied[dtype], tied[case], getattr(torch, dtype))
    theirs = {k: v.detach() for k, v in merged.state_dict().items()}
    folder = report.artifacts["b+a"].folder
    tie = json.loads((folder / "config.json").read_text())["tie_word_embeddings"]
    assert tie is merged.config.tie_word_embeddings
    assert set(theirs) - set(ours) == ({"lm_head.weight"} if tie else set()) and set(ours) <= set(theirs)
    differing = {k: int((ours[k] != theirs[k]).sum()) for k in ours if not torch.equal(ours[k], theirs[k])}
    assert differing == {}, differing
    assert {k: ours[k].dtype for k in ours} == {k: theirs[k].dtype for k in ours}
    # as transformers loads it: the head is peft's, tied or not
    loaded = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).state_dict()
    assert all(torch.equal(loaded[k], theirs[k]) for k in theirs)
    # not vacuous: the adapter changed the embeddings or the head
    plain = load_tensors(tied[dtype])["model.embed_tokens.weight"]
    assert not torch.equal(theirs["model.embed_tokens.weight"], plain) or not torch.equal(
        theirs["lm_head.weight"], plain
    )


@pytest.mark.parametrize("case", REFUSED_TIED)
def test_two_updates_of_a_tied_matrix_are_refused(case, tied, tmp_path):
    with pytest.raises(SourceError) as info:
        build_recipe(recipe(tmp_path, {"b": tied["float32"], "a": tied[case]}, PASSTHROUGH))
    e = info.value
    assert "has a LoRA update of model.embed_tokens and one of lm_head, which 'b' ties together" in e.message
    assert e.key == "sources.a"


# -- fan_in_fan_out: peft decides it per module ---------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cls", "target", "flag"),
    [
        ("base", "LlamaForCausalLM", "model.layers.0.self_attn.q_proj", True),  # a Linear: never transposed
        ("gpt2", "GPT2LMHeadModel", "transformer.h.0.attn.c_proj", False),  # a Conv1D: always transposed
    ],
)
def test_fan_in_fan_out_is_peft_per_module_not_the_config_flag(base, cls, target, flag, lora, tmp_path):
    # the flag contradicts the module (peft itself saves it as it forces it: written by hand here);
    # the module is square, so nothing but the bytes shows the transpose
    adapter = peft_adapter(
        tmp_path / "a", lora[base], seed=6, model_class=cls, target_modules=[target], fan_in_fan_out=not flag
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": flag}))
    ours, _ = applied(recipe(tmp_path, {"b": lora[base], "a": adapter}, PASSTHROUGH))
    theirs = peft_merged(lora[base], adapter, torch.float32, cls)
    weight = f"{target}.weight"
    assert ours[weight].shape[0] == ours[weight].shape[1]
    assert not torch.equal(ours[weight], load_tensors(lora[base])[weight])
    differing = {k: int((ours[k] != theirs[k]).sum()) for k in ours if not torch.equal(ours[k], theirs[k])}
    assert differing == {}, differing
