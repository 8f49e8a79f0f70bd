"""The layout of an implicit `base+adapter` step (layout/lora.py): which base tensors the
adapter changes, how (kind, scaling, transpose), and what it refuses, at the adapter
source's line. Stub folders: the stub models' one tensor, `model.embed_tokens.weight`
(4 x 2), and numpy-written adapters; no torch."""

from __future__ import annotations

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
