"""Stacked slices over architectures other than Llama's names, and weight files beside a
model's: laid out from stub models (numpy safetensors, no torch), so these are fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mergepkg.errors import RecipeError, SourceError
from mergepkg.io.folder import index_files, weight_files
from mergepkg.io.tensors import scan_tensors
from mergepkg.layout.steps import lay_out
from mergepkg.layout.types import is_pre
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.resolve.sources import hub_weight_files
from mergepkg.store.session import Session


def stub(folder: Path, names: list[str], config: dict, value: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({n: np.full((4, 4), value, dtype=np.float32) for n in names}, folder / "model.safetensors")
    return folder


def laid_out(tmp_path: Path, models: dict[str, Path], step: str) -> dict[str, list[str]]:
    """The output tensor names of the recipe's step `s`, each with the models it reads."""
    sources = "".join(f'{name} = {{ path = "{folder}" }}\n' for name, folder in models.items())
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[package]\nname = "t"\nversion = "0.1.0"\n[sources]\n{sources}\n[steps.s]\n{step}')
    res = resolve(load_recipe(recipe), Session())
    laid, _ = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    return {t.name: [p.model for p in t.parts] for t in laid["s"].tensors}


STACK = 'method = "passthrough"\nslices = [{ sources = [{ model = "a", layers = [0, 2] }] }, { sources = [{ model = "b", layers = [2, 4] }] }]\n'


@pytest.mark.parametrize(
    ("name", "pre"),
    [
        ("wte.weight", True),  # GPT-2 saved without `transformer.` (openai-community/gpt2)
        ("transformer.wpe.weight", True),
        ("model.embed_tokens.weight", True),
        ("gpt_neox.embed_in.weight", True),
        ("embed_out.weight", False),  # GPT-NeoX's head
        ("lm_head.weight", False),
        ("ln_f.weight", False),
        ("model.norm.weight", False),
    ],
)
def test_what_comes_before_the_layers(name, pre):
    assert is_pre(name) is pre


def test_gpt2_without_its_prefix_takes_its_embeddings_from_the_first_slice(tmp_path):
    """`wte.weight` counted as after the layers: the last slice's model's embeddings."""
    names = ["wte.weight", "wpe.weight", "ln_f.weight", *(f"h.{i}.attn.c_attn.weight" for i in range(4))]
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 4, "n_embd": 4}
    models = {m: stub(tmp_path / m, names, config, v) for m, v in (("a", 1.0), ("b", 2.0))}
    out = laid_out(tmp_path, models, STACK)
    assert out["wte.weight"] == out["wpe.weight"] == ["a"] and out["ln_f.weight"] == ["b"]


def test_gpt_neox_takes_its_head_from_the_last_slice(tmp_path):
    """`embed_out` (its head) was taken from the first slice, its final norm from the last."""
    layers = [f"gpt_neox.layers.{i}.attention.dense.weight" for i in range(4)]
    names = ["gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight", "embed_out.weight", *layers]
    config = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "num_hidden_layers": 4}
    models = {m: stub(tmp_path / m, names, config) for m in ("a", "b")}
    out = laid_out(tmp_path, models, STACK)
    assert out["gpt_neox.embed_in.weight"] == ["a"] and out["embed_out.weight"] == ["b"]


def test_a_slice_over_dense_and_moe_layers_takes_each_layer_s_own_tensors(tmp_path):
    """GLM-4.5, Qwen-MoE with `mlp_only_layers`: the first layer's names were used for every layer."""
    dense = ["model.layers.0.mlp.down_proj.weight"]
    moe = [f"model.layers.{i}.mlp.experts.0.down_proj.weight" for i in (1, 2, 3)]
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", *dense, *moe]
    config = {"model_type": "qwen2_moe", "num_hidden_layers": 4, "hidden_size": 4, "mlp_only_layers": [0]}
    models = {m: stub(tmp_path / m, names, config) for m in ("a", "b")}
    step = 'method = "slerp"\nbase = "a"\nparams = { t = 0.5 }\nslices = [{ sources = [{ model = "a", layers = [0, 4] }, { model = "b", layers = [0, 4] }] }]\n'
    out = laid_out(tmp_path, models, step)
    assert {*dense, *moe} <= set(out) and out["model.layers.2.mlp.experts.0.down_proj.weight"] == ["a", "b"]


def test_slices_of_a_model_with_two_stacks_of_layers_are_refused(tmp_path):
    names = [f"language_model.model.layers.{i}.mlp.weight" for i in range(4)]
    names += [f"vision_tower.encoder.layers.{i}.mlp.weight" for i in range(4)]
    config = {"model_type": "gemma3", "text_config": {"num_hidden_layers": 4, "hidden_size": 4}}
    models = {m: stub(tmp_path / m, names, config) for m in ("a", "b")}
    with pytest.raises(RecipeError, match="more than one stack of layers") as e:
        laid_out(tmp_path, models, STACK)
    assert e.value.key == "steps.s.slices[0]"


