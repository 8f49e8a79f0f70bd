"""MP201, MP202 and MP203, from configs, headers and tokenizers (`mergepkg validate`, no
tensor read), and a hidden-size difference reported as that, before any vocabulary is compared."""

from __future__ import annotations

import pytest
from pitfall_models import recipe, stub_model, stub_tokenizer

from mergepkg import api
from mergepkg.errors import ModelMismatchError
from mergepkg.io.reader import ModelReader
from mergepkg.pitfalls.layouts import MIN_KEPT


@pytest.fixture
def no_reads(monkeypatch):
    def never(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(ModelReader, "get", never)


@pytest.fixture
def stubs(tmp_path):
    root = tmp_path / "models"
    base = stub_model(root / "base", seed=0)
    return {
        "base": base,
        "ft1": stub_model(root / "ft1", seed=1, like=base),
        "ft2": stub_model(root / "ft2", seed=2, like=base),
        "mistral": stub_model(root / "mistral", seed=3, arch="MistralForCausalLM"),
        "wide": stub_model(root / "wide", seed=4, hidden=12),
        "wide_vocab": stub_model(root / "wide_vocab", seed=5, hidden=12, vocab=20),
    }


DARE = """
[steps.m]
method = "{method}"
base = "base"
inputs = [{{ model = "ft1", weight = 0.5, density = {density} }}, {{ model = "ft2", weight = 0.5, density = 0.9 }}]
"""


# the stubs' smallest tensors are norms of 8 entries: density x 8 < 5 keeps "almost nothing"
@pytest.mark.parametrize(
    ("method", "density", "fires"),
    [("dare_ties", 0.6, True), ("dare_ties", MIN_KEPT / 8, False), ("dare_linear", 0.5, True), ("ties", 0.5, False)],
)
def test_mp201_a_random_density_that_keeps_almost_nothing(tmp_path, stubs, no_reads, method, density, fires):
    path = recipe(tmp_path, stubs, DARE.format(method=method, density=density))
    pits = [p for p in api.validate(path).pitfalls if p.code == "MP201"]
    assert bool(pits) == fires, pits
    if fires:
        (p,) = pits
        assert p.key == "steps.m.inputs[0]" and p.file == str(path)
        assert (
            p.line
            == path.read_text()
            .splitlines()
            .index(next(x for x in path.read_text().splitlines() if x.startswith("inputs")))
            + 1
        )
        assert f"density {density:g} keeps on average {density * 8:.2g} of the 8 entries" in p.message
        assert "more tensors" in p.message  # every norm: one warning per input, not per tensor


def test_mp202_different_architectures_with_equal_shapes_merge_with_a_warning(tmp_path, stubs, no_reads):
    body = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "base", weight = 0.5 }, { model = "mistral", weight = 0.5 }]\n'
    path = recipe(tmp_path, stubs, body)
    (p,) = api.validate(path).pitfalls
    assert p.code == "MP202" and p.key == "steps.m.inputs[1]"
    assert "'mistral' is MistralForCausalLM but 'base' is LlamaForCausalLM" in p.message
    path = recipe(tmp_path, stubs, body, allow='"MP202"')
    assert api.validate(path).pitfalls == []


def test_fine_tunes_of_one_base_show_nothing(tmp_path, stubs, no_reads):
    body = (
        '[steps.m]\nmethod = "ties"\nbase = "base"\ninputs = ["ft1", "ft2"]\nparams = { weight = 0.5, density = 0.5 }\n'
    )
    assert api.validate(recipe(tmp_path, stubs, body)).pitfalls == []


@pytest.mark.parametrize("other", ["wide", "wide_vocab"])
def test_a_hidden_size_difference_is_said_as_that_before_vocabularies(tmp_path, stubs, no_reads, other):
    body = f'[steps.m]\nmethod = "linear"\ninputs = [{{ model = "base", weight = 0.5 }}, {{ model = "{other}", weight = 0.5 }}]\n'
    path = recipe(tmp_path, stubs, body)
    with pytest.raises(ModelMismatchError) as e:
        api.validate(path)
    assert e.value.message == f"'{other}' has hidden size 12 but 'base' has 8: models of different sizes cannot merge"
    assert e.value.key == "steps.m.inputs[1]" and e.value.file == str(path)


