"""`[exports.NAME]`: the exports a recipe asks for, and the located errors of bad ones."""

from __future__ import annotations

import pytest

from mergepkg.errors import RecipeError
from mergepkg.lockfile import LockedExport, parse_lock, recipe_hash, write_lock
from mergepkg.recipe.exports import QUANTIZER_TYPES
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

ONE = """
[steps.merged]
method = "linear"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
"""


def test_an_export_names_its_step_format_and_type(recipe_file):
    r = load_recipe(recipe_file(ONE + '[exports.m-q4]\nstep = "merged"\nformat = "gguf"\ntype = "Q4_K_M"\n'))
    e = r.exports["m-q4"]
    assert (e.name, e.step, e.format, e.type) == ("m-q4", "merged", "gguf", "q4_k_m")  # the type in lowercase


def test_the_step_defaults_to_the_only_output_and_the_format_to_gguf(recipe_file):
    r = load_recipe(recipe_file(ONE + '[exports.m]\ntype = "bf16"\n'))
    assert (r.exports["m"].step, r.exports["m"].format) == ("merged", "gguf")
    assert load_recipe(recipe_file(ONE)).exports == {}


@pytest.mark.parametrize(
    ("table", "key", "message", "hint"),
    [
        ('type = "q4_k"', "exports.e.type", "unknown GGUF type 'q4_k'", "q4_k_s"),
        ('step = "merged"', "exports.e", "missing type", "bf16"),
        ('step = "merge"\ntype = "f32"', "exports.e.step", "no step named 'merge'", "merged"),
        ('format = "onnx"\ntype = "f32"', "exports.e.format", "unknown export format 'onnx'", "gguf"),
        ('type = "f32"\nquant = "x"', "exports.e.quant", "unknown key 'quant'", None),
    ],
)
def test_a_bad_export_is_a_located_error(recipe_file, table, key, message, hint):
    path = recipe_file(ONE + "[exports.e]\n" + table + "\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert (e.value.key, e.value.message) == (key, message)
    assert e.value.line is not None and key.split(".")[-1] in path.read_text().splitlines()[e.value.line - 1]
    assert hint is None or hint in (e.value.hint or "")


def test_several_outputs_need_the_step_named(recipe_file):
    two = ONE + '[steps.other]\nmethod = "linear"\ninputs = [{ model = "ft3", weight = 1.0 }]\n'
    with pytest.raises(RecipeError, match="several outputs") as e:
        load_recipe(recipe_file(two + '[exports.e]\ntype = "f32"\n'))
    assert e.value.key == "exports.e"


def test_an_export_name_is_a_name_never_a_path(recipe_file):
    with pytest.raises(RecipeError, match="invalid name"):
        load_recipe(recipe_file(ONE + '[exports."../x"]\ntype = "f32"\n'))


def test_exports_are_in_the_recipe_hash(recipe_file):
    plain = load_recipe(recipe_file(ONE))
    q8 = load_recipe(recipe_file(ONE + '[exports.e]\ntype = "q8_0"\n'))
    f16 = load_recipe(recipe_file(ONE + '[exports.e]\ntype = "f16"\n'))
    assert len({recipe_hash(plain), recipe_hash(q8), recipe_hash(f16)}) == 3
    assert recipe_hash(plain) == recipe_hash(load_recipe(recipe_file(ONE)))  # recipes without exports keep theirs


def test_lock_entries_of_exports_read_back_as_written(tmp_path):
    entry = LockedExport(
        "e", "merged", "gguf", "q8_0", "gguf-py 0.19.0 sha256:" + "a" * 64, "b" * 64, "sha256:" + "c" * 64
    )
    lock = parse_lock('version = 1\nrecipe = "sha256:x"\n', "x.lock")
    write_lock(tmp_path / "x.lock", type(lock)(lock.recipe_hash, {}, {}, exports={"e": entry}))
    text = (tmp_path / "x.lock").read_text()
    assert "[[export]]" in text and parse_lock(text, "x.lock").exports == {"e": entry}
    with pytest.raises(RecipeError, match="export 'e': key"):
        parse_lock(text.replace("b" * 64, "not-a-key"), "x.lock")


def test_without_a_converter_a_recipe_with_exports_says_how_to_get_one(recipe_file, monkeypatch):
    monkeypatch.delenv("MERGEPKG_LLAMA_CPP", raising=False)
    path = recipe_file(ONE + '[exports.e]\ntype = "f32"\n')
    with pytest.raises(Exception) as e:
        resolve(load_recipe(path), Session(), exports="converter")  # as a build that makes exports does
    assert "llama.cpp's converter" in str(e.value) and "MERGEPKG_LLAMA_CPP" in e.value.hint
    assert resolve(load_recipe(path), Session()).exports == {}  # the others need none
    assert e.value.key == "exports.e"


def test_the_quantizer_types_are_llama_quantize_s():
    assert {"q4_k_m", "q5_k_m", "q6_k", "q8_0"} - set(QUANTIZER_TYPES) == {"q8_0"}  # q8_0: the converter's own
