"""What the registry commands do: search, info, install, publish, yank."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import PublishError, RegistryError
from mergepkg.files import lock_file_of, write_atomic
from mergepkg.lockfile import Lock, lock_path, parse_lock
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.model import Dependency, Recipe
from mergepkg.recipe.names import InvalidName, canonical_name
from mergepkg.recipe.plan import make_plan
from mergepkg.recipe.versions import Range, Version, VersionError
from mergepkg.registry.client import Client, Registry, Unreachable
from mergepkg.registry.dependencies import Dependencies, install_dependencies
from mergepkg.registry.folder import (
    RegistryFolder,
    check_lock_current,
    check_publishable,
    make_entry,
    parse_published,
)
from mergepkg.registry.index import Entry, index_path, read_index
from mergepkg.settings import Settings

SPEC = re.compile(r"^(?P<name>[^@\s]+)(?:@(?P<range>.+))?$")


@dataclass(frozen=True)
class Spec:
    """`NAME[@RANGE]` as given on the command line."""

    name: str
    range: str  # "*" when none was given

    @classmethod
    def parse(cls, text: str) -> Spec:
        m = SPEC.match(text.strip())
        if not m:
            raise InvalidName(
                f"expected NAME or NAME@RANGE, got {text!r}", hint='e.g. math-chat@^1.2 or "math-chat@>=1.0, <2"'
            )
        try:
            rng = m["range"] or "*"
            Range.parse(rng)
        except VersionError as e:
            raise InvalidName(str(e), hint="ranges: ^1.2, ~1.2.3, =1.2.3, >=1.0, <2.0 or *") from None
        return cls(canonical_name(m["name"]), rng)

    def __str__(self) -> str:
        return self.name if self.range == "*" else f"{self.name}@{self.range}"


def looks_like_spec(text: str) -> bool:
    """A build argument that is a package rather than a file: no such file, and a name."""
    return not Path(text).exists() and not text.endswith(".toml") and bool(SPEC.match(text))


def search(client: Client, text: str) -> tuple[list[tuple[Registry, str, dict]], list[Unreachable]]:
    """Packages whose name, description or tags contain `text` (case-insensitive), per
    registry; and the registries that could not be read (skipped, as `info` skips them,
    unless none could be)."""
    words = text.lower().split()
    found, unreachable = [], []
    registries = client.ordered(None)
    for reg in registries:
        try:
            listed = client.packages(reg)
        except Unreachable as e:
            unreachable.append(e)
            continue
        for name, info in listed.items():
            hay = " ".join([name, info.get("description", ""), *info.get("tags", [])]).lower()
            if all(w in hay for w in words):
                found.append((reg, name, info))
    if registries and len(unreachable) == len(registries):
        raise unreachable[0]
    return found, unreachable


def info(client: Client, spec: Spec, registry: str | None = None) -> tuple[Registry, list[Entry]]:
    """The versions of a package a range allows (every version for `*`), oldest first."""
    reg, entries = client.entries(spec.name, registry)
    rng = Range.parse(spec.range)
    shown = [e for e in entries if spec.range == "*" or rng.allows(e.semver)]
    if not shown:
        raise RegistryError(
            f"no version of {spec.name} in {reg.name} matches {spec.range!r}",
            hint="published: " + ", ".join(e.version for e in entries),
        )
    return reg, sorted(shown, key=lambda e: e.semver)


def install(settings: Settings, spec: Spec, registry: str | None = None, client: Client | None = None) -> Dependencies:
    """Resolve `spec` (newest matching non-yanked version) and its dependencies; fetch,
    verify and store each recipe file. The same resolution a recipe's [dependencies] get."""
    root = Recipe(
        name="install",
        version="0.0.0",
        path=Path("command line").resolve(),
        sources={},
        steps={},
        outputs=(),
        dependencies={spec.name: Dependency(spec.name, spec.range, registry)},
    )
    client = client or Client(settings)
    deps = install_dependencies(root, settings, client=client)
    install_published_lock(deps, spec.name, client)
    return deps


def install_published_lock(deps: Dependencies, name: str, client: Client) -> Path | None:
    """The publisher's lock of the installed `name`, put beside its recipe file (where a
    build reads and writes the lock) unless a lock is there already; checked by sha256.
    With it, a build holds the publisher's commits and takes the published digests as
    those a remote's artifacts must have (docs/remote.md#substitution-build-plan-verify-and-eval)."""
    pick, path = deps.picks[name], deps.files[name]
    target = lock_file_of(path)
    if target.exists():
        return target
    reg = client.by_url(pick.registry)
    try:
        reg, entries = client.entries(name, reg.name if reg in client.registries else None)
    except RegistryError:
        return None  # offline and never read: the build locks it itself
    entry = next((e for e in entries if e.version == pick.version and e.sha256 == pick.sha256), None)
    if entry is None or not entry.lock:
        return None
    write_atomic(target, client.lock_bytes(reg, entry))
    return target