def test_a_tensor_mismatch_between_architectures_says_they_differ(tmp_path, stubs, no_reads):
    deep = stub_model(tmp_path / "models" / "deep", seed=6, layers=3, arch="MistralForCausalLM")
    body = (
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "base", weight = 0.5 }, { model = "deep", weight = 0.5 }]\n'
    )
    with pytest.raises(ModelMismatchError) as e:
        api.validate(recipe(tmp_path, {**stubs, "deep": deep}, body))
    assert (
        "has 3 layers" in e.value.message
        and "('deep' is ['MistralForCausalLM'], 'base' ['LlamaForCausalLM'])" in e.value.message
    )
    assert e.value.hint == "merge models of one architecture"


CHATML = ("<|im_start|>", "<|im_end|>")


@pytest.fixture
def short_chat(tmp_path, stubs):
    """short: ChatML tokens added to its tokenizer (ids 16, 17) but only 16 rows; chat: the
    same tokenizer with 18 rows; ft: a fine-tune of short, its tokenizer too."""
    root = tmp_path / "models"
    short = stub_tokenizer(stub_model(root / "short", seed=7), 16, CHATML)
    chat = stub_tokenizer(stub_model(root / "chat", seed=8, vocab=18), 16, CHATML)
    ft = stub_tokenizer(stub_model(root / "ft", seed=9, like=short), 16, CHATML)
    return {**stubs, "short": short, "chat": chat, "ft": ft}


SHORT = '[steps.m]\nmethod = "task_arithmetic"\nbase = "short"\ninputs = [{ model = "chat", weight = 0.5 }]\n'


def test_mp203_a_copied_tokenizer_with_tokens_past_the_output_s_rows(tmp_path, short_chat, no_reads):
    """The output's rows are cut to the 16 its tokenizer's model has (mergekit too) while the
    tokenizer keeps ids 16 and 17: the model would fail on every ChatML prompt."""
    path = recipe(tmp_path, short_chat, SHORT + 'tokenizer = "base"\n')
    (p,) = api.validate(path).pitfalls
    line = path.read_text().splitlines().index('tokenizer = "base"') + 1
    assert (p.code, p.key, p.line, p.file) == ("MP203", "steps.m.tokenizer", line, str(path))
    assert (
        "the tokenizer of 'short', with 2 tokens past the output's 16 embedding rows "
        "('<|im_start|>' (id 16), '<|im_end|>' (id 17))" in p.message
    )
    assert 'tokenizer = "union"' in p.hint and "'chat', which has them" in p.hint
    assert api.validate(recipe(tmp_path, short_chat, SHORT + 'tokenizer = "base"\n', allow='"MP203"')).pitfalls == []


@pytest.mark.parametrize(
    "tokenizer",
    ['"union"', '{ source = "union", tokens = { "<|im_end|>" = { source = "chat", force = true } } }', '"chat"'],
)
def test_mp203_is_gone_where_the_hint_leads(tmp_path, short_chat, no_reads, tokenizer):
    """A union keeps the tokens with chat's rows; chat's own tokenizer fits its rows."""
    path = recipe(tmp_path, short_chat, SHORT + f"tokenizer = {tokenizer}\n")
    assert api.validate(path).pitfalls == []


def test_mp203_on_one_vocabulary_says_no_model_has_the_rows(tmp_path, short_chat, no_reads):
    body = '[steps.m]\nmethod = "task_arithmetic"\nbase = "short"\ninputs = [{ model = "ft", weight = 0.5 }]\n'
    (p,) = api.validate(recipe(tmp_path, short_chat, body)).pitfalls
    assert p.code == "MP203" and p.key == "steps.m" and "no model of the step has rows for them" in p.hint
