"""Choosing one version per package for a recipe's dependency graph.

A depth-first search with backtracking, as Cargo's resolver works: packages are decided
in the order they are first required; for each, the candidates are the locked version
(while every range allows it, yanked or not) and then every non-yanked version every
range allows, newest first. A candidate's own `[dependencies]` (from its index entry)
add requirements; a requirement an earlier pick fails sends the search back to try the
next candidate. So the newest versions that fit together are found, and a locked graph
stays as it is while it still fits. When nothing fits, the error names the package and
the requirements that could not be met together.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from mergepkg.errors import DependencyConflict, LockError, RegistryError
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.model import Dependency, Recipe
from mergepkg.recipe.versions import Range, Version

ALL = "*"
MAX_STEPS = 10_000  # search nodes before giving up: real graphs need a handful


@dataclass(frozen=True)
class Requirement:
    who: str  # "recipe.toml" or "pkg@1.2.0": for messages
    dep: Dependency

    @functools.cached_property  # parsed once: the search asks many times
    def range(self) -> Range:
        return Range.parse(self.dep.range)


@dataclass(frozen=True)
class Candidate:
    pick: LockedDependency
    requires: tuple[Dependency, ...]  # its own [dependencies]

    def fits(self, reqs: list[Requirement]) -> bool:
        return allowed(Version.parse(self.pick.version), reqs)


def allowed(version: Version, reqs: list[Requirement]) -> bool:
    return all(r.range.allows(version) for r in reqs)


class VersionPicker:
    """`client` reads indexes; `held_requires(locked)` gives a locked pick's dependencies
    (from its installed recipe file, so a frozen resolution reads no index)."""

    def __init__(
        self,
        root: Recipe,
        client,
        locked: dict[str, LockedDependency],
        mode: str,
        upgrade: frozenset[str],
        held_requires: Callable[[LockedDependency], tuple[Dependency, ...]],
    ):
        self.root, self.client, self.locked, self.mode, self.upgrade = root, client, locked, mode, upgrade
        self.held_requires = held_requires
        self.steps = 0
        self.failure: tuple[str, list[Requirement]] | None = None  # the first dead end, for the error
        self._entries: dict[str, tuple] = {}

    def pick(self) -> dict[str, LockedDependency]:
        found = self._search({})
        if found is None:
            raise self._error()
        return {n: c.pick for n, c in found.items()}

    # -- the search ----------------------------------------------------------------------
    def _search(self, picks: dict[str, Candidate]) -> dict[str, Candidate] | None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RegistryError(
                f"dependency resolution gave up after {MAX_STEPS} tries",
                file=str(self.root.path),
                hint="narrow the version ranges in [dependencies]",
            )
        reqs = self._requirements(picks)
        for pkg, cand in picks.items():
            if pkg in reqs and not cand.fits(reqs[pkg]):
                self._dead_end(pkg, reqs[pkg])
                return None
        undecided = [p for p in reqs if p not in picks]
        if not undecided:
            return {p: c for p, c in picks.items() if p in reqs}  # packages no longer required drop out
        pkg = undecided[0]
        cands = self._candidates(pkg, reqs[pkg])
        if not cands:
            self._dead_end(pkg, reqs[pkg])
            return None
        for cand in cands:
            found = self._search({**picks, pkg: cand})
            if found is not None:
                return found
        return None

    def _dead_end(self, pkg: str, reqs: list[Requirement]) -> None:
        self.failure = self.failure or (pkg, reqs)

    def _requirements(self, picks: dict[str, Candidate]) -> dict[str, list[Requirement]]:
        """Every package reachable from the root through the picks, with who requires it how."""
        reqs: dict[str, list[Requirement]] = {}
        todo = [(self.root.path.name, tuple(self.root.dependencies.values()))]
        seen = set()
        while todo:
            who, deps = todo.pop(0)
            for dep in deps:
                reqs.setdefault(dep.name, []).append(Requirement(who, dep))
                if dep.name in picks and dep.name not in seen:
                    seen.add(dep.name)
                    cand = picks[dep.name]
                    todo.append((f"{dep.name}@{cand.pick.version}", cand.requires))
        return reqs

    def _candidates(self, pkg: str, reqs: list[Requirement]) -> list[Candidate]:
        out = []
        held = self.locked.get(pkg)
        if held and not ({pkg, ALL} & self.upgrade) and allowed(Version.parse(held.version), reqs):
            out.append(Candidate(held, self.held_requires(held)))  # yanked or not: a lock keeps building
        if self.mode == "frozen":
            if not out:
                raise LockError(
                    f"dependency {pkg} ({reqs[0].dep.range}) is not in the lock as required",
                    hint="run `mergepkg lock` to update the lock",
                )
            return out
        reg, entries = self._index(pkg, reqs)
        taken = {c.pick.version for c in out}
        for e in sorted(entries, key=lambda e: e.semver, reverse=True):  # newest first
            if e.version not in taken and not e.yanked and allowed(e.semver, reqs):
                out.append(Candidate(LockedDependency(pkg, e.version, reg.url, e.sha256), e.dependencies))
        return out

    def _index(self, pkg: str, reqs: list[Requirement]):
        if pkg not in self._entries:
            names = {r.dep.registry for r in reqs if r.dep.registry}
            if len(names) > 1:
                raise RegistryError(
                    f"{pkg} is required from different registries: {', '.join(sorted(names))}",
                    hint="name one registry for it everywhere",
                )
            self._entries[pkg] = self.client.entries(pkg, next(iter(names), None))
        return self._entries[pkg]

    # -- when nothing fits ------------------------------------------------------------------
    def _error(self) -> RegistryError:
        assert self.failure is not None  # _search finds nothing only past a dead end, which it records
        pkg, reqs = self.failure
        reg, entries = self._index(pkg, reqs)
        live = [e for e in entries if not e.yanked]
        published = f"published versions of {pkg}: " + versions_text(entries)
        for r in reqs:
            if not any(r.range.allows(e.semver) for e in live):
                return RegistryError(
                    f"no version of {pkg} in {reg.name} matches {r.dep.range!r} (required by {r.who})", hint=published
                )
        for a, b in itertools.combinations(reqs, 2):
            if not any(a.range.allows(e.semver) and b.range.allows(e.semver) for e in live):
                return DependencyConflict(pkg, (a.who, a.dep.range), (b.who, b.dep.range), hint=published)
        asked = ", ".join(f"{r.dep.range!r} (required by {r.who})" for r in reqs)
        return RegistryError(f"no version of {pkg} satisfies all of {asked}", hint=published)


def versions_text(entries) -> str:
    shown = [e.version + (" (yanked)" if e.yanked else "") for e in sorted(entries, key=lambda e: e.semver)]
    return ", ".join(shown) or "none"
