"""resolve/exports.py: exports keyed with llama.cpp's converter only by the commands that
make them; `lock`, `plan`, `validate` and `push` key them with the converter the lock
names, so they run where none is set and an updated converter tree changes nothing they
compare. Stub models and a converter tree laid out by hand: fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import cli
from llama_trees import llama_tree

from mergepkg.errors import ExportError
from mergepkg.lockfile import read_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.exports import gguf_metadata
from mergepkg.resolve.lock import lock_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.settings import Settings
from mergepkg.store.session import Session

RECIPE = """
[steps.m]
method = "linear"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[exports.m-q8]
type = "q8_0"

[exports.m-f16]
type = "f16"
"""


@pytest.fixture
def no_converter(monkeypatch):
    monkeypatch.delenv("MERGEPKG_LLAMA_CPP", raising=False)


def locked_recipe(recipe_file, tmp_path) -> tuple[Path, Session]:
    """The recipe locked with a converter; the session to use without one."""
    path = recipe_file(RECIPE)
    path.write_text(path.read_text().replace('version = "0.1.0"\n', 'version = "0.1.0"\ntags = ["mine"]\n', 1))
    with_tree = Session(Settings(llama_cpp=llama_tree(tmp_path / "llama.cpp")))
    lock_recipe(load_recipe(path), with_tree)
    return path, Session(replace(with_tree.settings, llama_cpp=None))


def test_commands_that_make_no_export_need_no_converter(recipe_file, tmp_path, no_converter, capsys):
    path, session = locked_recipe(recipe_file, tmp_path)
    locked = read_lock(path.with_suffix(".lock"))
    assert locked is not None and set(locked.exports) == {"m-q8", "m-f16"}
    res = resolve(load_recipe(path), session, lock=locked, mode="locked")  # as push resolves
    assert res.converter is None and res.exports == locked.exports
    assert lock_recipe(load_recipe(path), session).changes == []  # the lock as it was
    code, _, err = cli(capsys, "validate", path)
    assert code == 0, err
    code, out, err = cli(capsys, "plan", path)
    assert code == 0 and "exports: 0 stored, 2 to make" in err and "gguf q8_0 of m to make" in out


def test_an_updated_converter_changes_nothing_push_compares(recipe_file, tmp_path, no_converter):
    path, session = locked_recipe(recipe_file, tmp_path)
    (tmp_path / "llama.cpp" / "conversion" / "llama.py").write_text("# a new model class\n")
    updated = Session(replace(session.settings, llama_cpp=tmp_path / "llama.cpp"))
    locked = read_lock(path.with_suffix(".lock"))
    res = resolve(load_recipe(path), updated, lock=locked, mode="locked")
    assert res.exports == locked.exports  # push: the lock's exports, not the tree's keys
    # what a build would make: new keys (plan shows them to make, `lock` records them)
    current = resolve(load_recipe(path), updated, lock=locked, exports="current")
    assert all(current.exports[n].key != e.key for n, e in locked.exports.items())


def test_a_changed_step_rekeys_its_exports_with_the_lock_s_converter(recipe_file, tmp_path, no_converter):
    path, session = locked_recipe(recipe_file, tmp_path)
    old = read_lock(path.with_suffix(".lock"))
    assert old is not None
    path.write_text(path.read_text().replace("weight = 0.5 }]", "weight = 0.4 }]"))
    new = lock_recipe(load_recipe(path), session).lock
    for name, e in new.exports.items():
        assert e.key != old.exports[name].key and e.converter == old.exports[name].converter
    with_tree = Session(replace(session.settings, llama_cpp=tmp_path / "llama.cpp"))
    assert resolve(load_recipe(path), with_tree, lock=new, mode="locked", exports="converter").exports == new.exports


def test_an_export_never_locked_needs_the_converter_to_be_locked(recipe_file, tmp_path, no_converter, capsys):
    path = recipe_file(RECIPE)
    session = Session(Settings(llama_cpp=None))
    with pytest.raises(ExportError, match=r"not in the lock, and keying it needs llama\.cpp's converter") as e:
        lock_recipe(load_recipe(path), session)
    assert e.value.key == "exports.m-q8" and "--llama-cpp" not in (e.value.hint or "")
    code, _, err = cli(capsys, "validate", path)  # the declarations are checked as parsed
    assert code == 0, err


def test_build_needs_the_converter_and_its_hint_names_what_build_has(recipe_file, no_converter):
    path = recipe_file(RECIPE)
    with pytest.raises(ExportError, match=r"needs llama\.cpp's converter") as e:
        resolve(load_recipe(path), Session(Settings(llama_cpp=None)), exports="converter")
    assert e.value.key == "exports.m-q8" and "MERGEPKG_LLAMA_CPP" in (e.value.hint or "")


def test_the_metadata_is_the_placed_folder_s_name_and_card(recipe_file, tmp_path):
    """One output is placed as out/<package>: the converter would name it so."""
    from mergepkg.builder.card import front_matter

    path, session = locked_recipe(recipe_file, tmp_path)
    res = resolve(load_recipe(path), session, lock=read_lock(path.with_suffix(".lock")))
    meta = gguf_metadata(res.recipe, res.plan, "m")
    import yaml

    card = yaml.safe_load(front_matter(res, "m"))
    assert meta == {"name": "test", "base_model": card.get("base_model", []), "tags": card["tags"]}
    assert "mine" in meta["tags"]
