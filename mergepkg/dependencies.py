"""`[dependencies]`: registry recipes resolved to one version each, installed, verified.

A dependency is one more kind of source: `{ dependency = "pkg", step = "s" }` names a
step of a published recipe. `resolve_dependencies` picks one version per package for
the whole graph (the recipe's own dependencies and theirs): the locked version while it
still satisfies every range (yanked or not: a lock keeps working), else the newest
non-yanked version that satisfies all of them. Two ranges with no common version are a
`DependencyConflict` naming both. Each picked recipe file is fetched once into
`$MERGEPKG_HOME/packages/`, checked against its sha256, and `bind` turns dependency
sources into `{ recipe = <that file>, step = ... }` sources, which `imports.flatten`
already knows how to join into one DAG.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mergepkg.errors import DependencyConflict, LockError, RegistryError
from mergepkg.recipe import Dependency, Recipe
from mergepkg.registry.semver import Range, Version
from mergepkg.settings import Settings

ALL = "*"


@dataclass(frozen=True)
class LockedDependency:
    """What the lock records of a resolved dependency; also the pick itself."""

    name: str
    version: str
    registry: str  # the registry's URL (a folder path or http(s) base URL)
    sha256: str  # of the recipe file


@dataclass(frozen=True)
class Requirement:
    who: str  # "recipe.toml" or "pkg@1.2.0": for conflict messages
    dep: Dependency

    @property
    def range(self) -> Range:
        return Range.parse(self.dep.range)


@dataclass
class Dependencies:
    picks: dict[str, LockedDependency] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # package -> installed recipe file
    recipes: dict[str, Recipe] = field(default_factory=dict)

    def bind(self, recipe: Recipe) -> Recipe:
        """`recipe` with each dependency source pointing at its package's installed file."""
        if not any(s.dependency for s in recipe.sources.values()):
            return recipe
        sources = {n: replace(s, dependency=None, recipe=self.files[s.dependency]) if s.dependency else s
                   for n, s in recipe.sources.items()}
        return replace(recipe, sources=sources)


def installed_path(settings: Settings, pick: LockedDependency) -> Path:
    return settings.home / "packages" / pick.name / f"{pick.version}+{pick.sha256[:12]}.toml"


def install(settings: Settings, pick: LockedDependency, client=None, *, download: bool = True) -> Path:
    """The recipe file of `pick` under `$MERGEPKG_HOME/packages/`, fetched if missing, always verified."""
    path = installed_path(settings, pick)
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == pick.sha256:
        return path
    if not download:
        raise LockError(f"{pick.name}@{pick.version} is locked but not installed, and --frozen never downloads",
                        hint="build once without --frozen, or `mergepkg install` it")
    from mergepkg.registry.client import Client

    client = client or Client(settings)
    data = client.recipe_bytes(client.by_url(pick.registry), pick.name, pick.version, pick.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o444)  # its content is its checksum: not for editing
    os.replace(tmp, path)
    return path


def resolve_dependencies(recipe: Recipe, settings: Settings, *, locked: dict[str, LockedDependency] | None = None,
                         mode: str = "update", upgrade: frozenset[str] = frozenset(), client=None) -> Dependencies:
    """Pick, install and parse every package `recipe` needs, directly or not."""
    deps = Dependencies()
    if not recipe.dependencies:
        return deps
    from mergepkg.parse import load_recipe

    locked = locked or {}
    picker = _Picker(settings, locked, mode, upgrade, client)
    for _ in range(64):  # a pick can change what the others must satisfy; this settles fast
        reqs = _requirements(recipe, deps)
        picks = {}
        for pkg, rs in reqs.items():
            old = deps.picks.get(pkg)
            keep = old is not None and all(r.range.allows(Version.parse(old.version)) for r in rs)
            picks[pkg] = old if keep else picker.pick(pkg, rs)
        if picks == deps.picks:
            return deps
        deps.picks = picks
        for pkg, pick in picks.items():
            if pkg not in deps.recipes or deps.files[pkg] != installed_path(settings, pick):
                deps.files[pkg] = install(settings, pick, picker.client, download=mode != "frozen")
                deps.recipes[pkg] = load_recipe(deps.files[pkg])
    raise RegistryError("dependency versions do not settle: packages keep requiring other versions of each other",
                        file=str(recipe.path), hint="pin exact versions (=1.2.3) in [dependencies]")


def _requirements(root: Recipe, deps: Dependencies) -> dict[str, list[Requirement]]:
    """Every package reachable from `root` through the current picks, with who requires it how."""
    reqs: dict[str, list[Requirement]] = {}
    todo = [(root.path.name, root)]
    seen = set()
    while todo:
        who, recipe = todo.pop(0)
        for dep in recipe.dependencies.values():
            reqs.setdefault(dep.name, []).append(Requirement(who, dep))
            if dep.name in deps.recipes and dep.name not in seen:
                seen.add(dep.name)
                todo.append((f"{dep.name}@{deps.picks[dep.name].version}", deps.recipes[dep.name]))
    return reqs


class _Picker:
    def __init__(self, settings, locked, mode, upgrade, client):
        self.settings, self.locked, self.mode, self.upgrade = settings, locked, mode, upgrade
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from mergepkg.registry.client import Client

            self._client = Client(self.settings)
        return self._client

    def pick(self, pkg: str, reqs: list[Requirement]) -> LockedDependency:
        held = self.locked.get(pkg)
        if held and not ({pkg, ALL} & self.upgrade) and all(r.range.allows(Version.parse(held.version)) for r in reqs):
            return held  # yanked or not: a lock keeps building
        if self.mode == "frozen":
            raise LockError(f"dependency {pkg} ({reqs[0].dep.range}) is not in the lock as required",
                            hint="run `mergepkg lock` to update the lock")
        names = {r.dep.registry for r in reqs if r.dep.registry}
        if len(names) > 1:
            raise RegistryError(f"{pkg} is required from different registries: {', '.join(sorted(names))}",
                                hint="name one registry for it everywhere")
        reg, entries = self.client.entries(pkg, next(iter(names), None))
        live = [e for e in entries if not e.yanked]
        fits = [e for e in live if all(r.range.allows(e.semver) for r in reqs)]
        if fits:
            best = max(fits, key=lambda e: e.semver)
            return LockedDependency(pkg, best.version, reg.url, best.sha256)
        for a, b in itertools.combinations(reqs, 2):
            if not any(a.range.allows(e.semver) and b.range.allows(e.semver) for e in live):
                raise DependencyConflict(pkg, (a.who, a.dep.range), (b.who, b.dep.range),
                                         hint=f"published versions of {pkg}: " + _versions(entries))
        r = next(r for r in reqs if not any(r.range.allows(e.semver) for e in live))
        raise RegistryError(f"no version of {pkg} in {reg.name} matches {r.dep.range!r} (required by {r.who})",
                            hint=f"published versions: {_versions(entries)}")


def _versions(entries) -> str:
    shown = [e.version + (" (yanked)" if e.yanked else "") for e in sorted(entries, key=lambda e: e.semver)]
    return ", ".join(shown) or "none"
