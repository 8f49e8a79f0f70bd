"""Tokenizer merging: `tokenizer = { source = "union" | "base" | "<model>", tokens = {...} }`.

Tiny byte-level BPE tokenizers are trained here on a few sentences, each model with its
own special tokens, and saved beside tiny Llama models whose embedding rows match.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import build_one, build_recipe, load_tensors
from tiny import tiny_config

from mergepkg.errors import ModelMismatchError, RecipeError
from mergepkg.io.reader import ModelReader
from mergepkg.layout.steps import lay_out
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

SENTENCES_A = ["the cat sat on the mat", "a dog ran far", "the cat and the dog"]
SENTENCES_B = ["the cow ate the grass", "a bird flew high", "the cow and the bird"]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def bpe(folder: Path, sentences: list[str], specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sentences, trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.save_pretrained(folder)
    return fast


def llama(folder: Path, rows: int, *, seed: int, tied: bool = False, like: Path | None = None) -> Path:
    """A tiny Llama with `rows` embedding rows: random (seed), or `like`'s weights plus
    small seeded noise (rows past `like`'s are new, random)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(vocab=rows)
    config.tie_word_embeddings = tied
    model = LlamaForCausalLM(config)
    if like is not None:
        old = load_tensors(like)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                src = old[name]
                p[: src.shape[0]] = src + 0.02 * torch.randn(src.shape, generator=gen)
    model.save_pretrained(folder)
    return folder


def byte_fallback_bpe(folder: Path, sentences: list[str], specials: list[str]):
    """A tokenizer shaped as Llama-2's and Mistral's: SentencePiece-style BPE (`▁` for
    spaces) whose characters outside its vocabulary encode to the 256 byte tokens
    (`byte_fallback`), trained on `sentences`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def shaped(tok):
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        return tok

    trained = shaped(Tokenizer(models.BPE()))
    trained.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=50, show_progress=False))
    model = json.loads(trained.to_str())["model"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tokens += sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    bpe_model = models.BPE(
        {t: i for i, t in enumerate(tokens)}, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=shaped(Tokenizer(bpe_model)), unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def tok_models(tmp_path_factory) -> dict[str, Path]:
    """base: BPE on SENTENCES_A + <|a|>; ft: base's tokenizer, base + noise; chat: base's
    tokenizer + <|im_start|>, <|im_end|> (two more rows); other: BPE on SENTENCES_B + <|b|>,
    <|c|>; swapped: base's tokenizer with two ids exchanged (same rows); *_tied: tied
    embeddings; bf_base, bf_other: Llama-2-style byte-fallback BPE on SENTENCES_A, _B."""
    root = tmp_path_factory.mktemp("tok_models")
    names = ("base", "ft", "chat", "other", "swapped", "base_tied", "other_tied", "bf_base", "bf_other")
    m = {name: root / name for name in names}
    n_base = len(bpe(m["base"], SENTENCES_A, ["<|a|>"]))
    llama(m["base"], n_base, seed=0)
    for name in ("ft", "swapped"):
        shutil.copytree(m["base"], m[name], ignore=shutil.ignore_patterns("*.safetensors"))
        llama(m[name], n_base, seed=1, like=m["base"])
    data = json.loads((m["swapped"] / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["c"] = vocab["c"], vocab["a"]
    (m["swapped"] / "tokenizer.json").write_text(json.dumps(data))
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(m["base"])
    chat.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat.save_pretrained(m["chat"])
    llama(m["chat"], len(chat), seed=2, like=m["base"])
    n_other = len(bpe(m["other"], SENTENCES_B, ["<|b|>", "<|c|>"]))
    llama(m["other"], n_other, seed=3)
    for name, src, rows in (("base_tied", "base", n_base), ("other_tied", "other", n_other)):
        shutil.copytree(m[src], m[name], ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
        llama(m[name], rows, seed=4, tied=True)
    for seed, (name, sentences, specials) in enumerate(
        (("bf_base", SENTENCES_A, ["<|a|>"]), ("bf_other", SENTENCES_B, ["<|im_start|>", "<|im_end|>"])), start=5
    ):
        llama(m[name], len(byte_fallback_bpe(m[name], sentences, specials)), seed=seed)
    return m


@pytest.fixture
def recipe(tmp_path, tok_models):
    def write(body: str, name: str = "recipe.toml") -> Path:
        sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in tok_models.items())
        path = tmp_path / name
        path.write_text(f'[package]\nname = "tok"\nversion = "0.1.0"\n\n[sources]\n{sources}\n' + textwrap.dedent(body))
        return path

    return write


def ids(folder: Path) -> dict[str, int]:
    data = json.loads((folder / "tokenizer.json").read_text())
    out = dict(data["model"]["vocab"])
    out.update({e["content"]: e["id"] for e in data["added_tokens"]})
    return out


def row(tensors: dict, vocab: dict, token: str, name: str = EMBED) -> torch.Tensor:
    """A model's row of `token` in tensor `name`."""
    return tensors[name][vocab[token]]


UNION = """
[steps.u]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "chat", weight = 0.5 }, { model = "other", weight = 0.25 }]
tokenizer = { source = "union" }
"""


@pytest.mark.slow
def test_union_builds_a_model_and_tokenizer_transformers_load(recipe, tmp_path, tok_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    tensors = build_one(recipe(UNION), out)
    base, chat, other = (ids(tok_models[n]) for n in ("base", "chat", "other"))
    union = ids(out)
    # order: the base's ids unchanged, then chat's new tokens, then other's, each in its id order
    assert all(union[t] == i for t, i in base.items())
    appended = [t for t, _ in sorted(union.items(), key=lambda kv: kv[1]) if t not in base]
    from_chat = [t for t, _ in sorted(chat.items(), key=lambda kv: kv[1]) if t not in base]
    # (other's tokens of one character the base lacks are left out: they would change how text encodes)
    from_other = [
        t for t, _ in sorted(other.items(), key=lambda kv: kv[1]) if t not in base and t not in chat and len(t) > 1
    ]
    assert appended == from_chat + from_other and from_chat == ["<|im_start|>", "<|im_end|>"]
    assert sorted(union.values()) == list(range(len(union)))
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(union) == tensors[EMBED].shape[0] == tensors[HEAD].shape[0]

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(union)
    for special in ("<|a|>", "<|im_start|>", "<|im_end|>", "<|b|>", "<|c|>", "<s>", "</s>"):
        assert tok.encode(special, add_special_tokens=False) == [union[special]], special
    base_tok = AutoTokenizer.from_pretrained(tok_models["base"])
    text = "the cat sat on the grass"  # text encodes as the base encodes it
    assert tok.encode(text, add_special_tokens=False) == base_tok.encode(text, add_special_tokens=False)
    assert tok.decode([union["<|b|>"], union["Ġcow"]]) == "<|b|> cow"
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok("<|im_start|>the cow<|b|>", return_tensors="pt").input_ids
    gen = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert gen.shape[1] == prompt.shape[1] + 4


@pytest.mark.slow
def test_union_rows_are_the_merge_of_aligned_rows_with_mergekits_fallbacks(recipe, tmp_path, tok_models):
    tensors = build_one(recipe(UNION), tmp_path / "out")
    union = ids(tmp_path / "out")
    t = {n: load_tensors(tok_models[n]) for n in ("base", "chat", "other")}
    v = {n: ids(tok_models[n]) for n in ("base", "chat", "other")}
    for name in (EMBED, HEAD):

        def inp(model, token, name=name):
            return row(t[model], v[model], token, name)

        def out(token, name=name):
            return tensors[name][union[token]]

        # shared by all three: each model's own row, merged (task arithmetic: base + sum w * delta)
        b = inp("base", "Ġthe")
        expected = b + 0.5 * (inp("chat", "Ġthe") - b) + 0.25 * (inp("other", "Ġthe") - b)
        torch.testing.assert_close(out("Ġthe"), expected, rtol=0, atol=1e-6)
        # base and chat have it, other lacks it: other takes the base's row (its delta is zero)
        b = inp("base", "Ġcat")
        torch.testing.assert_close(out("Ġcat"), b + 0.5 * (inp("chat", "Ġcat") - b), rtol=0, atol=1e-6)
        # only one model has it: every model takes that row, so the merge is that row
        torch.testing.assert_close(out("<|im_start|>"), inp("chat", "<|im_start|>"), rtol=0, atol=1e-6)
        torch.testing.assert_close(out("Ġcow"), inp("other", "Ġcow"), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_mean_fallback_when_no_base_has_the_token(recipe, tmp_path, tok_models):
    body = """
    [steps.m]
    method = "linear"
    inputs = [{ model = "chat", weight = 0.5 }, { model = "other", weight = 0.25 }, { model = "ft", weight = 0.25 }]
    tokenizer = "union"
    """
    tensors = build_one(recipe(body), tmp_path / "out")
    union = ids(tmp_path / "out")
    t = {n: load_tensors(tok_models[n]) for n in ("chat", "other", "ft")}
    v = {n: ids(tok_models[n]) for n in ("chat", "other", "ft")}
    c, f = row(t["chat"], v["chat"], "Ġcat"), row(t["ft"], v["ft"], "Ġcat")
    # other lacks Ġcat, chat and ft have it, the step has no base: other takes their mean
    expected = 0.5 * c + 0.25 * (c + f) / 2 + 0.25 * f
    torch.testing.assert_close(tensors[EMBED][union["Ġcat"]], expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_tokens_entries_choose_rows(recipe, tmp_path, tok_models):
    body = UNION.replace('tokenizer = { source = "union" }\n', "") + textwrap.dedent("""
        [steps.u.tokenizer]
        source = "union"

        [steps.u.tokenizer.tokens]
        "<|b|>" = { source = { kind = "zero" } }
        "Ġthe" = { source = "other", force = true }
        "<|im_start|>" = { source = { model = "base", token = "<s>" } }
        "<|a|>" = { source = { model = "other", token_id = 3 } }
        """)
    tensors = build_one(recipe(body), tmp_path / "out")
    union = ids(tmp_path / "out")
    t = {n: load_tensors(tok_models[n]) for n in ("base", "chat", "other")}
    v = {n: ids(tok_models[n]) for n in ("base", "chat", "other")}
    out = tensors[EMBED]
    # zero for the models lacking <|b|> (base, chat): base row 0, so 0 + 0.25 * (other - 0)
    torch.testing.assert_close(out[union["<|b|>"]], 0.25 * row(t["other"], v["other"], "<|b|>"), rtol=0, atol=1e-6)
    # forced: every model takes other's row, so the merge is other's row
    torch.testing.assert_close(out[union["Ġthe"]], row(t["other"], v["other"], "Ġthe"), rtol=0, atol=1e-6)
    # base and other lack <|im_start|>: they take base's <s> row; chat keeps its own
    s = row(t["base"], v["base"], "<s>")
    torch.testing.assert_close(
        out[union["<|im_start|>"]], s + 0.5 * (row(t["chat"], v["chat"], "<|im_start|>") - s), rtol=0, atol=1e-6
    )
    # other lacks <|a|>: it takes its own row 3
    a = row(t["base"], v["base"], "<|a|>")
    torch.testing.assert_close(
        out[union["<|a|>"]],
        a + 0.5 * (row(t["chat"], v["chat"], "<|a|>") - a) + 0.25 * (t["other"][EMBED][3] - a),
        rtol=0,
        atol=1e-6,
    )
    # a model source that lacks the token itself: a located error
    path = recipe(body.replace('{ model = "other", token_id = 3 }', '"other"'), name="bad.toml")
    with pytest.raises(RecipeError) as e:
        build_recipe(path, tmp_path / "bad")
    assert e.value.key == 'steps.u.tokenizer.tokens."<|a|>".source' and "has no token '<|a|>'" in e.value.message


@pytest.mark.slow
def test_source_model_remaps_onto_that_vocabulary(recipe, tmp_path, tok_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "chat", weight = 0.5 }]\ntokenizer = { source = "chat" }\n'
    out = tmp_path / "out"
    tensors = build_one(recipe(body), out)
    assert (out / "tokenizer.json").read_bytes() == (tok_models["chat"] / "tokenizer.json").read_bytes()
    chat, base = load_tensors(tok_models["chat"]), load_tensors(tok_models["base"])
    v = ids(tok_models["chat"])
    assert tensors[EMBED].shape[0] == len(v) == json.loads((out / "config.json").read_text())["vocab_size"]
    torch.testing.assert_close(tensors[HEAD][v["<|im_end|>"]], chat[HEAD][v["<|im_end|>"]], rtol=0, atol=1e-6)
    b = base[EMBED][v["Ġthe"]]
    torch.testing.assert_close(tensors[EMBED][v["Ġthe"]], b + 0.5 * (chat[EMBED][v["Ġthe"]] - b), rtol=0, atol=1e-6)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [v["<|im_end|>"]]
    AutoModelForCausalLM.from_pretrained(out).generate(tok("the cat", return_tensors="pt").input_ids, max_new_tokens=2)
    # the plain string form is the same setting: same key, same bytes
    plain = recipe(body.replace('{ source = "chat" }', '"chat"'), name="plain.toml")
    report = build_recipe(plain, tmp_path / "plain")
    first = resolve(load_recipe(tmp_path / "recipe.toml"), Session())
    assert report.resolution.keys["s"] == first.keys["s"] and report.built == []


@pytest.mark.slow
def test_different_vocabularies_without_a_setting_are_a_located_error(recipe, tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(ModelReader, "get", never)
    for model, detail in (("chat", "embedding rows, 'base' "), ("swapped", "token 'a' is id")):
        path = recipe(
            f'[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{{ model = "{model}", weight = 0.5 }}]\n',
            name=f"{model}.toml",
        )
        with pytest.raises(ModelMismatchError) as e:
            build_recipe(path, tmp_path / model)
        err = e.value
        assert (
            err.key == "steps.s.inputs[0]"
            and err.line == path.read_text().splitlines().index(f'inputs = [{{ model = "{model}", weight = 0.5 }}]') + 1
        )
        assert "different vocabularies" in err.message and detail in err.message, err.message
        assert 'source = "union"' in err.hint and str(path) == err.file


def test_cli_validate_reports_the_mismatch(recipe, capsys):
    from mergepkg.cli.app import main

    path = recipe('[steps.s]\nmethod = "linear"\ninputs = ["base", "other"]\nparams = { weight = 1.0 }\n')
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    line = path.read_text().splitlines().index('inputs = ["base", "other"]') + 1
    assert (
        code == 1 and f"error: {path}:{line}: steps.s.inputs[1]: 'other' and 'base' have different vocabularies" in err
    )
    assert 'source = "union"' in err and "Traceback" not in err


@pytest.mark.slow
def test_one_vocabulary_union_is_the_plain_merge(recipe, tmp_path, tok_models):
    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft", weight = 0.5 }]\n'
    plain = build_recipe(recipe(body, name="plain.toml"), tmp_path / "plain")
    union = build_recipe(recipe(body + 'tokenizer = { source = "union" }\n', name="union.toml"), tmp_path / "union")
    assert union.resolution.keys["s"] != plain.resolution.keys["s"]  # a different setting ...
    assert union.lock.steps["s"].digest == plain.lock.steps["s"].digest  # ... that moves no row
    assert (tmp_path / "union" / "tokenizer.json").read_bytes() == (tok_models["base"] / "tokenizer.json").read_bytes()


def test_keys_of_the_tokenizer_setting(recipe):
    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "chat", weight = 0.5 }]\n'

    def key(extra: str, name: str) -> str:
        return resolve(load_recipe(recipe(body + extra, name=name)), Session()).keys["s"]

    none = key("", "a.toml")
    assert key('tokenizer = "base"\n', "b.toml") == key('tokenizer = { source = "base" }\n', "c.toml") == none
    assert key('[steps.s.tokenizer]\nsource = "chat"\n', "d.toml") == key('tokenizer = "chat"\n', "e.toml") != none
    entries = {
        extra: resolve(load_recipe(recipe(body + extra, name="entry.toml")), Session()).entries["s"]
        for extra in ("", 'tokenizer = "chat"\n', 'tokenizer = "union"\n')
    }
    # a union leaves out tokens built before into its vocabulary (one character): its key changed, no other's
    assert entries['tokenizer = "union"\n']["config"] == 5
    assert "config" not in entries[""] and entries['tokenizer = "chat"\n']["config"] == 3
    union = key('tokenizer = { source = "union" }\n', "f.toml")
    assert union == key('tokenizer = "union"\n', "g.toml") == key("tokenizer = {}\n", "h.toml")  # mergekit's default
    assert len({none, union, key('tokenizer = "chat"\n', "i.toml")}) == 3
    forced = 'tokenizer = { tokens = { "<|a|>" = { source = "chat", force = true } } }\n'
    assert key(forced, "j.toml") not in (union, key(forced.replace("true", "false"), "k.toml"))
    two = 'tokenizer = { tokens = { "a" = { source = "chat" }, "b" = { source = "base" } } }\n'
    assert key(two, "l.toml") == key(
        two.replace(
            '"a" = { source = "chat" }, "b" = { source = "base" }',
            '"b" = { source = "base" }, "a" = { source = "chat" }',
        ),
        "m.toml",
    )


@pytest.mark.parametrize(
    ("setting", "key", "message"),
    [
        ('{ sorce = "union" }', "steps.s.tokenizer.sorce", "unknown key 'sorce'"),
        ('{ source = "nobody" }', "steps.s.tokenizer.source", "'nobody' is not a model of this step"),
        (
            '{ tokens = { "<x>" = { source = "other" } } }',
            'steps.s.tokenizer.tokens."<x>".source',
            "'other' is not a model",
        ),
        (
            '{ tokens = { "<x>" = { source = { kind = "one" } } } }',
            'steps.s.tokenizer.tokens."<x>".source.kind',
            "unknown kind",
        ),
        (
            '{ tokens = { "<x>" = { source = { model = "chat", token_id = -1 } } } }',
            'steps.s.tokenizer.tokens."<x>".source.token_id',
            "expected a row index",
        ),
        (
            '{ tokens = { "<x>" = { source = "chat", force = 1 } } }',
            'steps.s.tokenizer.tokens."<x>".force',
            "true or false",
        ),
        ("3", "steps.s.tokenizer", "expected"),
        ("{ pad_to_multiple_of = 0 }", "steps.s.tokenizer.pad_to_multiple_of", "expected a positive integer"),
    ],
)
def test_setting_errors_are_located(recipe, setting, key, message):
    path = recipe(
        f'[steps.s]\nmethod = "linear"\ninputs = ["base", "chat"]\nparams = {{ weight = 1.0 }}\ntokenizer = {setting}\n'
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert e.value.key == key and message in e.value.message
    assert e.value.line == path.read_text().splitlines().index(f"tokenizer = {setting}") + 1


def test_a_token_not_in_the_output_vocabulary_is_an_error(recipe, tmp_path):
    path = recipe(
        '[steps.s]\nmethod = "linear"\ninputs = ["base", "chat"]\nparams = { weight = 1.0 }\n'
        'tokenizer = { source = "base", tokens = { "<|b|>" = { source = "chat" } } }\n'
    )
    res = resolve(load_recipe(path), Session())
    with pytest.raises(RecipeError) as e:
        lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    assert "not in the output's vocabulary" in e.value.message
    assert e.value.line == len(path.read_text().splitlines())


@pytest.mark.slow
def test_a_union_step_feeds_a_step_before_it_is_built(recipe, tmp_path, tok_models):
    body = (
        UNION
        + '\n[steps.v]\nmethod = "linear"\ninputs = ["u", "chat"]\nparams = { weight = 1.0 }\ntokenizer = { source = "u" }\n'
    )
    path = recipe(body)
    res = resolve(load_recipe(path), Session())
    laid, _ = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    assert laid["v"].tensors[0].info.shape[0] == laid["u"].tensors[0].info.shape[0]
    report = build_recipe(path, tmp_path / "out")
    tensors = load_tensors(report.outputs["v"])
    u_folder = Session().store.get(report.resolution.keys["u"]).folder
    u, vu = load_tensors(u_folder), ids(u_folder)
    assert ids(report.outputs["v"]) == vu
    chat, vc = load_tensors(tok_models["chat"]), ids(tok_models["chat"])
    # chat lacks <|b|>, only u has it: chat takes u's row, so the (normalised) linear merge is u's row
    torch.testing.assert_close(tensors[EMBED][vu["<|b|>"]], u[EMBED][vu["<|b|>"]], rtol=0, atol=1e-6)
    # both have Ġthe: the mean of their own rows
    expected = (u[EMBED][vu["Ġthe"]] + chat[EMBED][vc["Ġthe"]]) / 2
    torch.testing.assert_close(tensors[EMBED][vu["Ġthe"]], expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_tied_embeddings_union(recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    tensors = build_one(
        recipe(
            '[steps.t]\nmethod = "linear"\ninputs = ["base_tied", "other_tied"]\nparams = { weight = 1.0 }\n'
            'tokenizer = { source = "union" }\n'
        ),
        out,
    )
    assert HEAD not in tensors
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.shape[0] == len(ids(out)) and torch.equal(
        model.lm_head.weight, model.model.embed_tokens.weight
    )
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.encode("<|c|>", add_special_tokens=False) == [ids(out)["<|c|>"]]


@pytest.mark.slow
def test_special_token_ids_of_the_config_follow_the_vocabulary(tmp_path, tok_models):
    # the base's config names a token (pad) that has another id in the output's vocabulary
    base = tmp_path / "base_pad"
    shutil.copytree(tok_models["base"], base)
    the = ids(base)["Ġthe"]
    for name in ("config.json", "generation_config.json"):
        data = json.loads((base / name).read_text())
        data["pad_token_id"] = the
        (base / name).write_text(json.dumps(data))
    path = tmp_path / "pad.toml"
    path.write_text(
        f'[package]\nname = "pad"\nversion = "0.1.0"\n\n[sources]\nbase = {{ path = "{base}" }}\n'
        f'other = {{ path = "{tok_models["other"]}" }}\n\n[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\n'
        'inputs = [{ model = "other", weight = 0.5 }]\ntokenizer = { source = "other" }\n'
    )
    build_one(path, tmp_path / "out")
    moved = ids(tok_models["other"])["Ġthe"]
    assert moved != the
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tmp_path / "out" / name).read_text())
        assert config["pad_token_id"] == moved and config["bos_token_id"] == ids(tok_models["other"])["<s>"]


@pytest.mark.slow
def test_source_base_in_a_step_without_a_base_is_the_first_model(recipe, tmp_path, tok_models):
    """As mergekit and the table above say (it was refused): the first model's vocabulary,
    the same setting and key as naming it."""
    from transformers import AutoModelForCausalLM

    body = '[steps.s]\nmethod = "linear"\ninputs = ["chat", "ft"]\nparams = { weight = 0.5 }\ntokenizer = "base"\n'
    out = tmp_path / "out"
    tensors = build_one(recipe(body), out)
    assert (out / "tokenizer.json").read_bytes() == (tok_models["chat"] / "tokenizer.json").read_bytes()
    assert tensors[EMBED].shape[0] == len(ids(tok_models["chat"]))
    AutoModelForCausalLM.from_pretrained(out)
    named = resolve(load_recipe(recipe(body.replace('"base"', '{ source = "chat" }'), name="named.toml")), Session())
    assert named.keys["s"] == resolve(load_recipe(tmp_path / "recipe.toml"), Session()).keys["s"]


@pytest.mark.slow
def test_special_ids_whose_token_the_output_lacks_take_its_tokenizer_s_own(tmp_path, tok_models):
    """A chat base whose configs name its own tokens (eos <|im_end|>, pad <|im_start|>) merged
    onto a vocabulary without them: eos becomes the output tokenizer's eos, pad null (it has
    none), never an id past vocab_size (transformers refused the pad: "Padding_idx must be
    within num_embeddings"; mergekit keeps them)."""
    from transformers import AutoModelForCausalLM

    chat = tmp_path / "chat_ids"
    shutil.copytree(tok_models["chat"], chat)
    v = ids(chat)
    for name, eos in (("config.json", v["<|im_end|>"]), ("generation_config.json", [v["</s>"], v["<|im_end|>"]])):
        data = json.loads((chat / name).read_text())
        data.update(eos_token_id=eos, pad_token_id=v["<|im_start|>"])
        (chat / name).write_text(json.dumps(data))
    path = tmp_path / "ids.toml"
    path.write_text(
        f'[package]\nname = "ids"\nversion = "0.1.0"\n\n[sources]\nchat = {{ path = "{chat}" }}\n'
        f'ft = {{ path = "{tok_models["ft"]}" }}\n\n[steps.s]\nmethod = "task_arithmetic"\nbase = "chat"\n'
        'inputs = [{ model = "ft", weight = 0.5 }]\ntokenizer = "ft"\n'
    )
    out = tmp_path / "out"
    build_one(path, out)
    eos = ids(tok_models["ft"])["</s>"]
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (eos, None)
    assert config["vocab_size"] == len(ids(tok_models["ft"])) < v["<|im_end|>"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == ([eos], None)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.eos_token_id == eos and model.generation_config.eos_token_id == [eos]


def test_special_ids_follow_their_tokens_or_their_roles():
    from mergepkg.layout.align import move_token_ids, role_tokens, token_ids

    vocab = small_vocab(["a", "b"], ["<s>", "</s>"], {"eos_token": {"content": "</s>", "__type": "AddedToken"}})
    roles = role_tokens(vocab)  # tokenizer_config.json's (special_tokens_map.json names none here)
    assert roles == {"eos_token": "</s>"}
    roles["pad_token"] = "<pad>"
    within = {"a": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 3, "<x>": 4}  # the config's model
    target = {"<pad>": 0, "a": 1, "<s>": 2, "</s>": 3}  # the output's
    moved = token_ids(within, target, roles, 4)
    config = {"bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 4, "text_config": {"bos_token_id": 1}}
    assert move_token_ids(config, moved) == {
        "bos_token_id": 2,  # its token's id
        "eos_token_id": [3],  # </s>, and <|im_end|> (gone) as the tokenizer's eos: once
        "pad_token_id": 0,  # <x> is gone: the tokenizer's pad
        "text_config": {"bos_token_id": 2},
    }
    none = token_ids(within, target, {}, 4)
    assert move_token_ids({"pad_token_id": 4, "eos_token_id": [3], "bos_token_id": 9}, none) == {
        "pad_token_id": None,
        "eos_token_id": None,
        "bos_token_id": None,  # no token, past the output's rows
    }
    assert move_token_ids({"eos_token_id": [], "pad_token_id": -1}, none) == {"eos_token_id": [], "pad_token_id": -1}


@pytest.mark.slow
def test_slices_align_the_embedding_and_the_head_over_their_own_models(recipe, tmp_path, tok_models):
    from transformers import AutoModelForCausalLM

    body = (
        '[steps.p]\nmethod = "passthrough"\ntokenizer = "union"\nslices = [\n'
        '  { sources = [{ model = "base", layers = [0, 2] }] },\n  { sources = [{ model = "other", layers = [2, 4] }] },\n]\n'
    )
    out = tmp_path / "out"
    tensors = build_one(recipe(body), out)
    union = ids(out)
    base, other = load_tensors(tok_models["base"]), load_tensors(tok_models["other"])
    vb, vo = ids(tok_models["base"]), ids(tok_models["other"])
    # the embedding is the first slice's (base's): base's rows, zeros for tokens only other has
    assert torch.equal(tensors[EMBED][union["Ġcat"]], base[EMBED][vb["Ġcat"]])
    assert not tensors[EMBED][union["Ġcow"]].any()
    # the head is the last slice's (other's): other's rows, zeros for tokens only base has
    assert torch.equal(tensors[HEAD][union["Ġcow"]], other[HEAD][vo["Ġcow"]])
    assert (
        torch.equal(tensors[HEAD][union["Ġthe"]], other[HEAD][vo["Ġthe"]]) and not tensors[HEAD][union["<|a|>"]].any()
    )
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(union)


def small_vocab(tokens: list[str], added: list[str], config_extra: dict | None = None):
    """A `Vocab` of a BPE tokenizer with `tokens` and special `added` tokens, its config
    in transformers 4's style (`additional_special_tokens`) unless `config_extra` says otherwise."""
    from mergepkg.layout.vocab import Vocab

    entries = [
        {
            "id": len(tokens) + i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(added)
    ]
    data = {
        "added_tokens": entries,
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "additional_special_tokens": list(added),
        "added_tokens_decoder": {str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in entries},
    }
    config.update(config_extra or {})
    config = {k: v for k, v in config.items() if v is not None}
    files = {
        "tokenizer.json": json.dumps(data),
        "tokenizer_config.json": json.dumps(config),
        "special_tokens_map.json": json.dumps({"additional_special_tokens": list(added)}),
    }
    ids = {**{t: i for i, t in enumerate(tokens)}, **{e["content"]: e["id"] for e in entries}}
    return Vocab(ids, {e["content"]: e for e in entries}, files)


def test_union_keeps_named_extra_special_tokens():
    """transformers 5's `extra_special_tokens` may map names to tokens: kept as it is."""
    from mergepkg.layout.vocab import union

    named = {"extra_special_tokens": {"image_token": "<x>"}, "additional_special_tokens": None, "backend": "tokenizers"}
    out = union([(small_vocab(["a", "b"], ["<x>"], named), 3), (small_vocab(["c"], ["<y>"]), 2)])
    config = json.loads(out.files["tokenizer_config.json"])
    assert config["extra_special_tokens"] == {"image_token": "<x>"}
    assert json.loads(out.files["tokenizer.json"])["added_tokens"][-1]["content"] == "<y>"


def test_union_of_transformers_4_style_configs_lists_the_new_tokens():
    from mergepkg.layout.vocab import union

    vocab = small_vocab
    out = union([(vocab(["aa", "bb"], ["<x>"]), 3), (vocab(["bb", "cc"], ["<y>", "<x>"]), 4)])
    assert out.ids == {"aa": 0, "bb": 1, "<x>": 2, "cc": 3, "<y>": 4}
    config = json.loads(out.files["tokenizer_config.json"])
    assert (
        config["additional_special_tokens"] == ["<x>", "<y>"]
        and config["added_tokens_decoder"]["4"]["content"] == "<y>"
    )
    assert json.loads(out.files["special_tokens_map.json"])["additional_special_tokens"] == ["<x>", "<y>"]
    data = json.loads(out.files["tokenizer.json"])
    assert data["model"]["vocab"] == out.ids and [e["id"] for e in data["added_tokens"]] == [2, 4]


@pytest.mark.slow
def test_a_damaged_tokenizer_json_is_a_located_error(recipe, tmp_path, tok_models):
    from mergepkg.errors import SourceError

    bad = tmp_path / "bad"
    shutil.copytree(tok_models["other"], bad)
    (bad / "tokenizer.json").write_text("{ not json")
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[package]\nname = "b"\nversion = "0.1.0"\n\n[sources]\nbase = {{ path = "{tok_models["base"]}" }}\n'
        f'bad = {{ path = "{bad}" }}\n\n[steps.s]\nmethod = "linear"\ninputs = ["base", "bad"]\n'
        'params = { weight = 1.0 }\ntokenizer = "union"\n'
    )
    with pytest.raises(SourceError) as e:
        build_recipe(path, tmp_path / "out")
    assert "cannot read tokenizer.json" in e.value.message and str(bad / "tokenizer.json") == e.value.file


@pytest.mark.slow
def test_forced_token_on_one_vocabulary_changes_that_row_only(recipe, tmp_path, tok_models):
    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft", weight = 0.5 }]\n'
    plain = build_one(recipe(body, name="plain.toml"), tmp_path / "plain")
    forced = build_one(
        recipe(
            body + 'tokenizer = { source = "base", tokens = { "Ġthe" = { source = "ft", force = true } } }\n',
            name="forced.toml",
        ),
        tmp_path / "forced",
    )
    v = ids(tok_models["base"])
    ft = load_tensors(tok_models["ft"])
    for name in (EMBED, HEAD):
        torch.testing.assert_close(forced[name][v["Ġthe"]], ft[name][v["Ġthe"]], rtol=0, atol=1e-6)
        others = [i for i in range(plain[name].shape[0]) if i != v["Ġthe"]]
        assert torch.equal(forced[name][others], plain[name][others])
    assert all(torch.equal(forced[n], plain[n]) for n in plain if n not in (EMBED, HEAD))
    assert (tmp_path / "forced" / "tokenizer.json").read_bytes() == (tok_models["base"] / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_a_union_builds_the_same_bytes_in_another_store(recipe, tmp_path, monkeypatch):
    path = recipe(UNION)
    first = build_recipe(path, tmp_path / "a")
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "other-home"))
    second = build_recipe(path, tmp_path / "b")
    assert second.built == ["u"] and second.lock.steps["u"].digest == first.lock.steps["u"].digest
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_pad_to_multiple_of_adds_mean_rows(recipe, tmp_path, tok_models):
    from transformers import AutoModelForCausalLM

    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft", weight = 0.5 }]\n'
    out = tmp_path / "out"
    tensors = build_one(recipe(body + 'tokenizer = { source = "base", pad_to_multiple_of = 32 }\n'), out)
    n = len(ids(tok_models["base"]))
    rows = -(-n // 32) * 32
    assert rows > n and json.loads((out / "config.json").read_text())["vocab_size"] == rows
    base, ft = load_tensors(tok_models["base"]), load_tensors(tok_models["ft"])
    plain = build_one(recipe(body, name="plain.toml"), tmp_path / "plain")
    for name in (EMBED, HEAD):
        assert tensors[name].shape[0] == rows and torch.equal(tensors[name][:n], plain[name])
        mb, mf = base[name].mean(0), ft[name].mean(0)  # each model pads with its mean row
        for r in range(n, rows):
            torch.testing.assert_close(tensors[name][r], mb + 0.5 * (mf - mb), rtol=0, atol=1e-6)
    AutoModelForCausalLM.from_pretrained(out)
    union = build_one(
        recipe(
            UNION.replace('{ source = "union" }', '{ source = "union", pad_to_multiple_of = 32 }'), name="union.toml"
        ),
        tmp_path / "union",
    )
    n = len(ids(tmp_path / "union"))
    assert union[EMBED].shape[0] == -(-n // 32) * 32 > n and (union[EMBED][n:] == union[EMBED][-1]).all()
    res = resolve(load_recipe(tmp_path / "recipe.toml"), Session())
    assert res.keys["s"] != resolve(load_recipe(tmp_path / "plain.toml"), Session()).keys["s"]


NEW_CHARACTERS = "the cow flew high, a quiz"  # w, i, l, b, ... are other's characters, not base's


@pytest.mark.parametrize(("base", "other"), [("base", "other"), ("bf_base", "bf_other")])
def test_a_union_encodes_text_as_its_base_does(recipe, tmp_path, tok_models, base, other):
    """Another model's token of one character the base lacks is reached without a merge:
    entered, it would replace the base's <unk> (base) or byte tokens (bf_base, as Llama-2
    and Mistral) for that character. It is left out of the union, rows and all; its longer
    tokens, which need merges the base lacks, and its added tokens join."""
    from transformers import AutoTokenizer

    body = f'[steps.u]\nmethod = "linear"\ninputs = ["{base}", "{other}"]\nparams = {{ weight = 0.5 }}\ntokenizer = "union"\n'
    res = resolve(load_recipe(recipe(body)), Session())
    laid, _ = lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    vocab = laid["u"].vocab
    for name, text in vocab.files.items():
        (tmp_path / name).write_text(text)
    union, base_ids, other_ids = vocab.ids, ids(tok_models[base]), ids(tok_models[other])
    new = [t for t in other_ids if t not in base_ids]
    assert "w" in new and "w" not in union and "Ġ" not in new  # the byte-level base has every byte's character
    assert [t for t in new if t not in union] == [t for t in new if len(t) == 1]
    assert {"<|im_start|>", "<|b|>"} & set(union) and any(len(t) > 2 and t in union for t in new)
    assert laid["u"].tensors[0].info.shape[0] == len(union) == max(union.values()) + 1
    base_tok, tok = AutoTokenizer.from_pretrained(tok_models[base]), AutoTokenizer.from_pretrained(tmp_path)
    for text in (NEW_CHARACTERS, "w", "the cat sat on the mat"):
        assert tok.tokenize(text) == base_tok.tokenize(text), text
        assert tok.encode(text) == base_tok.encode(text)


def test_tokens_a_bpe_model_reaches_without_a_merge():
    """What `reached_unmerged` says, against what the tokenizers library produces from text
    with no merges at all: one character, with the continuing prefix and the word's suffix."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mergepkg.layout.vocab import reached_unmerged

    pieces = ["<unk>", "a", "##b", "c</w>", "##c</w>", "ab", "##bc</w>", "b"]
    bpe = models.BPE(
        {t: i for i, t in enumerate(pieces)},
        [],
        unk_token="<unk>",
        continuing_subword_prefix="##",
        end_of_word_suffix="</w>",
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model = json.loads(tok.to_str())["model"]
    produced = {t for text in ("ab abc c ac ba b", "abc") for t in tok.encode(text).tokens} - {"<unk>"}
    assert produced == {"a", "b", "##b", "c</w>", "##c</w>"}  # not "ab", "##bc</w>": they need merges
    assert {t for t in pieces[1:] if reached_unmerged(model, t)} == produced
    assert not reached_unmerged({"type": "WordPiece", "vocab": {}}, "a")
    assert reached_unmerged({"type": "BPE", "vocab": {}, "merges": []}, "é") and not reached_unmerged(model, "ab")


def test_a_byte_fallback_base_reaches_byte_tokens_without_a_merge():
    """A character it lacks becomes `<0xNN>` tokens, looked up as they are: another
    model's byte token would replace its `<unk>` for that byte."""
    from tokenizers import Tokenizer, models

    from mergepkg.layout.vocab import reached_unmerged

    vocab = {"<unk>": 0, "a": 1}
    base = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    with_byte = Tokenizer(models.BPE({**vocab, "<0x71>": 2}, [], unk_token="<unk>", byte_fallback=True))
    assert base.encode("aq").tokens == ["a", "<unk>"] and with_byte.encode("aq").tokens == ["a", "<0x71>"]
    model = json.loads(base.to_str())["model"]
    assert reached_unmerged(model, "<0x71>") and not reached_unmerged({**model, "byte_fallback": False}, "<0x71>")


@pytest.mark.slow
def test_a_byte_fallback_union_builds_a_model_that_reads_its_base_s_text(recipe, tmp_path, tok_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    body = (
        '[steps.u]\nmethod = "task_arithmetic"\nbase = "bf_base"\ninputs = [{ model = "bf_other", weight = 0.5 }]\n'
        'tokenizer = "union"\n'
    )
    out = tmp_path / "out"
    tensors = build_one(recipe(body), out)
    union, other = ids(out), ids(tok_models["bf_other"])
    assert tensors[EMBED].shape[0] == len(union) == json.loads((out / "config.json").read_text())["vocab_size"]
    b = load_tensors(tok_models["bf_other"])
    torch.testing.assert_close(tensors[EMBED][union["▁cow"]], b[EMBED][other["▁cow"]], rtol=0, atol=1e-6)
    tok, base_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tok_models["bf_base"])
    prompt = NEW_CHARACTERS + "<|im_end|>"
    assert tok.tokenize(prompt) == [*base_tok.tokenize(NEW_CHARACTERS), "<|im_end|>"]
    assert tok.decode(tok(prompt).input_ids, skip_special_tokens=True) == NEW_CHARACTERS
    model = AutoModelForCausalLM.from_pretrained(out)
    model.generate(tok(prompt, return_tensors="pt").input_ids, max_new_tokens=2)


@pytest.mark.slow
def test_a_copied_tokenizer_with_tokens_past_its_rows_warns(tmp_path, tok_models):
    """A chat tokenizer whose model was never resized for its ChatML tokens: its copy keeps
    them past the output's rows (the model fails on them, as mergekit's output does): MP203;
    a union gives them the rows of the model that has them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    short = tmp_path / "short"
    shutil.copytree(tok_models["chat"], short, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    llama(short, len(ids(tok_models["base"])), seed=6, like=tok_models["base"])
    body = '[steps.s]\nmethod = "task_arithmetic"\nbase = "short"\ninputs = [{ model = "chat", weight = 0.5 }]\n'
    sources = f'short = {{ path = "{short}" }}\nchat = {{ path = "{tok_models["chat"]}" }}\n'
    head = f'[package]\nname = "short"\nversion = "0.1.0"\n\n[sources]\n{sources}\n'
    for setting, warned in (('"base"', True), ('"union"', False)):
        path = tmp_path / f"{warned}.toml"
        path.write_text(head + body + f"tokenizer = {setting}\n")
        report = build_recipe(path, tmp_path / f"out{warned}")
        assert [p.code for p in report.pitfalls] == (["MP203"] if warned else [])
        tok = AutoTokenizer.from_pretrained(tmp_path / f"out{warned}")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"out{warned}")
        prompt = tok("<|im_start|>the cat", return_tensors="pt").input_ids
        assert (prompt.max().item() >= model.config.vocab_size) == warned
        if not warned:
            model(prompt)
