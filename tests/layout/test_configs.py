"""layout/configs.py: an output's config.json for stacked layers and for the saved dtype."""

from __future__ import annotations

from mergepkg.io.tensors import TensorInfo
from mergepkg.layout.configs import shared_dtype, with_saved_dtype, with_stacked_layers
from mergepkg.layout.types import ModelInfo

KINDS = ["sliding_attention", "full_attention"]


def info(layers: int, **config) -> ModelInfo:
    return ModelInfo({"num_hidden_layers": layers, **config}, {})


def test_each_stacked_layer_keeps_its_source_layer_s_settings():
    a = info(4, layer_types=[KINDS[i % 2] for i in range(4)], no_rope_layers=[1, 1, 1, 0])
    b = info(6, layer_types=[KINDS[(i + 1) % 2] for i in range(6)], no_rope_layers=[0, 1, 0, 1, 0, 1])
    layers = [("a", 0), ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3), ("b", 4)]
    config = with_stacked_layers(dict(a.config), layers, {"a": a, "b": b})
    assert config["num_hidden_layers"] == 7
    assert config["layer_types"] == [KINDS[0], KINDS[1], KINDS[0], KINDS[0], KINDS[1], KINDS[0], KINDS[1]]
    assert config["no_rope_layers"] == [1, 1, 1, 1, 0, 1, 0]
    assert len(config["layer_types"]) == config["num_hidden_layers"]  # what transformers checks


def test_a_setting_a_source_lacks_is_left_for_transformers_to_derive():
    a = info(4, layer_types=["full_attention"] * 4)
    b = info(4)  # an older config: no layer_types
    short = info(4, layer_types=["full_attention"] * 3)  # not one per layer
    for other in (b, short):
        config = with_stacked_layers(dict(a.config), [("a", 0), ("b", 3)], {"a": a, "b": other})
        assert "layer_types" not in config and config["num_hidden_layers"] == 2


def test_layer_indexes_are_renumbered_for_the_stack():
    a = info(4, mlp_only_layers=[0, 3])
    b = info(4, mlp_only_layers=[1])
    config = with_stacked_layers(dict(a.config), [("a", 0), ("a", 1), ("b", 1), ("a", 3)], {"a": a, "b": b})
    assert config["mlp_only_layers"] == [0, 2, 3]


def test_the_layer_count_goes_where_the_config_keeps_it():
    gpt2 = ModelInfo({"n_layer": 12}, {})
    config = with_stacked_layers(dict(gpt2.config), [("g", 0), ("g", 0), ("g", 1)], {"g": gpt2})
    assert config == {"n_layer": 3}


def test_the_saved_dtype_is_named_only_when_the_tensors_share_one():
    assert shared_dtype([TensorInfo("F32", (2,)), TensorInfo("I64", (2,)), TensorInfo("F32", (1,))]) == "float32"
    assert shared_dtype([TensorInfo("F32", (2,)), TensorInfo("BF16", (2,))]) is None
    assert shared_dtype([TensorInfo("I64", (2,))]) is None
    config = with_saved_dtype({"torch_dtype": "bfloat16", "dtype": "bfloat16"}, "float32")
    assert config == {"torch_dtype": "float32", "dtype": "float32"}
    assert with_saved_dtype({"dtype": "bfloat16"}, None) == {"dtype": "bfloat16"}


# -- built, and loaded by transformers ------------------------------------------------


def gemma2(folder, seed: int):
    """A tiny Gemma2: tied embeddings, and layers that alternate sliding and full attention."""
    import torch
    from tiny import VOCAB, save_tokenizer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    Gemma2ForCausalLM(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def test_stacked_layers_keep_their_attention_kinds_and_the_model_loads(tmp_path, write_recipe):
    import json

    from helpers import build_one
    from transformers import AutoModelForCausalLM

    a, b = gemma2(tmp_path / "a", 1), gemma2(tmp_path / "b", 2)
    path = write_recipe(
        f"""
        [sources]
        a = {{ path = "{a}" }}
        b = {{ path = "{b}" }}

        [steps.stack]
        method = "passthrough"
        slices = [{{ sources = [{{ model = "a", layers = [1, 3] }}] }}, {{ sources = [{{ model = "b", layers = [1, 4] }}] }}]
        """,
        sources=False,
    )
    out = tmp_path / "out"
    build_one(path, out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    # a's layers 1-2, then b's 1-3: not the pattern a fresh 5-layer Gemma2 config would derive
    assert config["layer_types"] == [KINDS[1], KINDS[0], KINDS[1], KINDS[0], KINDS[1]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert [layer.self_attn.layer_type for layer in model.model.layers] == config["layer_types"]


def test_dtype_auto_names_the_dtype_the_tensors_are_saved_in(write_recipe, tmp_path):
    import json

    from helpers import build_one

    path = write_recipe("""
        [steps.m]
        method = "linear"
        dtype = "auto"
        inputs = [{ model = "ft1_bf16", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
        """)
    out = tmp_path / "out"
    tensors = build_one(path, out)
    assert {t.dtype for t in tensors.values()} == {__import__("torch").float32}  # bfloat16 and float32 promote
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def test_a_tied_model_that_stores_its_head_merges_with_one_that_does_not(tmp_path, write_recipe):
    """Some trainers save a tied model's head, a copy of its embeddings; transformers ties
    over it on load. Merged with models that leave it out, the output leaves it out."""
    from helpers import build_one
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    plain, stored = gemma2(tmp_path / "plain", 1), gemma2(tmp_path / "stored", 2)
    tensors = load_file(stored / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, stored / "model.safetensors", metadata={"format": "pt"})
    for first, second in (("plain", "stored"), ("stored", "plain")):
        path = write_recipe(
            f"""
            [sources]
            plain = {{ path = "{plain}" }}
            stored = {{ path = "{stored}" }}

            [steps.m]
            method = "linear"
            inputs = [{{ model = "{first}", weight = 0.5 }}, {{ model = "{second}", weight = 0.5 }}]
            """,
            sources=False,
        )
        out = tmp_path / f"out-{first}"
        merged = build_one(path, out)
        assert "lm_head.weight" not in merged
        AutoModelForCausalLM.from_pretrained(out)
