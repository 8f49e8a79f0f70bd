"""A step's `chat_template`: "auto", a built-in template, a model of the step or Jinja text.

The parsing, key and lock tests run on stub models; the build tests (slow) give tiny
models chat templates (in chat_template.jinja, or in tokenizer_config.json as older
tokenizers keep them), build each form, and load the output's tokenizer with transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import build_recipe, llama_cpp_tree
from tiny import tiny_config

from mergepkg.errors import RecipeError
from mergepkg.lockfile import lock_path, read_lock, recipe_hash
from mergepkg.recipe.chat import builtin_names, builtin_template
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.settings import Settings
from mergepkg.store.session import Session

ROOT = Path(__file__).parents[2]
LINEAR = '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
JINJA = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
T1 = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
T2 = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def with_template(recipe_text: str, value: str) -> str:
    return recipe_text + f"chat_template = {json.dumps(value)}\n"


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "chatml", "llama3", "mistral", "alpaca", "exaone", "ft2", JINJA])
def test_each_form_parses(recipe_file, value):
    step = load_recipe(recipe_file(with_template(LINEAR, value))).steps["s"]
    assert step.chat_template == value


def test_a_template_with_transformers_tags_compiles(recipe_file):
    """Loop controls and transformers' {% generation %} blocks are Jinja as transformers reads it."""
    text = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% break %}{% endfor %}"
    path = recipe_file(LINEAR + f"chat_template = {json.dumps(text)}\n")
    assert load_recipe(path).steps["s"].chat_template == text


def test_without_the_option_the_step_has_none(recipe_file):
    assert load_recipe(recipe_file(LINEAR)).steps["s"].chat_template is None


