"""builder/outputs.py: where an output may be placed, and its staging folder beside it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from helpers import THREE, build_recipe

from mergepkg.builder import outputs
from mergepkg.builder.outputs import MARKER, check_replaceable, staging_prefix
from mergepkg.errors import BuildError
from mergepkg.store.local import Store

LINEAR = '[steps.m]\nmethod = "linear"\ninputs = ["ft1", "ft2"]\nparams = { weight = 0.5 }\n'


def previous_output(folder: Path, keep: str) -> Path:
    """A folder as a placement killed between its two renames leaves it: the previous output aside."""
    previous = folder / "previous"
    previous.mkdir(parents=True)
    (previous / MARKER).write_text("{}\n")
    (previous / "keep").write_text(keep)
    return folder


def test_a_mount_point_is_refused_with_a_folder_inside_it_to_use():
    """A container's volume (`-v host:/out`, `--out /out`) died in a traceback, EBUSY from
    the rename that swaps the output in: no rename replaces a mount point."""
    with pytest.raises(BuildError, match="/proc is a mount point") as e:
        check_replaceable(Path("/proc"))  # a mount point on every Linux, and full: refused before anything else
    assert e.value.hint == "use a folder inside it, e.g. --out /proc/model"


def test_a_swap_the_system_refuses_is_one_error_and_leaves_the_output_as_it_was(recipe_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_recipe(recipe_file(LINEAR), out)
    before = sorted(os.listdir(out))

    def busy(a, b):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(a), None, str(b))

    monkeypatch.setattr(outputs, "exchange", busy)
    with pytest.raises(BuildError, match=f"cannot put the output in place of {out}: Device or resource busy") as e:
        build_recipe(recipe_file(LINEAR.replace("0.5", "0.25")), out)
    assert "use a folder inside it" in (e.value.hint or "")
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == [
        "mergepkg-home",
        "out",
        "recipe.lock",
        "recipe.toml",
    ]


def test_leftovers_are_found_by_the_output_name_as_written_not_as_a_pattern(recipe_file, tmp_path):
    """`--out 'm?'` took the leftover of output `mx` for its own and deleted the previous
    output it held; `--out 'm[1]'` never found its own."""
    recipe = recipe_file(LINEAR)
    other = previous_output(tmp_path / (staging_prefix(tmp_path / "mx") + "zzzz1234"), "mx's")
    build_recipe(recipe, tmp_path / "m?")
    assert (other / "previous" / "keep").read_text() == "mx's"
    assert not (tmp_path / "m?" / "keep").exists()
    mine = previous_output(tmp_path / (staging_prefix(tmp_path / "m[1]") + "zzzz1234"), "m[1]'s")
    check = tmp_path / "m[1]"
    build_recipe(recipe, check)  # killed between its renames: the previous output comes back, then is replaced
    assert not mine.exists() and (check / MARKER).is_file()


def test_the_leftover_of_an_output_whose_name_starts_like_this_one_is_not_taken(recipe_file, tmp_path):
    """`.mergepkg-build-x-` starts the staging folders of `x-y` too: a build into `x` took
    the previous `x-y` that a killed placement had left there, its only copy, and deleted it."""
    theirs = previous_output(tmp_path / (staging_prefix(tmp_path / "x-y") + "zzzz1234"), "x-y's")
    build_recipe(recipe_file(LINEAR), tmp_path / "x")
    assert (theirs / "previous" / "keep").read_text() == "x-y's"
    assert not (tmp_path / "x" / "keep").exists()


def test_an_output_with_the_longest_name_the_system_allows_is_placed(recipe_file, tmp_path):
    """An --out name over about 230 characters failed with "cannot write into" its folder:
    the staging folder's name, the output's with a prefix and a random part, was too long."""
    out = tmp_path / ("o" * 255)
    report = build_recipe(recipe_file(LINEAR), out)
    assert report.outputs == {"m": out} and json.loads((out / MARKER).read_text())["outputs"]["m"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["mergepkg-home", out.name, "recipe.lock", "recipe.toml"]
    )


def test_an_output_inside_the_store_s_temp_folder_is_refused(recipe_file, mergepkg_home):
    """It was placed, and the next build's cleaning of `tmp/` deleted it without a word."""
    out = mergepkg_home / "tmp" / "mymodel"
    with pytest.raises(BuildError, match=f"{out} is inside {mergepkg_home / 'tmp'}, which builds and `cache gc` clean"):
        build_recipe(recipe_file(LINEAR), out)
    assert not out.exists()
    with pytest.raises(BuildError, match="inside"):
        check_replaceable(mergepkg_home / "store" / "abc123", store=Store(mergepkg_home))  # gc removes a key's folder


def test_an_output_that_is_or_holds_a_local_input_of_the_recipe_is_refused(recipe_file, stub_models, tmp_path):
    """An --out naming a local source folder (itself an earlier output) replaced the input
    the build read; so did one holding it (the folder of several outputs)."""
    one, several = tmp_path / "one", tmp_path / "several"
    build_recipe(recipe_file(LINEAR), one)
    build_recipe(recipe_file(LINEAR + LINEAR.replace("steps.m", "steps.n")), several)  # several/m, several/n
    sources = '[sources]\nprev = { path = "one" }\nother = { path = "several/n" }\n\n'
    again = recipe_file(sources + LINEAR.replace('"ft1", "ft2"', '"prev", "other"'), sources=False, name="again.toml")
    before = {f: f.read_bytes() for f in (one / "model.safetensors", several / "n" / "model.safetensors")}
    for out, what in ((one, "is"), (several, f"holds {several / 'n'},")):
        with pytest.raises(BuildError, match=f"{out} {what} a local model the recipe reads"):
            build_recipe(again, out)
    assert all(f.read_bytes() == data for f, data in before.items())
    build_recipe(again, tmp_path / "elsewhere")


def test_sibling_outputs_share_one_bundle_of_the_recipe_files_and_lock(recipe_file, tmp_path, monkeypatch):
    """Each output's recipe files and lock were made again (TOML parsed, recipe hashed,
    lock written out): a no-op rebuild of 300 outputs took 8 s instead of 1.8 s. Siblings
    place the same files, relative to their own folders."""
    made = []
    real = outputs.bundle
    monkeypatch.setattr(outputs, "bundle", lambda *a: made.append(a) or real(*a))
    report = build_recipe(recipe_file(THREE), tmp_path / "out")
    assert len(made) == 1 and sorted(report.outputs) == ["b", "z"]
    locks = {name: (folder / "mergepkg.lock").read_text() for name, folder in report.outputs.items()}
    assert locks["b"] == locks["z"] and (report.outputs["z"] / "mergepkg.toml").is_file()
