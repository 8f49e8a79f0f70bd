"""The recipe files and lock an output folder carries (builder/bundle.py), read back from
where the folder is moved to: pinned and keyed from stub models, no tensor read."""

from __future__ import annotations

import shutil

from mergepkg.builder.bundle import LOCK_FILE, RECIPE_FILE, bundle
from mergepkg.lockfile import lock_path, read_lock, write_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.lock import lock_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

LINEAR = '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'


def test_a_moved_output_folder_still_holds_its_absolute_paths(recipe_file, stub_models, tmp_path):
    """A recipe naming its folders by absolute paths: the placed lock names them so too, so
    the output folder moved anywhere (another depth) is still up to date with its lock."""
    path = recipe_file(LINEAR)  # [sources] by absolute paths
    session = Session()
    lock_recipe(load_recipe(path), session)
    res = resolve(load_recipe(path), session, lock=read_lock(lock_path(load_recipe(path))), mode="locked")
    out = tmp_path / "out" / "soup"
    placed = bundle(res, res.lock({}, checked=False), out)
    assert {n: s.path for n, s in placed.lock.sources.items()} == {n: str(stub_models[n]) for n in ("ft1", "ft2")}
    assert placed.local == {n: str(folder) for n, folder in stub_models.items()}  # as the card lists them
    out.mkdir(parents=True)
    for name, text in placed.files.items():
        (out / name).write_text(text)
    write_lock(out / LOCK_FILE, placed.lock)

    moved = tmp_path / "elsewhere" / "a" / "b" / "soup"
    shutil.copytree(out, moved)
    recipe = load_recipe(moved / RECIPE_FILE)
    again = resolve(recipe, Session(), lock=read_lock(moved / LOCK_FILE), mode="locked")  # up to date
    assert again.keys == res.keys
