"""Recipe parsing: the model it builds and the located errors it raises."""

from __future__ import annotations

import os

import pytest

from mergepkg.errors import RecipeError, SourceError
from mergepkg.lockfile import recipe_hash
from mergepkg.recipe.model import Condition
from mergepkg.recipe.parse import load_recipe

TIES = """
[steps.skills]
method = "ties"
base = "base"
inputs = [
  { model = "ft1", weight = 1.0, density = 0.5 },
  { model = "ft2", weight = [0.2, 0.8], density = 0.7 },
]
params = { normalize = false }
dtype = "bfloat16"
out_dtype = "float16"
tokenizer = "ft1"
"""


def test_parses_steps_inputs_params(recipe_file, stub_models):
    r = load_recipe(recipe_file(TIES))
    step = r.steps["skills"]
    assert step.method == "ties" and step.base == "base"
    assert [i.model for i in step.inputs] == ["ft1", "ft2"]
    assert step.inputs[1].params == {"weight": (0.2, 0.8), "density": 0.7}
    assert step.params == {"normalize": False}
    assert (step.dtype, step.out_dtype, step.tokenizer) == ("bfloat16", "float16", "ft1")
    assert r.sources["base"].path == stub_models["base"].resolve()
    assert r.outputs == ("skills",) and r.seed == 0


def test_filters_and_gradients(recipe_file):
    r = load_recipe(
        recipe_file("""
        [steps.s]
        method = "slerp"
        base = "base"
        inputs = ["ft1"]
        params.t = [ { filter = "self_attn", value = [0, 0.5, 1] }, { value = 0.3 } ]
    """)
    )
    assert r.steps["s"].params["t"] == (Condition("self_attn", (0.0, 0.5, 1.0)), Condition(None, 0.3))


def test_outputs_default_to_steps_nobody_uses(recipe_file):
    r = load_recipe(
        recipe_file("""
        [steps.a]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]
        [steps.b]
        method = "passthrough"
        inputs = ["a"]
        [steps.c]
        method = "passthrough"
        inputs = ["ft3"]
    """)
    )
    assert r.outputs == ("b", "c")


def test_hf_source(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(
        '[package]\nname="x"\nversion="1"\n[sources]\nm = { hf = "org/model", revision = "v1" }\n'
        '[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
    )
    src = load_recipe(p).sources["m"]
    assert (src.hf, src.revision, src.path) == ("org/model", "v1", None)


@pytest.mark.parametrize(
    "body, key, line, message",
    [
        (
            '[steps.s]\nmethod = "ties"\nbase = "base"\ninputs = [\n  { model = "ft1", weight = 1, density = 0.5 },\n'
            '  { model = "ft2", weight = 1, density = 1.5 },\n]\n',
            "steps.s.inputs[1].density",
            6,
            "expected a number in (0, 1], got 1.5",
        ),
        ('[steps.s]\nmethod = "tie"\n', "steps.s.method", 2, "unknown method 'tie'"),
        (
            '[steps.s]\nmethod = "ties"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1, densty = 0.5 }]\n',
            "steps.s.inputs[0].densty",
            4,
            "no per-input parameter 'densty'",
        ),
        (
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft9", weight = 1 }]\n',
            "steps.s.inputs[0].model",
            3,
            "no source or step named 'ft9'",
        ),
        ('[steps.s]\nmethod = "ties"\ninputs = [{ model = "ft1", weight = 1 }]\n', "steps.s", 1, "needs a base model"),
        (
            '[steps.s]\nmethod = "linear"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1 }]\n',
            "steps.s.base",
            3,
            "takes no base",
        ),
        (
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1" }]\n',
            "steps.s.inputs[0]",
            3,
            "missing parameter 'weight'",
        ),
        (
            '[steps.s]\nmethod = "ties"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1 }]\nparams = { density = 2 }\n',
            "steps.s.params.density",
            5,
            "expected a number in (0, 1], got 2",
        ),
        (
            '[steps.s]\nmethod = "slerp"\nbase = "base"\ninputs = ["ft1", "ft2"]\nparams = { t = 0.5 }\n',
            "steps.s.inputs",
            4,
            "takes exactly 1 model",
        ),
        (
            '[steps.s]\nmethod = "passthrough"\nslices = [{ sources = [{ model = "ft1", layers = [2, 1] }] }]\n',
            "steps.s.slices[0].sources[0].layers",
            3,
            "0 <= start < end",
        ),
        (
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }]\ndtype = "fp32"\n',
            "steps.s.dtype",
            4,
            "unknown dtype 'fp32'",
        ),
        (
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }]\nbogus = 1\n',
            "steps.s.bogus",
            4,
            "unknown key 'bogus'",
        ),
        (
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }]\ntokenizer = "ft2"\n',
            "steps.s.tokenizer",
            4,
            "not a model of this step",
        ),
    ],
)
def test_located_errors(tmp_path, stub_models, body, key, line, message):
    head = '[package]\nname = "t"\nversion = "0.1.0"\n[sources]\n' + "".join(
        f'{k} = {{ path = "{v}" }}\n' for k, v in stub_models.items()
    )
    path = tmp_path / "r.toml"
    path.write_text(head + body)
    offset = head.count("\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    e = info.value
    assert e.key == key and message in e.message
    assert e.line == offset + line and e.file == str(path)
    assert str(e).startswith(f"{path}:{offset + line}: {key}: ")


def test_did_you_mean_hints(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file('[steps.s]\nmethod = "tie"\n'))
    assert info.value.hint == "did you mean 'ties'?"
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file('[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft_1", weight = 1 }]\n'))
    assert "did you mean" in info.value.hint


