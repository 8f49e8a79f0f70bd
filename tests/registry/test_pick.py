"""Dependency resolution (mergepkg/registry/pick.py) over a folder registry of small
recipes: newest versions that fit together, backtracking, locked versions first, and
errors that name what could not be met."""

from __future__ import annotations

import pytest
from registries import new_registry

from mergepkg.errors import DependencyConflict, RecipeError, RegistryError
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.parse import parse_recipe
from mergepkg.registry.client import Client, Registry
from mergepkg.registry.dependencies import install_dependencies
from mergepkg.settings import Settings


def recipe_text(name: str, version: str, deps: dict[str, str]) -> str:
    lines = "".join(f'"{n}" = "{r}"\n' for n, r in deps.items())
    return (
        f'[package]\nname = "{name}"\nversion = "{version}"\n[dependencies]\n{lines}'
        '[sources]\nm = { hf = "tiny/base" }\n[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
    )


@pytest.fixture
def publish(tmp_path):
    folder = new_registry(tmp_path / "reg")

    def add(name: str, version: str, **deps: str):
        text = recipe_text(name, version, deps)
        folder.publish(parse_recipe(text, tmp_path / "x.toml"), text.encode())

    add.client = Client(Settings(), [Registry("reg", str(folder.root))])
    add.folder = folder
    return add


def solve(tmp_path, publish, locked=None, upgrade=frozenset(), **deps):
    root = parse_recipe(recipe_text("root", "0.1.0", deps), tmp_path / "root.toml")
    found = install_dependencies(root, Settings(), locked=locked, upgrade=upgrade, client=publish.client)
    return {n: p.version for n, p in found.picks.items()}


def test_newest_that_fit_together(tmp_path, publish):
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        publish("c", v)
    publish("a", "1.0.0", c="^1")
    assert solve(tmp_path, publish, a="^1") == {"a": "1.0.0", "c": "1.1.0"}


def test_backtracks_to_an_older_version_that_fits(tmp_path, publish):
    publish("c", "1.0.0")
    publish("c", "2.0.0")
    publish("a", "1.0.0", c="^1")
    publish("a", "2.0.0", c="^2")  # newest a needs c 2, the root needs c 1: a 1 fits
    assert solve(tmp_path, publish, a="*", c="^1") == {"a": "1.0.0", "c": "1.0.0"}


def test_keeps_the_newest_of_the_first_decided(tmp_path, publish):
    publish("a", "1.0.0")
    publish("a", "2.0.0", b="<2")
    publish("b", "1.0.0")
    publish("b", "2.0.0", a="<2")
    assert solve(tmp_path, publish, a="*", b="*") == {"a": "2.0.0", "b": "1.0.0"}


def test_a_package_dropped_and_needed_again(tmp_path, publish):
    """The case that once raised KeyError: a's newest needs x; going back to a 1.0 drops x,
    and c brings it back."""
    publish("x", "1.0.0")
    publish("c", "1.0.0", x="^1")
    publish("a", "1.0.0", c="^1")
    publish("a", "1.1.0", x="^1")
    publish("b", "1.0.0", a="<1.1")
    assert solve(tmp_path, publish, a="^1", b="^1") == {"a": "1.0.0", "b": "1.0.0", "c": "1.0.0", "x": "1.0.0"}


def test_locked_versions_are_kept_while_they_fit(tmp_path, publish):
    publish("a", "1.0.0")
    publish("a", "1.2.0")
    held = publish.client.entries("a")[1][0]
    locked = {"a": LockedDependency("a", "1.0.0", str(publish.folder.root), held.sha256)}
    assert solve(tmp_path, publish, locked=locked, a="^1") == {"a": "1.0.0"}
    assert solve(tmp_path, publish, locked=locked, upgrade=frozenset({"a"}), a="^1") == {"a": "1.2.0"}
    assert solve(tmp_path, publish, locked=locked, a="^1.1") == {"a": "1.2.0"}


def test_two_ranges_without_a_common_version(tmp_path, publish):
    publish("c", "1.0.0")
    publish("c", "2.0.0")
    publish("a", "1.0.0", c="^2")
    with pytest.raises(DependencyConflict) as info:
        solve(tmp_path, publish, a="^1", c="^1")
    assert {info.value.first, info.value.second} == {("root.toml", "^1"), ("a@1.0.0", "^2")}
    assert "published versions of c: 1.0.0, 2.0.0" in info.value.hint


def test_three_ranges_that_meet_only_in_pairs(tmp_path, publish):
    """Each pair shares a version (a pre-release counts only where it is named), all
    three share none: the error names all three, no traceback."""
    for v in ("0.9.0", "1.0.0-rc.1", "1.0.0"):
        publish("p", v)
    publish("q", "1.0.0", p=">=0.9.0, <1.0.0-rc.2")
    publish("r", "1.0.0", p=">=1.0.0-rc.1")
    with pytest.raises(RegistryError) as info:
        solve(tmp_path, publish, q="*", r="*", p="*")
    message = info.value.message
    assert message.startswith("no version of p satisfies all of") and "q@1.0.0" in message and "r@1.0.0" in message


def test_no_version_matches(tmp_path, publish):
    publish("a", "1.0.0")
    with pytest.raises(RegistryError, match=r"no version of a in reg matches '\^2' \(required by root.toml\)"):
        solve(tmp_path, publish, a="^2")


def test_a_recipe_cannot_depend_on_itself(tmp_path):
    with pytest.raises(RecipeError, match="depends on itself"):
        parse_recipe(recipe_text("me", "0.1.0", {"me": "^0.1"}), tmp_path / "me.toml")
