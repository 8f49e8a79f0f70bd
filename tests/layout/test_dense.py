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
