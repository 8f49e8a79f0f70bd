"""Dependency resolution (mergepkg/registry/pick.py) over folder registries of small
recipes: newest versions that fit together, backtracking, locked versions first, the
registry a package comes from whatever the order of [dependencies], the ranges of
imported recipe files, and errors that name what could not be met."""

from __future__ import annotations

import hashlib

import pytest
from registries import new_registry

from mergepkg.errors import DependencyConflict, RecipeError, RegistryError
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.model import Dependency
from mergepkg.recipe.parse import parse_recipe
from mergepkg.recipe.versions import Range
from mergepkg.registry import pick
from mergepkg.registry.client import Client, Registry
from mergepkg.registry.dependencies import install_dependencies
from mergepkg.registry.index import Entry, index_path
from mergepkg.settings import Settings


def recipe_text(name: str, version: str, deps: dict[str, str], sources: str = "") -> str:
    """`deps`: a range, or an inline table as TOML writes it (`{ version = "^1", registry = "r" }`)."""
    lines = "".join(f'"{n}" = {r if r.startswith("{") else chr(34) + r + chr(34)}\n' for n, r in deps.items())
    return (
        f'[package]\nname = "{name}"\nversion = "{version}"\n[dependencies]\n{lines}'
        f'[sources]\nm = {{ hf = "tiny/base" }}\n{sources}[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
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


# -- registries ------------------------------------------------------------------------------
@pytest.fixture
def two(tmp_path):
    """Registries reg1 and reg2, added in that order; `two(registry, name, version, **deps)`."""
    folders = {r: new_registry(tmp_path / r, r) for r in ("reg1", "reg2")}

    def add(registry: str, name: str, version: str, **deps: str):
        text = recipe_text(name, version, deps)
        folders[registry].publish(parse_recipe(text, tmp_path / "x.toml"), text.encode())

    add.client = Client(Settings(), [Registry(r, str(f.root)) for r, f in folders.items()])
    add.url = {r: str(f.root) for r, f in folders.items()}
    return add


def solve_from(tmp_path, two, deps: dict[str, str], locked=None) -> dict[str, tuple[str, str]]:
    """(version, registry name) of each pick, for `deps` in the order given."""
    root = parse_recipe(recipe_text("root", "0.1.0", deps), tmp_path / "root.toml")
    found = install_dependencies(root, Settings(), locked=locked, client=two.client)
    name = {u: r for r, u in two.url.items()}
    return {n: (p.version, name[p.registry]) for n, p in found.picks.items()}


def both_orders(deps: dict[str, str]) -> list[dict[str, str]]:
    return [deps, dict(reversed(deps.items()))]


def test_a_registry_named_later_binds_a_package_whatever_the_order(tmp_path, two):
    """e (in reg2) wants d from reg2; the root asks for d with no registry. d listed first
    once took reg1's d, decided before e said where d comes from."""
    two("reg1", "d", "1.1.0")
    two("reg2", "d", "1.4.0")
    two("reg2", "e", "1.0.0", d='{ version = "^1", registry = "reg2" }')
    for deps in both_orders({"d": "^1", "e": "^1"}):
        assert solve_from(tmp_path, two, deps) == {"d": ("1.4.0", "reg2"), "e": ("1.0.0", "reg2")}, deps


def test_two_registries_named_for_a_package_are_an_error_whatever_the_order(tmp_path, two):
    """Listed first, the root's reg1 was taken and e's reg2 never checked: a silent pick."""
    two("reg1", "d", "1.1.0")
    two("reg2", "d", "1.4.0")
    two("reg2", "e", "1.0.0", d='{ version = "^1", registry = "reg2" }')
    for deps in both_orders({"d": '{ version = "^1", registry = "reg1" }', "e": "^1"}):
        with pytest.raises(RegistryError) as info:
            solve_from(tmp_path, two, deps)
        assert info.value.message == "d is required from different registries: reg1 (by root.toml), reg2 (by e@1.0.0)"
        assert info.value.hint == "name one registry for it everywhere"


def test_a_version_naming_another_registry_is_a_dead_end_the_search_backtracks_from(tmp_path, two):
    two("reg1", "d", "1.1.0")
    two("reg2", "d", "1.4.0")
    two("reg2", "e", "1.0.0", d="^1")
    two("reg2", "e", "2.0.0", d='{ version = "^1", registry = "reg2" }')
    for deps in both_orders({"d": '{ version = "^1", registry = "reg1" }', "e": "*"}):
        assert solve_from(tmp_path, two, deps) == {"d": ("1.1.0", "reg1"), "e": ("1.0.0", "reg2")}, deps


def test_a_package_no_one_names_a_registry_for_comes_from_the_first_that_has_it(tmp_path, two):
    """reg2's newer d is no candidate while nobody names reg2, not even when reg1's fail."""
    two("reg1", "d", "1.1.0")
    two("reg2", "d", "1.4.0")
    two("reg2", "e", "1.0.0", d="^1")
    for deps in both_orders({"d": "^1", "e": "^1"}):
        assert solve_from(tmp_path, two, deps) == {"d": ("1.1.0", "reg1"), "e": ("1.0.0", "reg2")}, deps
    with pytest.raises(RegistryError, match=r"no version of d in reg1 matches '\^1.4' \(required by root.toml\)"):
        solve_from(tmp_path, two, {"d": "^1.4"})


def test_a_locked_pick_from_another_registry_than_the_one_named_is_not_kept(tmp_path, two):
    two("reg1", "d", "1.1.0")
    two("reg2", "d", "1.4.0")
    two("reg2", "e", "1.0.0", d='{ version = "^1", registry = "reg2" }')
    sha = two.client.entries("d", "reg1")[1][0].sha256
    locked = {"d": LockedDependency("d", "1.1.0", two.url["reg1"], sha)}
    assert solve_from(tmp_path, two, {"d": "^1"}, locked) == {"d": ("1.1.0", "reg1")}  # kept while it fits
    assert solve_from(tmp_path, two, {"d": "^1", "e": "^1"}, locked)["d"] == ("1.4.0", "reg2")


# -- imported recipe files -----------------------------------------------------------------
def importing(tmp_path, deps: dict[str, str], files: dict[str, tuple[dict[str, str], str]]):
    """root.toml with `deps`, importing step s of each file (path -> its deps and sources)."""
    for path, (own, sources) in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(recipe_text(path.replace("/", "-")[:-5], "0.1.0", own, sources))
    first = next(iter(files))
    text = recipe_text("root", "0.1.0", deps, f'i = {{ recipe = "{first}", step = "s" }}\n')
    (tmp_path / "root.toml").write_text(text)
    return parse_recipe(text, tmp_path / "root.toml")


def test_an_imported_recipe_file_s_ranges_join_the_resolution(tmp_path, publish):
    """outer ^1, the file it imports ^2: inner's step was built over c 1.0.0, outside its range."""
    publish("c", "1.0.0")
    publish("c", "2.0.0")
    root = importing(tmp_path, {"c": "^1"}, {"inner.toml": ({"c": "^2"}, 'u = { dependency = "c", step = "s" }\n')})
    with pytest.raises(DependencyConflict) as info:
        install_dependencies(root, Settings(), client=publish.client)
    assert {info.value.first, info.value.second} == {("root.toml", "^1"), ("inner.toml", "^2")}


def test_the_packages_of_files_imported_through_others_are_picked_and_installed(tmp_path, publish):
    """Only sub/b.toml (imported by a.toml, imported by the root) names c: it is picked,
    newest in its range, and installed; a cycle of imports is left to flatten."""
    publish("c", "1.0.0")
    publish("c", "1.2.0")
    publish("c", "2.0.0")
    root = importing(
        tmp_path,
        {},
        {
            "a.toml": ({}, 'b = { recipe = "sub/b.toml", step = "s" }\n'),
            "sub/b.toml": (
                {"c": "^1"},
                'u = { dependency = "c", step = "s" }\nr = { recipe = "../a.toml", step = "s" }\n',
            ),
        },
    )
    found = install_dependencies(root, Settings(), client=publish.client)
    assert {n: p.version for n, p in found.picks.items()} == {"c": "1.2.0"} and found.files["c"].is_file()
    (tmp_path / "sub/b.toml").write_text((tmp_path / "sub/b.toml").read_text().replace('"^1"', '">=2"'))
    root = parse_recipe((tmp_path / "root.toml").read_text(), tmp_path / "root.toml")
    assert install_dependencies(root, Settings(), client=publish.client).picks["c"].version == "2.0.0"
    root = importing(tmp_path, {"c": "<2"}, {"a.toml": ({}, 'b = { recipe = "sub/b.toml", step = "s" }\n')})
    with pytest.raises(DependencyConflict) as info:
        install_dependencies(root, Settings(), client=publish.client)
    assert {info.value.first, info.value.second} == {("root.toml", "<2"), ("sub/b.toml", ">=2")}


# -- graphs at scale -------------------------------------------------------------------------
def chain(tmp_path, length: int, ranges=("^1",)) -> Client:
    """A folder registry of c0000 <- c0001 <- ... (each needs the one before, the range
    texts taken in turn from `ranges`), 1.0.0 and 1.1.0 of each; c0001 1.1.0 also needs
    c0000 below 1.1. Its index files written directly: publishing thousands of recipes
    would take minutes, and the search reads only the index."""
    folder = new_registry(tmp_path / "chain")
    for i in range(length):
        name = f"c{i:04d}"
        lines = []
        for version in ("1.0.0", "1.1.0"):
            rng = "<1.1" if (i, version) == (1, "1.1.0") else ranges[i % len(ranges)]
            deps = (Dependency(f"c{i - 1:04d}", rng),) if i else ()
            sha = hashlib.sha256(f"{name}@{version}".encode()).hexdigest()
            lines.append(Entry(name, version, sha, deps).to_json() + "\n")
        path = folder.root / index_path(name)
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(lines))
    return Client(Settings(), [Registry("chain", str(folder.root))])


