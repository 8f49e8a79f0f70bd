"""layout/dense.py: stacked layers (`slices`) of models that tie their output head to their
embeddings and models that do not, built as mergekit 0.1.5 builds them (its outputs of
these configs were compared tensor by tensor: the same names and bytes, the same
`tie_word_embeddings`), and loaded by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import build_one, load_tensors
from tiny import save_tokenizer, tiny_config

from mergepkg.errors import ModelMismatchError
from mergepkg.layout.configs import with_head_tying

EMBED, HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"


def llama(folder: Path, *, seed: int, tied: bool) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config()
    config.tie_word_embeddings = tied
    LlamaForCausalLM(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tying")
    return {"tied": llama(root / "tied", seed=0, tied=True), "untied": llama(root / "untied", seed=1, tied=False)}


def stack(tmp_path: Path, pair: dict[str, Path], first: str, last: str, extra: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in pair.items())
    path.write_text(
        f'[package]\nname = "t"\nversion = "0.1.0"\n\n[sources]\n{sources}\n[steps.p]\nmethod = "passthrough"\n'
        f'slices = [\n  {{ sources = [{{ model = "{first}", layers = [0, 2] }}] }},\n'
        f'  {{ sources = [{{ model = "{last}", layers = [2, 4] }}{extra}] }},\n]\n'
    )
    return path


def test_the_head_of_an_untied_last_slice_is_kept_after_a_tied_first(tmp_path, pair):
    """The final norm and head are the last slice's: its lm_head is written, and the config
    unties it (before, the names came from the first slice's tied model: no head, tied)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    tensors = build_one(stack(tmp_path, pair, "tied", "untied"), out)
    tied, untied = load_tensors(pair["tied"]), load_tensors(pair["untied"])
    assert torch.equal(tensors[HEAD], untied[HEAD]) and torch.equal(tensors[NORM], untied[NORM])
    assert torch.equal(tensors[EMBED], tied[EMBED])
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, untied[HEAD]) and not torch.equal(model.lm_head.weight, tied[EMBED])


def test_a_tied_last_slice_ties_the_head_to_the_first_slice_s_embeddings(tmp_path, pair):
    """The reverse, refused before (with a message naming 'tied' twice): no head, tied to
    the embeddings, which are the first slice's, as mergekit builds it."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    tensors = build_one(stack(tmp_path, pair, "untied", "tied"), out)
    untied = load_tensors(pair["untied"])
    assert HEAD not in tensors and torch.equal(tensors[EMBED], untied[EMBED])
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, untied[EMBED])


def test_a_slice_that_merges_a_tied_and_an_untied_model_names_both(tmp_path, pair):
    from helpers import build_recipe

    path = stack(tmp_path, pair, "untied", "untied", ', { model = "tied", layers = [2, 4] }')
    path.write_text(path.read_text().replace('"passthrough"', '"linear"\nparams = { weight = 1.0 }'))
    with pytest.raises(ModelMismatchError) as e:
        build_recipe(path, tmp_path / "out")
    assert "'tied' has no tensor lm_head.weight: 'tied' ties its output head" in e.value.message
    assert "and 'untied' does not" in e.value.message


def test_head_tying_follows_the_head_s_model_and_changes_nothing_else():
    assert with_head_tying({"tie_word_embeddings": True, "x": 1}, {"tie_word_embeddings": False}) == {
        "tie_word_embeddings": False,
        "x": 1,
    }
    assert with_head_tying({"tie_word_embeddings": True}, {}) == {}  # the model's default, as the head's
    assert with_head_tying({"x": 1}, {"x": 2}) == {"x": 1}


# -- tensors that are not floating point: copied, or refused before any byte is read ----------

DOWN = "model.layers.0.mlp.down_proj.weight"


def headers_only(folder: Path, tensors: dict, quantization: dict | None = None) -> Path:
    """A model folder of a config.json and one safetensors file of `tensors` (no tokenizer):
    all a layout reads."""
    from safetensors.torch import save_file

    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8}
    if quantization is not None:
        config["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "model.safetensors")
    return folder


def dense_recipe(tmp_path: Path, **models: Path) -> Path:
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items())
    path = tmp_path / "recipe.toml"
    path.write_text(
        f'[package]\nname = "t"\nversion = "0.1.0"\n\n[sources]\n{sources}\n[steps.m]\nmethod = "ties"\n'
        'base = "base"\ninputs = [{ model = "ft1", weight = 1.0, density = 0.5 }]\n'
    )
    return path


def floats(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model.embed_tokens.weight": torch.randn(4, 8, generator=g), DOWN: torch.randn(8, 8, generator=g)}


def test_integer_and_bool_tensors_are_laid_out_as_copies_of_the_base(tmp_path):
    from mergepkg.api import validate

    ids = {"model.position_ids": torch.arange(8).unsqueeze(0), "model.mask": torch.tensor([True, False])}
    base = headers_only(tmp_path / "base", floats(0) | ids)
    ft1 = headers_only(tmp_path / "ft1", floats(1) | ids)
    layout = validate(dense_recipe(tmp_path, base=base, ft1=ft1)).steps["m"].layout
    assert layout is not None
    tensors = {t.name: t for t in layout.tensors}
    assert tensors["model.position_ids"].info.dtype == "I64" and tensors["model.mask"].info.dtype == "BOOL"
    assert tensors["model.mask"].base.model == "base" and tensors["model.mask"].params == {}
    assert tensors[DOWN].info.dtype == "F32" and tensors[DOWN].params["density"] == [0.5]


@pytest.mark.parametrize(
    ("tensor", "quantization", "said"),
    [
        (torch.zeros(8, 8, dtype=torch.uint8), {"quant_method": "bitsandbytes"}, r"quantized model \(bitsandbytes\)"),
        (torch.zeros(8, 8, dtype=torch.int8), {"quant_method": "gptq"}, r"quantized model \(gptq\)"),
        (torch.zeros(8, 8).to(torch.float8_e4m3fn), None, "quantized model"),
    ],
    ids=["uint8", "int8", "float8"],
)
def test_a_quantized_model_is_refused_where_it_is_named(tmp_path, tensor, quantization, said):
    """Quantized weights (codes beside their scales) are refused by `validate` as by
    `build`, at the model's place in the recipe, with a hint to dequantize first (before,
    validate said ok and build failed: `module 'torch' has no attribute 'U8'`)."""
    from mergepkg.api import validate

    base = headers_only(tmp_path / "base", floats(0))
    ft1 = headers_only(tmp_path / "ft1", floats(1) | {DOWN: tensor}, quantization)
    path = dense_recipe(tmp_path, base=base, ft1=ft1)
    with pytest.raises(ModelMismatchError, match=f"'ft1' is a {said}") as e:
        validate(path)
    assert DOWN in e.value.message and "dequantize" in e.value.hint
    assert (
        e.value.key == "steps.m.inputs[0]"
        and e.value.line
        == path.read_text().splitlines().index('inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }]') + 1
    )


def test_an_integer_tensor_of_another_dtype_is_a_mismatch(tmp_path):
    from mergepkg.api import validate

    base = headers_only(tmp_path / "base", floats(0) | {"model.position_ids": torch.arange(8)})
    ft1 = headers_only(tmp_path / "ft1", floats(1) | {"model.position_ids": torch.arange(8, dtype=torch.int32)})
    with pytest.raises(ModelMismatchError, match=r"model\.position_ids: 'ft1' holds I32 \[8\] but 'base' I64 \[8\]"):
        validate(dense_recipe(tmp_path, base=base, ft1=ft1))