def test_builtins_are_package_data():
    assert set(builtin_names()) >= {"chatml", "llama3", "mistral", "alpaca", "exaone"}
    for name in builtin_names():
        text = builtin_template(name)
        assert "{%" in text and "messages" in text and "http" in text  # a template, citing its source


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ('"chatlm"', "unknown chat template 'chatlm'", "did you mean 'chatml'?"),
        ('"ft9"', "unknown chat template 'ft9'", "did you mean 'ft"),
        ('"hello there"', "not a Jinja template", 'expected "auto", a built-in template (alpaca, chatml'),
        ('""', "empty string", "Jinja text"),
        ("3", "got int 3", None),
        ('["chatml"]', "got list", None),
        ('"{% for m in %}{{ m }}"', "does not compile: line 1 of the template: Expected an expression", "Jinja"),
        ('"{{ bos_token }"', "does not compile", "Jinja"),
    ],
)
def test_bad_values_are_located_errors(recipe_file, value, message, hint):
    path = recipe_file(LINEAR + f"chat_template = {value}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert e.value.key == "steps.s.chat_template" and e.value.file == str(path)
    assert e.value.line == path.read_text().splitlines().index(f"chat_template = {value}") + 1
    assert message in e.value.message
    if hint:
        assert hint in e.value.hint


def test_a_model_named_like_a_builtin_is_ambiguous(recipe_file, stub_models):
    path = recipe_file(
        '[steps.s]\nmethod = "linear"\ninputs = [{ model = "chatml", weight = 1 }, { model = "ft2", weight = 1 }]\n'
        'chat_template = "chatml"\n'
    )
    path.write_text(
        path.read_text().replace("[sources]\n", f'[sources]\nchatml = {{ path = "{stub_models["ft1"]}" }}\n')
    )
    with pytest.raises(RecipeError, match="names both a model of this step and a built-in template") as e:
        load_recipe(path)
    assert e.value.key == "steps.s.chat_template" and e.value.line is not None


def test_misspelt_key_has_did_you_mean(recipe_file):
    with pytest.raises(RecipeError, match="unknown key 'chat_templat'") as e:
        load_recipe(recipe_file(LINEAR + 'chat_templat = "chatml"\n'))
    assert "chat_template" in e.value.hint


def test_moe_steps_take_it_too(recipe_file):
    moe = (
        '[steps.m]\nmethod = "moe"\nbase = "base"\nparams = { gate_mode = "random" }\n'
        'experts = [{ model = "ft1" }, { model = "ft2" }]\n'
    )
    assert load_recipe(recipe_file(moe + 'chat_template = "ft1"\n')).steps["m"].chat_template == "ft1"
    with pytest.raises(RecipeError, match="unknown chat template 'ft7'") as e:
        load_recipe(recipe_file(moe + 'chat_template = "ft7"\n'))
    assert e.value.key == "steps.m.chat_template"


# -- keys and the lock --------------------------------------------------------------------


def key(recipe_file, body: str) -> tuple[str, dict]:
    res = resolve(load_recipe(recipe_file(body)), Session())
    return res.keys["s"], res.entries["s"]


def test_keys_and_recipe_hash_change_only_when_it_is_set(recipe_file):
    plain, entry = key(recipe_file, LINEAR)
    assert "chat_template" not in entry
    keys = {v: key(recipe_file, with_template(LINEAR, v))[0] for v in ("auto", "chatml", "llama3", "ft1", "ft2", T1)}
    assert plain not in keys.values() and len(set(keys.values())) == len(keys)
    hashes = {recipe_hash(load_recipe(recipe_file(with_template(LINEAR, v)))) for v in ("chatml", "auto")}
    assert recipe_hash(load_recipe(recipe_file(LINEAR))) not in hashes and len(hashes) == 2


def test_a_builtin_and_its_text_have_one_key(recipe_file):
    named, entry = key(recipe_file, with_template(LINEAR, "chatml"))
    written, _ = key(recipe_file, with_template(LINEAR, builtin_template("chatml")))
    assert named == written and entry["chat_template"] == {"text": builtin_template("chatml")}


def test_a_model_is_keyed_by_its_identity_not_its_name(recipe_file, stub_models):
    named, entry = key(recipe_file, with_template(LINEAR, "ft2"))
    renamed = LINEAR.replace('"ft2"', '"other"') + 'chat_template = "other"\n'
    path = recipe_file(renamed)
    path.write_text(
        path.read_text().replace("[sources]\n", f'[sources]\nother = {{ path = "{stub_models["ft2"]}" }}\n')
    )
    res = resolve(load_recipe(path), Session())
    assert res.keys["s"] == named and entry["chat_template"] == {"model": res.entries["s"]["inputs"][1]["ref"]}


def test_an_imported_step_keeps_its_model_and_key(recipe_file, tmp_path):
    other = recipe_file(with_template(LINEAR, "ft2"), name="other.toml")
    main = recipe_file('[steps.top]\nmethod = "passthrough"\ninputs = ["imp"]\n', name="main.toml")
    main.write_text(main.read_text().replace("[sources]\n", '[sources]\nimp = { recipe = "other.toml", step = "s" }\n'))
    res = resolve(load_recipe(main), Session())
    assert res.recipe.steps["imp::s"].chat_template == "imp::ft2"
    assert res.keys["imp::s"] == resolve(load_recipe(other), Session()).keys["s"]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_locks_still_match(path):
    """Keys and recipe hashes of recipes without the option are what they were."""
    recipe = load_recipe(path)
    lock = read_lock(lock_path(recipe))
    session = Session(Settings(llama_cpp=llama_cpp_tree())) if recipe.exports else Session()
    res = resolve(recipe, session, lock=lock, mode="locked")  # raises when anything differs
    assert {n: s.key for n, s in lock.steps.items()} == res.keys
    assert {n: e.key for n, e in lock.exports.items()} == {n: e.key for n, e in res.exports.items()}


# -- building: what the output holds, and transformers reading it ------------------------------


@pytest.fixture
def chat_models(models, tmp_path) -> dict[str, Path]:
    """base: no template; t1: T1 in chat_template.jinja; t1_legacy: T1 (with whitespace around
    it) in tokenizer_config.json; t2: T2 in chat_template.jinja, and a chat_template.json."""
    out = {"base": models["base"]}
    for name, src in (("t1", "ft1"), ("t1_legacy", "ft2"), ("t2", "ft3")):
        out[name] = Path(shutil.copytree(models[src], tmp_path / "chat-models" / name))
    (out["t1"] / "chat_template.jinja").write_text(T1)
    config = json.loads((out["t1_legacy"] / "tokenizer_config.json").read_text())
    (out["t1_legacy"] / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": f"\n{T1}\n"}))
    (out["t2"] / "chat_template.jinja").write_text(T2)
    (out["t2"] / "chat_template.json").write_text(json.dumps({"chat_template": T2}))
    return out


def write(tmp_path: Path, folders: dict[str, Path], body: str) -> Path:
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in folders.items())
    path = tmp_path / "chat.toml"
    path.write_text(f'[package]\nname = "chat"\nversion = "0.1.0"\n\n[sources]\n{sources}\n{body}')
    return path


def step(name: str, inputs: list[str], template: str | None, **extra: str) -> str:
    text = f'[steps.{name}]\nmethod = "linear"\ninputs = [{", ".join(f"{{ model = {json.dumps(m)}, weight = 1 }}" for m in inputs)}]\n'
    text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return text + (f"chat_template = {json.dumps(template)}\n" if template is not None else "") + "\n"


def check_output(folder: Path, expected: str | None) -> None:
    """The output holds `expected` as transformers writes a template, and transformers reads it."""
    from transformers import AutoTokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert not (folder / "chat_template.json").exists()
    tok = AutoTokenizer.from_pretrained(folder)
    if expected is None:
        assert not (folder / "chat_template.jinja").exists() and "chat_template" not in config
        assert tok.chat_template is None
        return
    assert (folder / "chat_template.jinja").read_text() == expected
    assert "chat_template" not in config
    assert tok.chat_template == expected
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert "hi" in text and "yo" in text
    ids = tok.apply_chat_template(MESSAGES, tokenize=True)
    assert len(ids["input_ids"] if isinstance(ids, dict) else ids) > 0


def test_each_form_is_written_and_loads(chat_models, tmp_path):
    body = "".join(
        [
            step("auto", ["base", "t1", "t1_legacy", "t2"], "auto"),  # T1 twice (once with whitespace), T2 once
            step("tie", ["base", "t2", "t1"], "auto"),  # one each: the first in the step's order
            step("model", ["t1", "t2"], "t2"),
            step("legacy", ["t1_legacy", "t1"], "t1_legacy"),  # read from tokenizer_config.json
            step("builtin", ["t1_legacy", "t2"], "chatml"),  # the config's key is removed
            step("text", ["t2", "t1"], JINJA),  # chat_template.json is removed
            step("unset", ["t1_legacy", "t2"], None),  # copied as it is
            step("other_tokenizer", ["base", "t1"], "auto", tokenizer="base"),  # the tokenizer's model has none
        ]
    )
    path = write(tmp_path, chat_models, body)
    report = build_recipe(path, tmp_path / "out")
    out = report.outputs
    check_output(out["auto"], T1)
    check_output(out["tie"], T2)
    check_output(out["model"], T2)
    check_output(out["legacy"], f"\n{T1}\n")
    check_output(out["builtin"], builtin_template("chatml"))
    check_output(out["text"], JINJA)
    check_output(out["other_tokenizer"], T1)
    # without the option, the tokenizer files are the tokenizer model's, byte for byte
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (out["unset"] / name).read_bytes() == (chat_models["t1_legacy"] / name).read_bytes()
    assert not (out["unset"] / "chat_template.jinja").exists()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out["unset"]).chat_template == f"\n{T1}\n"
    # the tensors do not depend on the template: same digest with and without it
    assert report.artifacts["builtin"].digest == report.artifacts["unset"].digest