def test_invalid_toml_reports_the_line(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[package]\nname = "x"\nversion = \n')
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    assert info.value.line == 3 and "invalid TOML" in info.value.message


@pytest.mark.parametrize(
    ("name", "key"),
    # a name holding a dot is quoted: `sources.ft.v2.path` pointed at the [sources] header
    [("m", "sources.m.path"), ('"ft.v2"', 'sources."ft.v2".path')],
)
def test_missing_path_is_a_located_source_error(tmp_path, name, key):
    p = tmp_path / "r.toml"
    p.write_text(
        f'[package]\nname = "x"\nversion = "1"\n[sources]\n{name} = {{ path = "./nowhere" }}\n'
        f'[steps.s]\nmethod = "passthrough"\ninputs = [{name.strip(chr(34))!r}]\n'
    )
    with pytest.raises(SourceError) as info:
        load_recipe(p)
    assert info.value.key == key and info.value.line == 5
    assert isinstance(info.value, FileNotFoundError)  # errors subclass the builtin a caller expects


def test_a_path_source_through_a_symlink_is_kept_as_the_recipe_writes_it(tmp_path):
    """`models -> /mnt/big/models` is a common layout; the link was resolved, so the lock
    and the recipe's hash held a path of this machine and `--locked` failed elsewhere."""
    body = '[package]\nname = "x"\nversion = "1"\n[sources]\nm = { path = "models/base" }\n'
    body += '[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
    (tmp_path / "a" / "models" / "base").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "models").symlink_to(tmp_path / "a" / "models")
    for folder in ("a", "b"):
        (tmp_path / folder / "r.toml").write_text(body)
    a, b = load_recipe(tmp_path / "a" / "r.toml"), load_recipe(tmp_path / "b" / "r.toml")
    assert b.sources["m"].path == tmp_path.resolve() / "b" / "models" / "base"
    assert recipe_hash(a) == recipe_hash(b)
    assert os.path.relpath(b.sources["m"].path, b.path.parent) == "models/base"  # what the lock records


def test_a_recipe_named_like_a_lock_is_refused(tmp_path):
    """Its lock would be the recipe itself, and the lock's hint said to delete it."""
    p = tmp_path / "my.lock"
    p.write_text('[package]\nname = "x"\nversion = "1"\n')
    with pytest.raises(RecipeError, match=r"may not end in \.lock") as info:
        load_recipe(p)
    assert "end in .toml" in info.value.hint


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "none.toml")


def test_dotted_param_keys_are_located(recipe_file):
    path = recipe_file(
        '[steps.s]\nmethod = "ties"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1 }]\n'
        'params.density = [\n  { filter = "mlp", value = [0.5, 1] },\n  { value = 1.5 },\n]\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    offset = path.read_text().count("\n") - 8
    assert info.value.key == "steps.s.params.density[1].value" and info.value.line == offset + 7


def test_tokenizer_base_names_an_input_called_base_when_the_step_has_no_base(recipe_file):
    r = load_recipe(
        recipe_file(
            '[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "base", weight = 1 }]\n'
            'tokenizer = "base"\n'
        )
    )
    assert r.steps["s"].tokenizer_model == "base"


def test_a_byte_order_mark_is_not_part_of_the_recipe(recipe_file):
    """Windows editors may save UTF-8 with a BOM, which TOML does not allow."""
    path = recipe_file('[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n')
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    recipe = load_recipe(path)
    assert list(recipe.steps) == ["s"] and not recipe.text.startswith("\ufeff")


def test_an_error_in_a_step_named_with_a_dot_is_located_and_its_hint_is_toml(recipe_file):
    """`steps.soup.v2.inputs[1]` had no line, and its hint `[steps.soup.v2.params]` named
    another table."""
    path = recipe_file(
        '[steps."soup.v2"]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2" }]\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    e = info.value
    assert e.key == 'steps."soup.v2".inputs[1]' and e.line is not None
    assert '[steps."soup.v2".params]' in (e.hint or "")


def test_a_valid_recipe_is_parsed_without_locating_any_key(recipe_file, monkeypatch):
    """Locating a key scans the text: parsing once located every step's `method` whether
    wrong or not, quadratic in the steps (2,000 steps: 22 s). Only errors locate."""
    import mergepkg.recipe.tables

    def locate(text, key):
        raise AssertionError(f"located {key} in a valid recipe")

    monkeypatch.setattr(mergepkg.recipe.tables, "locate", locate)
    body = "".join(
        f'[steps.s{i}]\nmethod = "linear"\ninputs = [{{ model = "ft1", weight = 1 }}, {{ model = "ft2", weight = 1 }}]\n'
        for i in range(20)
    )
    assert len(load_recipe(recipe_file(body)).steps) == 20
