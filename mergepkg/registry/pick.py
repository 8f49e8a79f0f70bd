"""Choosing one version per package for a recipe's dependency graph.

A depth-first search with backtracking, as Cargo's resolver works: packages are decided
in the order they are first required; for each, the candidates are the locked version
(while every range allows it, yanked or not) and then every non-yanked version every
range allows, newest first. A candidate's own `[dependencies]` (from its index entry)
add requirements; a requirement an earlier pick fails sends the search back to try the
next candidate. So the newest versions that fit together are found, and a locked graph
stays as it is while it still fits. When nothing fits, the error names the package and
the requirements that could not be met together.

The registry is part of a candidate, checked like its version against every requirement
at every step of the search, so the order of `[dependencies]` never decides it: a
requirement naming a registry binds the package to it (two naming different ones are a
dead end), and a package no requirement names comes from the first registry that has it.
A requirement that names one may come later than the package's decision, so the
candidates of a package none names yet go on, after the first registry's, with the other
registries' versions: those are kept only where a requirement ends up naming theirs.

The search keeps its state as it goes rather than deriving it again at every node: a
pick's requirements are added when it is made and taken back when the search returns
past it (`Wanted`), and only the picks a new one adds requirements to are checked again
(the others' requirements did not change, so they still fit). It walks with an explicit
stack, so a graph of thousands of packages costs memory, not Python's recursion limit.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mergepkg.errors import DependencyConflict, LockError, RegistryError
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.model import Dependency, Recipe
from mergepkg.recipe.versions import Range, Version

ALL = "*"
MAX_STEPS = 10_000  # search nodes before giving up: one per pick, more where the search goes back


@dataclass(frozen=True)
class Requirement:
    who: str  # "recipe.toml" or "pkg@1.2.0": for messages
    dep: Dependency
    parsed: dict[str, Range] = field(default_factory=dict, compare=False, repr=False)  # the search's, by text

    @functools.cached_property
    def range(self) -> Range:
        """Parsed when first asked (a malformed range in an index entry the search never
        weighs stays unread), and once per text for the whole search: a requirement is made
        again each time the search picks its package again."""
        if self.dep.range not in self.parsed:
            self.parsed[self.dep.range] = Range.parse(self.dep.range)
        return self.parsed[self.dep.range]


@dataclass(frozen=True)
class Candidate:
    pick: LockedDependency
    requires: tuple[Dependency, ...]  # its own [dependencies]
    held: bool = False  # the lock's pick: its registry may be one only the locker had configured
    named_only: bool = False  # not from the package's first registry: kept only where a requirement names its own

    @functools.cached_property
    def version(self) -> Version:
        return Version.parse(self.pick.version)

    def fits(self, reqs: Sequence[Requirement]) -> bool:
        return allowed(self.version, reqs)


def allowed(version: Version, reqs: Sequence[Requirement]) -> bool:
    return all(r.range.allows(version) for r in reqs)


def named(reqs: Sequence[Requirement]) -> set[str]:
    """The registries these requirements name (more than one: no candidate fits them all)."""
    return {r.dep.registry for r in reqs if r.dep.registry}


Roots = tuple[tuple[str, tuple[Dependency, ...]], ...]  # (who, their [dependencies]) the search starts from


class Wanted:
    """Who requires each package how, under the picks made so far: the roots'
    requirements, then each pick's in the order they were made. The search adds a pick's
    requirements when it makes it and removes them when it goes back past it (last made,
    first removed), so a node costs its own pick's dependencies, not the whole graph's.

    `order` is the packages in the order they were first required. Packages are decided
    in that order, so the picks are always its first `len(picks)` entries: the next one to
    decide is `order[len(picks)]`, and `position` orders the picks too."""

    def __init__(self, roots: Roots):
        self.by_package: dict[str, list[Requirement]] = {}
        self.order: list[str] = []
        self.position: dict[str, int] = {}
        self.parsed: dict[str, Range] = {}  # every requirement's range, by text
        for who, deps in roots:
            self.add(who, deps)

    def add(self, who: str, deps: tuple[Dependency, ...]) -> None:
        for dep in deps:
            if dep.name not in self.by_package:
                self.by_package[dep.name] = []
                self.position[dep.name] = len(self.order)
                self.order.append(dep.name)
            self.by_package[dep.name].append(Requirement(who, dep, self.parsed))

    def remove(self, deps: tuple[Dependency, ...]) -> None:
        """Undo the last `add(who, deps)`."""
        for dep in reversed(deps):
            reqs = self.by_package[dep.name]
            reqs.pop()
            if not reqs:  # first required by this pick: the newest in `order`
                del self.by_package[dep.name], self.position[dep.name]
                self.order.pop()


@dataclass
class Frame:
    """A package being decided: the requirements it was decided under, and its
    candidates not tried yet (read lazily: another registry's are read only when the
    first registry's have failed)."""

    pkg: str
    reqs: list[Requirement]
    candidates: Iterator[Candidate]
    tried: bool = False


class VersionPicker:
    """`client` reads indexes; `held_requires(locked)` gives a locked pick's dependencies
    (from its installed recipe file, so a frozen resolution reads no index). `imported`:
    the `[dependencies]` of the recipe files `root` imports, each with its name for
    messages: their steps are built over the same picks, so their ranges count too."""

    def __init__(
        self,
        root: Recipe,
        client,
        locked: dict[str, LockedDependency],
        mode: str,
        upgrade: frozenset[str],
        held_requires: Callable[[LockedDependency], tuple[Dependency, ...]],
        imported: Roots = (),
    ):
        self.root, self.client, self.locked, self.mode, self.upgrade = root, client, locked, mode, upgrade
        self.held_requires = held_requires
        self.roots: Roots = ((root.path.name, tuple(root.dependencies.values())), *imported)
        self.steps = 0
        self.failure: tuple[str, list[Requirement]] | None = None  # the first dead end, for the error
        self.mismatch: tuple[str, list[Requirement]] | None = None  # the first pick from another registry
        self._entries: dict[tuple[str, str | None], tuple] = {}

    def pick(self) -> dict[str, LockedDependency]:
        found = self._search()
        if found is None:
            raise self._error()
        return {n: c.pick for n, c in found.items()}

    # -- the search ----------------------------------------------------------------------
    def _search(self) -> dict[str, Candidate] | None:
        """Depth first: each node is the picks so far; a node that fails (a pick no longer
        fits, or its package has no candidate left) sends the search back to the next
        candidate of the package decided before it. `frames` holds the packages being
        decided, deepest last, instead of Python's call stack."""
        wanted = Wanted(self.roots)
        picks: dict[str, Candidate] = {}
        frames: list[Frame] = []
        outcome = self._node(picks, wanted, None)
        while outcome is not True:
            if isinstance(outcome, Frame):
                frames.append(outcome)
            elif frames:  # this node failed: its pick is taken back
                self._unpick(picks, wanted)
            cand = self._next(frames, picks, wanted)
            if cand is None:
                return None
            frame = frames[-1]
            frame.tried = True
            picks[frame.pkg] = cand
            wanted.add(f"{frame.pkg}@{cand.pick.version}", cand.requires)
            outcome = self._node(picks, wanted, frame.pkg)
        return dict(picks)

    def _next(self, frames: list[Frame], picks: dict[str, Candidate], wanted: Wanted) -> Candidate | None:
        """The next candidate of the deepest package that has one left (for `frames[-1]`,
        once the packages past it are dropped), or None when none has."""
        while frames:
            cand = next(frames[-1].candidates, None)
            if cand is not None:
                return cand
            done = frames.pop()  # every candidate failed: so did the node that decided it
            if not done.tried:
                self._dead_end(done.pkg, done.reqs)
            if frames:
                self._unpick(picks, wanted)
        return None

    def _unpick(self, picks: dict[str, Candidate], wanted: Wanted) -> None:
        _, cand = picks.popitem()
        wanted.remove(cand.requires)

    def _node(self, picks: dict[str, Candidate], wanted: Wanted, new: str | None) -> Frame | bool:
        """One node of the search, `new` its latest pick: False where it is a dead end,
        True where every requirement is decided and met, else the next package to decide.
        Only `new` and the picks it adds requirements to are checked, in the order they
        were picked (the first that fails is the dead end reported): every other pick's
        requirements are those it was checked against before."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RegistryError(
                f"dependency resolution gave up after {MAX_STEPS} tries",
                file=str(self.root.path),
                hint="narrow the version ranges in [dependencies]",
            )
        if new is not None:
            touched = {new} | {d.name for d in picks[new].requires if d.name in picks}
            for pkg in sorted(touched, key=wanted.position.__getitem__):
                if not self._fits(pkg, picks[pkg], wanted.by_package[pkg]):
                    return False
        if len(picks) == len(wanted.order):
            # every requirement is known now: a pick from another registry stands only where one names it
            for pkg, cand in picks.items():
                if cand.named_only and not named(wanted.by_package[pkg]):
                    self.mismatch = self.mismatch or (pkg, list(wanted.by_package[pkg]))
                    return False
            return True
        pkg = wanted.order[len(picks)]
        reqs = list(wanted.by_package[pkg])  # its own copy: the candidates are read later, lazily
        return Frame(pkg, reqs, iter(self._candidates(pkg, reqs)))

    def _fits(self, pkg: str, cand: Candidate, reqs: list[Requirement]) -> bool:
        """Whether a pick still meets every requirement of its package: range and registry."""
        names = named(reqs)
        if not cand.fits(reqs) or len(names) > 1:
            self._dead_end(pkg, reqs)
            return False
        if names and not self._from(cand, next(iter(names))):
            self.mismatch = self.mismatch or (pkg, list(reqs))  # a later requirement named another registry
            return False
        return True

    def _from(self, cand: Candidate, registry: str) -> bool:
        """Whether `cand` comes from the configured registry `registry`. A held pick from
        a registry not configured here (someone's checkout of a git-hosted registry: the
        sha256 decides) counts as from any; `--frozen` reads no configuration."""
        url = cand.pick.registry
        if cand.held and (self.mode == "frozen" or url not in {r.url for r in self.client.registries}):
            return True
        return url == self.client.registry(registry).url

    def _dead_end(self, pkg: str, reqs: list[Requirement]) -> None:
        self.failure = self.failure or (pkg, list(reqs))  # a copy: the search goes on changing its lists

    def _candidates(self, pkg: str, reqs: list[Requirement]) -> Iterable[Candidate]:
        names = named(reqs)
        if len(names) > 1:
            return []  # a dead end whatever the version: the error says so
        registry = next(iter(names), None)
        out = []
        held = self.locked.get(pkg)
        if held and not ({pkg, ALL} & self.upgrade) and allowed(Version.parse(held.version), reqs):
            cand = Candidate(held, self.held_requires(held), held=True)  # yanked or not: a lock keeps building
            if registry is None or self._from(cand, registry):
                out.append(cand)
        if self.mode == "frozen":
            if not out:
                raise LockError(
                    f"dependency {pkg} ({reqs[0].dep.range}) is not in the lock as required",
                    hint="run `mergepkg lock` to update the lock",
                )
            return out
        reg, entries = self._index(pkg, registry)
        taken = {c.pick.version for c in out}
        out += self._versions(pkg, reg, entries, reqs, taken, named_only=False)
        if registry is not None:
            return out
        return itertools.chain(out, self._elsewhere(pkg, reqs, reg, {(c.pick.version, c.pick.registry) for c in out}))

    def _versions(self, pkg, reg, entries, reqs, taken, *, named_only: bool) -> list[Candidate]:
        """The non-yanked versions of `entries` every range allows, newest first."""
        return [
            Candidate(LockedDependency(pkg, e.version, reg.url, e.sha256), e.dependencies, named_only=named_only)
            for e in sorted(entries, key=lambda e: e.semver, reverse=True)
            if e.version not in taken and not e.yanked and allowed(e.semver, reqs)
        ]

    def _elsewhere(self, pkg: str, reqs: list[Requirement], first, taken) -> Iterator[Candidate]:
        """The versions of the other registries that have `pkg`, in their added order, read
        only once the first registry's have all failed."""
        for reg, entries in self.client.having(pkg):  # as `Client.entries`: a registry not reached is skipped
            if reg.url == first.url:
                continue
            held = {v for v, url in taken if url == reg.url}
            yield from self._versions(pkg, reg, entries, reqs, held, named_only=True)

    def _index(self, pkg: str, registry: str | None):
        if (pkg, registry) not in self._entries:
            self._entries[pkg, registry] = self.client.entries(pkg, registry)
        return self._entries[pkg, registry]

    # -- when nothing fits ------------------------------------------------------------------
    def _error(self) -> RegistryError:
        # _search finds nothing only past a dead end, or a pick a requirement naming another registry refused
        found = self.failure or self.mismatch
        assert found is not None
        pkg, reqs = found
        names = named(reqs)
        if len(names) > 1:
            asked = ", ".join(f"{r.dep.registry} (by {r.who})" for r in reqs if r.dep.registry)
            return RegistryError(
                f"{pkg} is required from different registries: {asked}", hint="name one registry for it everywhere"
            )
        reg, entries = self._index(pkg, next(iter(names), None))
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