def test_auto_without_templates_keeps_the_tokenizer_as_it_is(models, tmp_path):
    path = write(tmp_path, {"ft1": models["ft1"], "ft2": models["ft2"]}, step("s", ["ft1", "ft2"], "auto"))
    (folder,) = build_recipe(path, tmp_path / "out").outputs.values()
    check_output(folder, None)
    assert (folder / "tokenizer_config.json").read_bytes() == (models["ft1"] / "tokenizer_config.json").read_bytes()


def test_a_model_without_a_template_is_an_error_before_any_tensor_is_read(models, tmp_path):
    from mergepkg.api import validate

    path = write(tmp_path, {"ft1": models["ft1"], "ft2": models["ft2"]}, step("s", ["ft1", "ft2"], "ft2"))
    with pytest.raises(RecipeError, match="'ft2' has no chat template") as e:
        validate(path)
    assert e.value.key == "steps.s.chat_template"
    assert e.value.line == path.read_text().splitlines().index('chat_template = "ft2"') + 1


def chatty(folder: Path, base: Path, template: str) -> Path:
    """The base's tokenizer with two more special tokens and `template`, beside a tiny
    Llama with two more embedding rows (random weights of the same shapes otherwise)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = template
    tok.save_pretrained(folder)
    torch.manual_seed(7)
    LlamaForCausalLM(tiny_config(vocab=len(tok))).save_pretrained(folder)
    return folder


def test_union_honours_it_and_a_later_step_inherits_it(chat_models, tmp_path):
    folders = {**chat_models, "chatty": chatty(tmp_path / "chatty", chat_models["base"], T2)}
    body = step("first", ["t1", "t1_legacy"], "chatml")  # not built when the union is laid out
    body += (
        '[steps.union_model]\nmethod = "task_arithmetic"\nbase = "t1"\n'
        'inputs = [{ model = "chatty", weight = 0.5 }]\ntokenizer = "union"\nchat_template = "chatty"\n\n'
        '[steps.union_chain]\nmethod = "task_arithmetic"\nbase = "first"\n'
        'inputs = [{ model = "chatty", weight = 0.5 }]\ntokenizer = "union"\n\n'
    )
    path = write(tmp_path, folders, body)
    out = build_recipe(path, tmp_path / "out").outputs
    from transformers import AutoTokenizer

    for name, expected in (("union_model", T2), ("union_chain", builtin_template("chatml"))):
        check_output(out[name], expected)
        tok = AutoTokenizer.from_pretrained(out[name])
        assert tok.convert_tokens_to_ids("<|im_end|>") == len(tok) - 1  # the union's tokens, as before
