"""A recipe's `[dependencies]`: one version picked per package, installed, verified.

A dependency is one more kind of source: `{ dependency = "pkg", step = "s" }` names a
step of a published recipe. `install_dependencies` has `pick.py` pick one version per
package for the whole graph (the recipe's own dependencies and theirs: locked versions
while they fit, else the newest that fit together), fetches each picked recipe file
once into `$MERGEPKG_HOME/packages/`, checked against its sha256, and `bind` turns
dependency sources into `{ recipe = <that file>, step = ... }` sources, which
`recipe/flatten.py` already knows how to join into one DAG. A recipe file the recipe
imports (`{ recipe = ... }`, directly or not) is built over the same picks, so its own
`[dependencies]` join the search (`imported_requirements`): its ranges hold, or the
conflict is the error. Each such file is loaded once (`load_imports`), and `flatten`
joins in the recipes loaded here (`Dependencies.loaded`) instead of parsing them again.

A registry's recipe file is installed only without local sources (`path`, `recipe`),
as publishing refuses them: whoever runs a registry must not make a build read the
files of the machine it runs on (`check_installable`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from mergepkg.errors import LockError, PlanError, RegistryError
from mergepkg.files import write_atomic
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.locate import key_name, locate
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.parse import load_recipe
from mergepkg.registry.client import ChecksumMismatch, Client, Registry
from mergepkg.registry.index import local_sources, recipe_path
from mergepkg.registry.pick import Roots, VersionPicker
from mergepkg.settings import Settings


@dataclass
class Dependencies:
    picks: dict[str, LockedDependency] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # package -> installed recipe file
    loaded: dict[Path, Recipe] = field(default_factory=dict)  # recipe files read on the way, for `flatten`

    def bind(self, recipe: Recipe) -> Recipe:
        """`recipe` with each dependency source pointing at its package's installed file.
        A recipe file another imports (`{ recipe = ... }`) has its packages through the
        recipe built, whose search took in its `[dependencies]`: a package it names that
        none brought in (a caller that picked without them) is an error, located."""
        if not any(s.dependency for s in recipe.sources.values()):
            return recipe
        for name, src in recipe.sources.items():
            if src.dependency and src.dependency not in self.files:
                error = PlanError(
                    f"package {src.dependency!r} is not among the dependencies of the recipe being built",
                    hint=f"add {src.dependency!r} to the [dependencies] of the recipe you build",
                )
                raise recipe.locate(error, f"sources.{key_name(name)}.dependency")
        sources = {
            n: replace(s, dependency=None, recipe=self.files[s.dependency]) if s.dependency else s
            for n, s in recipe.sources.items()
        }
        return replace(recipe, sources=sources)


def load_imports(recipe: Recipe) -> dict[Path, Recipe]:
    """Every recipe file `recipe` imports, directly or not, loaded once, by its path (as
    its `recipe` source names it), nearest first. A file imported again in a cycle is
    left to `flatten`, which says so where it is written."""
    loaded: dict[Path, Recipe] = {}
    seen, todo = {recipe.path.resolve()}, [recipe]
    while todo:
        for src in todo.pop(0).sources.values():
            if src.recipe is None or src.recipe in seen:
                continue
            seen.add(src.recipe)
            loaded[src.recipe] = other = load_recipe(src.recipe)
            todo.append(other)
    return loaded


def imported_requirements(recipe: Recipe, imports: dict[Path, Recipe]) -> Roots:
    """The `[dependencies]` of the recipe files `recipe` imports (`load_imports`), named
    as messages name them (the path from `recipe`'s folder)."""
    folder = recipe.path.parent.resolve()
    return tuple((os.path.relpath(path, folder), tuple(r.dependencies.values())) for path, r in imports.items())


def installed_path(settings: Settings, pick: LockedDependency) -> Path:
    return settings.home / "packages" / pick.name / f"{pick.version}+{pick.sha256[:12]}.toml"


def install_pick(settings: Settings, pick: LockedDependency, client: Client, *, download: bool = True) -> Path:
    """The recipe file of `pick` under `$MERGEPKG_HOME/packages/`, fetched if missing,
    always verified: its sha256, and that it has no local source (one installed before
    that was checked is refused when it is used)."""
    path = installed_path(settings, pick)
    if path.exists() and hashlib.sha256(data := path.read_bytes()).hexdigest() == pick.sha256:
        check_installable(data, pick, pick.registry, str(path))
        return path
    if not download:
        raise LockError(
            f"{pick.name}@{pick.version} is locked but not installed, and --frozen never downloads",
            hint="build once without --frozen, or `mergepkg install` it",
        )
    reg, data = _fetch(pick, client)
    check_installable(data, pick, reg.name, f"{reg.url}/{recipe_path(pick.name, pick.version)}")
    write_atomic(path, data, mode=0o444)  # its content is its checksum: not for editing
    return path


def check_installable(data: bytes, pick: LockedDependency, registry: str, file: str) -> None:
    """Refuse a registry's recipe file with a `path` or `recipe` source, as publishing
    refuses it (`local_sources`, one rule for both): built here, it would read a model
    folder or a TOML file of this machine that the registry's owner chose. `registry`
    and `file`: where it came from, for the error."""
    text = data.decode("utf-8-sig", errors="replace")  # as `load_recipe` reads it, a byte-order mark too
    local = local_sources(text)
    if not local:
        return
    named = ", ".join(f"{n} ({kind})" for n, kind in local.items())
    key = f"sources.{key_name(next(iter(local)))}"
    raise RegistryError(
        f"{pick.name}@{pick.version} from {registry} has sources that would read files of this machine: {named}",
        file=file,
        line=locate(text, key),
        key=key,
        hint="its registry should have refused it at publishing: do not use this version, and tell the "
        "registry's maintainer",
    )


def _fetch(pick: LockedDependency, client: Client) -> tuple[Registry, bytes]:
    """The file (and the registry that served it) from the registry that resolved it,
    else from any configured registry that has it: a lock written against someone's
    checkout of a git-hosted registry names a folder that only exists on their machine,
    and the sha256 decides anyway."""
    first = client.by_url(pick.registry)
    others = [r for r in client.registries if r.url != first.url]
    problems = []
    for reg in [first, *others]:
        try:
            return reg, client.recipe_bytes(reg, pick.name, pick.version, pick.sha256)
        except RegistryError as e:
            problems.append(e)
    mismatch = next((e for e in problems if isinstance(e, ChecksumMismatch)), None)
    raise mismatch or RegistryError(
        f"no configured registry has {pick.name}@{pick.version} (sha256 {pick.sha256[:16]}...)",
        file=pick.registry,
        hint="add the registry it was resolved from: `mergepkg registry add NAME URL`; tried: "
        + "; ".join(e.message for e in problems),
    )


def install_dependencies(
    recipe: Recipe,
    settings: Settings,
    *,
    locked: dict[str, LockedDependency] | None = None,
    mode: str = "update",
    upgrade: frozenset[str] = frozenset(),
    client: Client | None = None,
) -> Dependencies:
    """Pick (`pick.py`) and install every package `recipe` needs, directly or not, those
    of the recipe files it imports included; `loaded` holds the recipe files read on the
    way, for `flatten(recipe, bind=deps.bind, loaded=deps.loaded)`."""
    deps = Dependencies(loaded=load_imports(recipe))
    imported = imported_requirements(recipe, deps.loaded)
    if not recipe.dependencies and not any(reqs for _, reqs in imported):
        return deps
    client = client or Client(settings)
    download = mode != "frozen"

    @functools.cache
    def installed(pick: LockedDependency) -> Path:  # each file fetched and verified once per resolution
        return install_pick(settings, pick, client, download=download)

    def held_requires(pick: LockedDependency):  # a locked pick's dependencies: from its recipe file
        path = installed(pick)
        if path not in deps.loaded:
            deps.loaded[path] = load_recipe(path)
        return tuple(deps.loaded[path].dependencies.values())

    deps.picks = VersionPicker(recipe, client, locked or {}, mode, upgrade, held_requires, imported).pick()
    deps.files = {name: installed(pick) for name, pick in deps.picks.items()}
    return deps