def test_slices_of_a_model_without_layers_mergepkg_knows_are_refused(tmp_path):
    """An encoder-decoder's `encoder.block.N`: `pop from an empty set`, a traceback."""
    names = [f"encoder.block.{i}.layer.0.weight" for i in range(4)]
    models = {m: stub(tmp_path / m, names, {"model_type": "t5", "num_layers": 4, "d_model": 4}) for m in ("a", "b")}
    with pytest.raises(RecipeError, match="has no layers mergepkg can slice"):
        laid_out(tmp_path, models, STACK)


def test_only_the_model_s_weights_are_read_beside_an_adapter_and_a_copy(tmp_path):
    """Every *.safetensors was read: an adapter's tensors reached the output, and a
    `model.fp16.safetensors` copy silently replaced tensors of the model."""
    folder = stub(tmp_path / "m", ["model.embed_tokens.weight"], {"model_type": "llama"})
    save_file({"base_model.model.lora_A.weight": np.zeros((2, 2), np.float32)}, folder / "adapter_model.safetensors")
    save_file({"model.embed_tokens.weight": np.ones((4, 4), np.float16)}, folder / "model.fp16.safetensors")
    assert weight_files(folder) == ["model.safetensors"]
    (folder / "model.safetensors").rename(folder / "weights.safetensors")  # no model.safetensors: every file
    assert weight_files(folder) == ["model.fp16.safetensors", "weights.safetensors"]
    with pytest.raises(SourceError, match=r"tensor model\.embed_tokens\.weight is in two weight files"):
        scan_tensors(folder)


def test_an_indexed_tensor_in_two_shards_is_read_from_the_one_the_index_names(tmp_path):
    """transformers and mergekit load it; the check for copies refused it."""
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": np.zeros((2, 2), np.float32), "tied": np.zeros((2, 2), np.float32)}, folder / "s1.safetensors")
    save_file({"b": np.zeros((2, 2), np.float32), "tied": np.ones((2,), np.float32)}, folder / "s2.safetensors")
    index = {"weight_map": {"a": "s1.safetensors", "tied": "s1.safetensors", "b": "s2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    infos = scan_tensors(folder)
    assert infos["tied"].file == "s1.safetensors" and infos["tied"].shape == (2, 2)
    index["weight_map"]["tied"] = "s2.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert scan_tensors(folder)["tied"].file == "s2.safetensors"


LAYOUTS = {
    "shards and their index": [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ],
    "one file": ["model.safetensors"],
    "both formats": ["model.safetensors", "pytorch_model.bin"],
    "a .bin model and an adapter": ["pytorch_model.bin", "adapter_model.safetensors"],
    "a .bin model and a checkpoint": ["pytorch_model.bin", "checkpoint-500/model.safetensors"],
    "a .bin model and a half-precision copy": ["pytorch_model.bin", "model.fp16.safetensors"],
    "one file beside a .bin index": [
        "model.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00001.bin",
    ],
    ".bin shards and their index": [
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ],
    ".bin shards without an index": ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    "an unusual name": ["consolidated.safetensors"],
}
WEIGHTS_READ = {
    "shards and their index": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
    "one file": ["model.safetensors"],
    "both formats": ["model.safetensors"],
    "a .bin model and an adapter": ["pytorch_model.bin"],
    "a .bin model and a checkpoint": ["pytorch_model.bin"],
    "a .bin model and a half-precision copy": ["pytorch_model.bin"],
    "one file beside a .bin index": ["model.safetensors"],
    ".bin shards and their index": ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    ".bin shards without an index": ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    "an unusual name": ["consolidated.safetensors"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_hub_download_holds_what_a_full_copy_of_the_repo_reads(tmp_path, layout):
    """The download rule and the folder rule were two rules: a .bin model beside an adapter
    downloaded only the adapter; a fresh download and a fuller cache read other files."""
    names = LAYOUTS[layout]
    full, fresh = tmp_path / "full", tmp_path / "fresh"
    index = {"weight_map": {f"t{i}": n for i, n in enumerate(WEIGHTS_READ[layout])}}
    downloaded = hub_weight_files(names, lambda name: index_files(write(full, name, json.dumps(index))))
    for folder, files in ((full, names), (fresh, [n for n in names if n in downloaded])):
        for name in files:
            write(folder, name, json.dumps(index) if name.endswith("index.json") else "weights")
    assert weight_files(full) == weight_files(fresh) == WEIGHTS_READ[layout]


def write(folder: Path, name: str, text: str) -> Path:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_download_fetches_the_shards_the_index_names_not_a_whole_copy_beside_them(tmp_path):
    """Mistral's repos hold `consolidated.safetensors` (the whole model again) beside the
    shards: every top-level .safetensors was downloaded, 14 GB more for a 7B model."""
    names = ["model.safetensors.index.json", "consolidated.safetensors", "model-00001-of-00001.safetensors"]
    index = write(tmp_path, names[0], json.dumps({"weight_map": {"a": names[2]}}))
    assert hub_weight_files(names, lambda name: index_files(index)) == [names[0], names[2]]
