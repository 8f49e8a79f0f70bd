"""The layout of an implicit `base+adapter` step (layout/lora.py): which base tensors the
adapter changes, how (kind, scaling, transpose), and what it refuses, at the adapter
source's line. Stub folders: the stub models' one tensor, `model.embed_tokens.weight`
(4 x 2), and numpy-written adapters; no torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lora_adapters import stub_adapter

from mergepkg.builder.status import status
from mergepkg.errors import MergepkgError, ModelMismatchError, SourceError
from mergepkg.layout.types import Part
from mergepkg.recipe.parse import load_recipe
from mergepkg.store.session import Session

EMBED = "model.embed_tokens.weight"
PEFT = "base_model.model.model.embed_tokens."


def layout(tmp_path, stub_models, **adapter):
    stub_adapter(tmp_path / "ad", **adapter)
    path = tmp_path / "r.toml"
    path.write_text(
        '[package]\nname = "t"\nversion = "0.1.0"\n[sources]\n'
        f'base = {{ path = "{stub_models["base"]}" }}\nft1 = {{ path = "{stub_models["ft1"]}" }}\nad = {{ path = "ad" }}\n'
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "base+ad", weight = 1 }, { model = "ft1", weight = 1 }]\n'
    )
    return path, status(load_recipe(path), Session(), use_store=False).steps


def test_an_embedding_lora_is_laid_out_on_the_base_tensor(tmp_path, stub_models):
    _, steps = layout(tmp_path, stub_models)
    lay = steps["base+ad"].layout
    assert lay.method.name == "lora" and lay.config_from == lay.tokenizer_from == "base"
    (out,) = lay.tensors
    assert (out.name, out.info.dtype, out.info.shape) == (EMBED, "F32", (4, 2))
    assert out.base == Part("base", EMBED)
    assert out.inputs == (Part("ad", PEFT + "lora_embedding_A"), Part("ad", PEFT + "lora_embedding_B"))
    assert out.params == {"kind": "embedding", "dtype": "float32", "scaling": 2.0, "transpose": False}
    # downstream, the applied model is the base's shape
    assert [t.name for t in steps["soup"].layout.tensors] == [EMBED]


def rank4(b_rows: int = 2) -> dict:
    return {
        PEFT + "lora_embedding_A": np.ones((4, 4), np.float32),
        PEFT + "lora_embedding_B": np.ones((b_rows, 4), np.float32),
    }


@pytest.mark.parametrize(
    ("config", "scaling"),
    [
        ({"r": 4, "lora_alpha": 8}, 2.0),
        ({"r": 4, "lora_alpha": 8, "use_rslora": True}, 8 / math.sqrt(4)),
        ({"r": 8, "lora_alpha": 8, "rank_pattern": {"embed_tokens": 4}}, 2.0),
        ({"r": 4, "lora_alpha": 8, "alpha_pattern": {"other": 1, "model.embed_tokens": 2}}, 0.5),
        ({"r": 4, "lora_alpha": 8, "alpha_pattern": {"bed_tokens": 1}}, 2.0),  # a pattern matches at a '.'
    ],
)
def test_scaling_follows_peft(tmp_path, stub_models, config, scaling):
    _, steps = layout(tmp_path, stub_models, config=config, tensors=rank4())
    assert steps["base+ad"].layout.tensors[0].params["scaling"] == scaling


def test_a_saved_tensor_replaces_the_base_one(tmp_path, stub_models):
    tensors = {**rank4(), PEFT + "base_layer.weight": np.zeros((4, 2), np.float32)}
    _, steps = layout(tmp_path, stub_models, config={"r": 4}, tensors=tensors)
    (out,) = steps["base+ad"].layout.tensors
    assert out.base == Part("ad", PEFT + "base_layer.weight") and out.params["kind"] == "embedding"
    _, steps = layout(
        tmp_path, stub_models, tensors={"base_model.model.model.embed_tokens.weight": np.zeros((4, 2), np.float16)}
    )
    (out,) = steps["base+ad"].layout.tensors
    assert out.base == Part("ad", "base_model.model.model.embed_tokens.weight") and out.inputs == ()
    assert out.params == {"kind": "copy", "dtype": "float32"} and out.info.dtype == "F32"


@pytest.mark.parametrize(
    ("adapter", "cls", "message"),
    [
        ({"config": {"use_dora": True}}, SourceError, "adapter 'ad' uses DoRA (use_dora), which mergepkg cannot apply"),
        ({"config": {"peft_type": "IA3"}}, SourceError, "adapter 'ad' is not a LoRA adapter (peft_type IA3)"),
        ({"config": {"target_parameters": ["experts"]}}, SourceError, "LoRA on parameters (target_parameters)"),
        ({"config": {"r": 0}}, SourceError, "r is 0, not a positive number"),
        ({"config": {"r": 2}}, SourceError, "lora_embedding_A has rank 1 but adapter_config.json says r = 2"),
        ({"tensors": {"lora_A.weight": np.ones((1, 2), np.float32)}}, SourceError, "not named as peft names"),
        ({"tensors": {PEFT + "lora_magnitude_vector": np.ones(2, np.float32)}}, SourceError, "uses DoRA"),
        ({"tensors": {PEFT + "lora_C.weight": np.ones(2, np.float32)}}, SourceError, "which mergepkg cannot apply"),
        (
            {"tensors": {"base_model.model.model.norm.weight": np.ones(2, np.float32)}},
            ModelMismatchError,
            "changes model.norm.weight (base_model.model.model.norm.weight), a tensor 'base' does not have",
        ),
        (
            {"tensors": rank4(b_rows=3), "config": {"r": 4}},
            ModelMismatchError,
            "has shape [4, 3] but 'base' has [4, 2]",
        ),
        (
            {"tensors": {PEFT + "lora_embedding_A": np.ones((1, 4), np.float32)}},
            SourceError,
            "has no lora_B for model.embed_tokens",
        ),
    ],
)
def test_what_an_adapter_cannot_do_is_refused_at_its_source(tmp_path, stub_models, adapter, cls, message):
    with pytest.raises(MergepkgError) as info:
        layout(tmp_path, stub_models, **adapter)
    e, path = info.value, tmp_path / "r.toml"
    assert type(e) is cls and message in e.message, e.message
    assert (e.file, e.key) == (str(path), "sources.ad")
    assert e.line == path.read_text().splitlines().index('ad = { path = "ad" }') + 1


# -- a base that ties its head to its embeddings; GPT-2's Conv1D ----------------------------

HEAD = "lm_head.weight"
P = "base_model.model."


def applied(tmp_path, config: dict, tensors: dict, adapter_config: dict, adapter_tensors: dict):
    """The layout and config of `b+a`: a base of `config` and `tensors` (name -> shape), an
    adapter of `adapter_tensors` (name after `base_model.model.` -> shape)."""
    from safetensors.numpy import save_file

    base = tmp_path / "b"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"num_hidden_layers": 1, **config}))
    save_file({n: np.ones(s, np.float32) for n, s in tensors.items()}, base / "model.safetensors")
    stub_adapter(
        tmp_path / "a",
        config=adapter_config,
        tensors={P + n: np.ones(s, np.float32) for n, s in adapter_tensors.items()},
    )
    path = tmp_path / "r.toml"
    path.write_text(
        '[package]\nname = "t"\nversion = "0.1.0"\n[sources]\nb = { path = "b" }\na = { path = "a" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["b+a"]\n'
    )
    lay = status(load_recipe(path), Session(), use_store=False).steps["b+a"].layout
    return {t.name: t for t in lay.tensors}, lay.config


TIED = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": True}
TIED_BASE = {EMBED: (4, 2), "model.norm.weight": (2,)}
LORA_HEAD = {"lm_head.lora_A.weight": (1, 2), "lm_head.lora_B.weight": (4, 1)}
LORA_EMBED = {"model.embed_tokens.lora_embedding_A": (1, 4), "model.embed_tokens.lora_embedding_B": (2, 1)}


def test_a_copy_of_a_tied_module_unties_the_head_as_peft_does(tmp_path):
    # modules_to_save=["embed_tokens"]: the embeddings are the adapter's, the head the base's
    # old embeddings, and the two are no longer tied
    out, config = applied(tmp_path, TIED, TIED_BASE, {}, {"model.embed_tokens.weight": (4, 2)})
    assert list(out) == [EMBED, HEAD, "model.norm.weight"] and config["tie_word_embeddings"] is False
    assert out[EMBED].base == Part("a", P + EMBED) and out[EMBED].inputs == ()
    assert out[HEAD].base == Part("b", EMBED) and out[HEAD].params == {"kind": "copy", "dtype": "float32"}
    assert (out[HEAD].info.dtype, out[HEAD].info.shape) == ("F32", (4, 2))


def test_a_lora_of_a_tied_head_updates_the_shared_embeddings(tmp_path):
    out, config = applied(tmp_path, TIED, TIED_BASE, {}, {**LORA_HEAD, "lm_head.base_layer.weight": (4, 2)})
    assert list(out) == [EMBED, "model.norm.weight"] and config["tie_word_embeddings"] is True
    assert out[EMBED].base == Part("a", P + "lm_head.base_layer.weight")
    assert out[EMBED].inputs == (Part("a", P + "lm_head.lora_A.weight"), Part("a", P + "lm_head.lora_B.weight"))
    assert out[EMBED].params == {"kind": "linear", "dtype": "float32", "scaling": 2.0, "transpose": False}
    # and with the embeddings in modules_to_save, the head is the base's matrix with the update
    out, config = applied(tmp_path / "2", TIED, TIED_BASE, {}, {**LORA_HEAD, "model.embed_tokens.weight": (4, 2)})
    assert config["tie_word_embeddings"] is False and out[EMBED].base == Part("a", P + EMBED)
    assert out[HEAD].base == Part("b", EMBED) and out[HEAD].params["kind"] == "linear"


def test_ensure_weight_tying_keeps_the_copies_tied(tmp_path):
    copies = {"model.embed_tokens.weight": (4, 2), "lm_head.weight": (4, 2)}
    out, config = applied(tmp_path, TIED, TIED_BASE, {"ensure_weight_tying": True}, copies)
    assert list(out) == [EMBED, "model.norm.weight"] and config["tie_word_embeddings"] is True
    assert out[EMBED].base == Part("a", P + HEAD)  # peft loads the head's copy last into the one parameter


@pytest.mark.parametrize(
    ("adapter_config", "message"),
    [
        ({}, "has a LoRA update of model.embed_tokens and one of lm_head, which 'b' ties together"),
        ({"ensure_weight_tying": True}, "the head's is the embeddings' own, merged a second time"),
    ],
)
def test_two_updates_of_a_tied_matrix_are_refused(tmp_path, adapter_config, message):
    with pytest.raises(SourceError) as info:
        applied(tmp_path, TIED, TIED_BASE, adapter_config, {**LORA_HEAD, **LORA_EMBED})
    assert message in info.value.message and info.value.key == "sources.a"


def test_an_untied_base_is_as_before(tmp_path):
    untied = {**TIED, "tie_word_embeddings": False}
    out, config = applied(tmp_path, untied, TIED_BASE, {}, {"model.embed_tokens.weight": (4, 2)})
    assert list(out) == [EMBED, "model.norm.weight"] and config["tie_word_embeddings"] is False
    with pytest.raises(ModelMismatchError, match=r"changes lm_head\.weight"):
        applied(tmp_path / "2", untied, TIED_BASE, {}, LORA_HEAD)
    # no head saved and no tie_word_embeddings said: the class's default, which a config does not tell
    silent = {k: v for k, v in TIED.items() if k != "tie_word_embeddings"}
    out, config = applied(tmp_path / "3", silent, TIED_BASE, {}, {"model.embed_tokens.weight": (4, 2)})
    assert list(out) == [EMBED, "model.norm.weight"] and "tie_word_embeddings" not in config
    with pytest.raises(SourceError, match="which 'b' does not save: a head tied to the embeddings"):
        applied(tmp_path / "4", silent, TIED_BASE, {}, LORA_HEAD)


GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
SQUARE = {"lora_A.weight": (1, 2), "lora_B.weight": (2, 1)}


@pytest.mark.parametrize(
    ("config", "module", "flag", "transpose"),
    [
        (GPT2, "transformer.h.0.attn.c_proj", False, True),  # a Conv1D: peft transposes whatever the flag
        (GPT2, "transformer.h.0.attn.c_proj", True, True),
        (GPT2, "lm_head", True, False),  # GPT-2's head is a Linear
        (TIED | {"tie_word_embeddings": False}, "model.layers.0.self_attn.q_proj", True, False),  # a Linear
        ({"model_type": "gpt_bigcode"}, "transformer.h.0.attn.c_proj", True, False),  # Linear layers named as GPT-2's
    ],
)
def test_fan_in_fan_out_is_decided_per_module_as_peft_does(tmp_path, config, module, flag, transpose):
    tensors = {f"{module}.weight": (2, 2), "transformer.wte.weight": (4, 2)}
    adapter = {f"{module}.{n}": s for n, s in SQUARE.items()}
    out, _ = applied(tmp_path, config, tensors, {"fan_in_fan_out": flag}, adapter)
    assert out[f"{module}.weight"].params["transpose"] is transpose


def test_fan_in_fan_out_for_a_model_of_its_own_code_is_refused(tmp_path):
    config = {"model_type": "mine", "auto_map": {"AutoModelForCausalLM": "modeling_mine.Mine"}}
    module = "h.0.proj"
    with pytest.raises(SourceError) as info:
        applied(
            tmp_path,
            config,
            {f"{module}.weight": (2, 2)},
            {"fan_in_fan_out": True},
            {f"{module}.{n}": s for n, s in SQUARE.items()},
        )
    assert "sets fan_in_fan_out for h.0.proj, and 'b' runs code of its own (auto_map)" in info.value.message
    assert info.value.key == "sources.a"
    out, _ = applied(
        tmp_path / "2", config, {f"{module}.weight": (2, 2)}, {}, {f"{module}.{n}": s for n, s in SQUARE.items()}
    )
    assert out[f"{module}.weight"].params["transpose"] is False