def chain_picker(tmp_path, client: Client, deps: dict[str, str]) -> pick.VersionPicker:
    root = parse_recipe(recipe_text("root", "0.1.0", deps), tmp_path / "root.toml")
    return pick.VersionPicker(root, client, {}, "update", frozenset(), lambda held: (), ())


def pick_chain(tmp_path, client: Client, deps: dict[str, str]) -> dict[str, str]:
    return {n: p.version for n, p in chain_picker(tmp_path, client, deps).pick().items()}


def test_a_chain_of_1500_packages_resolves_and_backtracks_at_its_far_end(tmp_path):
    """The search once recursed once per package: a raw RecursionError past ~1000. The
    root asks for c0000 early, so its newest is picked first; c0001 1.1.0, decided 1500
    packages deep, rules that out and the search goes back to c0001 1.0.0."""
    client = chain(tmp_path, 1500)
    picks = pick_chain(tmp_path, client, {"c1499": "^1", "c0000": "^1"})
    assert len(picks) == 1500
    assert picks["c0001"] == "1.0.0" and picks["c0000"] == "1.1.0"
    assert {v for n, v in picks.items() if n != "c0001"} == {"1.1.0"}


def test_each_range_text_is_parsed_once_per_search(tmp_path, monkeypatch):
    """Each node of the search once rebuilt every requirement from the roots, parsing each
    range again: ~n^2/2 parses for a chain of n (20,000 for 200)."""
    ranges = ("^1", ">=1.0, <2", "~1")
    picker = chain_picker(tmp_path, chain(tmp_path, 200, ranges), {"c0199": "^1", "c0000": "^1"})
    parsed: list[str] = []
    real = Range.parse.__func__

    def counting(cls, text):
        parsed.append(text)
        return real(cls, text)

    monkeypatch.setattr(Range, "parse", classmethod(counting))
    picks = picker.pick()
    assert picks["c0001"].version == "1.0.0" and len(picks) == 200
    assert sorted(parsed) == sorted({*ranges, "<1.1"})


def test_a_search_past_its_step_limit_is_a_registry_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pick, "MAX_STEPS", 50)
    client = chain(tmp_path, 100)
    with pytest.raises(RegistryError, match="dependency resolution gave up after 50 tries"):
        pick_chain(tmp_path, client, {"c0099": "^1"})