def published_locks(settings: Settings, spec: Spec, registry: str | None = None) -> list[tuple[str, Lock]]:
    """The published locks of every version `spec` matches, yanked ones too (a remote's
    owner keeps what anyone may still build): [(NAME@VERSION, lock)]. A matching version
    published without its lock is an error: what it pins is unknown, so nothing of it
    could be kept."""
    client = Client(settings)
    reg, entries = client.entries(spec.name, registry)
    rng = Range.parse(spec.range)
    chosen = [e for e in entries if rng.allows(Version.parse(e.version))]
    if not chosen:
        raise RegistryError(
            f"no version of {spec.name} in {reg.name} matches {spec.range}", hint="`mergepkg info NAME`"
        )
    out = []
    for e in chosen:
        label = f"{e.name}@{e.version}"
        if not e.lock:
            raise RegistryError(
                f"{label} was published without its lock: what it pins is unknown",
                file=reg.url,
                hint="republish it from a built recipe, or keep it with --keep-lock LOCK",
            )
        out.append((label, parse_lock(client.lock_bytes(reg, e).decode("utf-8"), f"{reg.url}: {label}")))
    return out


@dataclass(frozen=True)
class Publication:
    """A recipe that passed every check `publish` makes, nothing written yet: what
    `publish --push` holds while it pushes the lock's steps, so that a recipe the registry
    would refuse never has its steps pushed first."""

    registry: Registry
    recipe: Recipe
    data: bytes  # the recipe file's bytes, as published
    lock_text: str | None


def publish(settings: Settings, recipe_file: Path, registry: str) -> tuple[Registry, Entry, bool]:
    """Validate the recipe (parse, refuse local sources, resolve its dependencies, plan),
    then add it to the registry. Returns whether it was new (False: already there, same bytes)."""
    return publish_checked(settings, check_publish(settings, recipe_file, registry))


def check_publish(settings: Settings, recipe_file: Path, registry: str, *, against_index: bool = False) -> Publication:
    """Every check of `publish`, writing nothing: the registry is configured, the recipe
    parses with no local source, its dependencies resolve, it plans, its lock (if any) is
    the recipe's. With `against_index` (before `--push`, which the registry's own refusal
    would come too late for), also that the registry, as far as it can be read, has not
    published this version with other bytes."""
    client = Client(settings)
    reg = client.registry(registry)
    data = Path(recipe_file).read_bytes()
    recipe = parse_published(data, str(Path(recipe_file).resolve()))
    check_publishable(recipe, data)
    deps = install_dependencies(recipe, settings, client=client)
    if (me := canonical_name(recipe.name)) in deps.picks:  # a dependency of a dependency needs it
        raise PublishError(
            f"{me} would depend on itself: its dependencies need {me} {deps.picks[me].version}",
            file=str(recipe.display),
            hint="two packages cannot use each other's steps; move the shared steps into a third",
        )
    flat = flatten(recipe, bind=deps.bind, loaded=deps.loaded)
    make_plan(flat)
    lock_file = lock_path(recipe)
    lock_text = lock_file.read_text() if lock_file.exists() else None
    if lock_text is not None:
        check_lock_current(parse_lock(lock_text, lock_file), flat, str(lock_file), Path(recipe_file).name)
    if against_index:
        _check_unpublished(client, reg, make_entry(recipe, data, lock_text))
    return Publication(reg, recipe, data, lock_text)


def _check_unpublished(client: Client, reg: Registry, entry: Entry) -> None:
    """Refuse, before anything is pushed or written, a version the registry holds with
    other bytes. Best effort: an index this client may not read (a private registry, a
    token that may only publish) is left to the registry, which refuses it as it writes."""
    try:
        data = client.get(reg, index_path(entry.name))
    except Unreachable:
        return
    published = read_index(data.decode("utf-8"), f"{reg.url}/{index_path(entry.name)}") if data else []
    if any(e.version == entry.version and e.sha256 != entry.sha256 for e in published):
        raise PublishError(
            f"{entry.name}@{entry.version} is already published with other content",
            file=reg.url,
            hint="published versions are immutable: bump [package] version",
        )


def publish_checked(settings: Settings, checked: Publication) -> tuple[Registry, Entry, bool]:
    """Add a recipe `check_publish` passed to its registry (which checks it again as it writes)."""
    reg = checked.registry
    if reg.folder is not None:
        entry, new = RegistryFolder(reg.folder).publish(checked.recipe, checked.data, checked.lock_text)
        return reg, entry, new
    payload = {"recipe": checked.data.decode("utf-8"), "lock": checked.lock_text}
    answer = Client(settings).post(reg, "publish", payload)
    return reg, _entry(answer, reg), bool(answer.get("published"))


def yank(settings: Settings, name: str, version: str, registry: str, undo: bool = False) -> tuple[Registry, Entry]:
    client = Client(settings)
    reg = client.registry(registry)
    if reg.folder is not None:
        return reg, RegistryFolder(reg.folder).yank(name, version, not undo)
    return reg, _entry(
        client.post(reg, "yank", {"name": canonical_name(name), "version": version, "yanked": not undo}), reg
    )


def _entry(answer: dict, reg: Registry) -> Entry:
    if "entry" not in answer:
        raise PublishError(f"{reg.name} answered without an entry: {answer}", file=reg.url)
    return Entry.from_json(json.dumps(answer["entry"]), reg.url)
