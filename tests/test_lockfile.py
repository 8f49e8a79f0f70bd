"""lockfile.py: what a lock of another format says to do."""

from __future__ import annotations

import pytest

from mergepkg.errors import RecipeError
from mergepkg.lockfile import LOCK_VERSION, parse_lock, read_lock


@pytest.mark.parametrize(
    ("version", "hint"),
    [
        (LOCK_VERSION + 1, "a newer mergepkg wrote it: upgrade mergepkg"),
        (LOCK_VERSION - 1, "delete it and run `mergepkg lock`"),
        ('"1"', "delete it and run `mergepkg lock`"),
    ],
)
def test_a_lock_of_another_format_says_how_to_go_on(version, hint):
    """The hint said `mergepkg lock`, which reads the lock and refused with the same error."""
    with pytest.raises(RecipeError, match="lock format") as info:
        parse_lock(f"version = {version}\n", "r.lock")
    assert info.value.hint == hint


def test_recipes_that_differ_after_their_last_dot_keep_locks_of_their_own(recipe_file, tmp_path):
    """soup.v1 and soup.v2 shared soup.lock (and recipe.v2 wrote recipe.toml's): each
    build overwrote the other's, and a --locked build of the first then failed."""
    from helpers import build_recipe

    body = '[steps.m]\nmethod = "linear"\ninputs = ["ft1", "ft2"]\nparams = {{ weight = {} }}\n'
    toml = recipe_file(body.format(0.5))
    v1, v2 = recipe_file(body.format(0.3), name="soup.v1"), recipe_file(body.format(0.7), name="soup.v2")
    for path in (toml, v1, v2):
        build_recipe(path)
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["recipe.lock", "soup.v1.lock", "soup.v2.lock"]
    keys = {read_lock(tmp_path / n).steps["m"].key for n in ("recipe.lock", "soup.v1.lock", "soup.v2.lock")}
    assert len(keys) == 3
    build_recipe(v1, mode="locked")  # its own lock, as it left it
