"""Writing a registry folder: publish and yank, atomic and safe under concurrent writers.

Both `mergepkg publish --registry <folder>` and `mergepkg registry serve` write through
`RegistryFolder`. Every write takes the folder's write lock, writes each file to a temp
file and renames it in (recipe file first, then the package's index, then
packages.json), so a reader never sees half a file and a killed publish leaves at most
an unlisted recipe file that the next publish of that version overwrites, or a version
in its index that packages.json or the audit log miss, which publishing the same file
again adds (`_finish`; the audit line where the registry keeps a log).
"""

from __future__ import annotations

import getpass
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from mergepkg.errors import MergepkgError, PublishError, RegistryError, did_you_mean
from mergepkg.files import write_atomic
from mergepkg.lockfile import Lock, lock_path, parse_lock, recipe_hash
from mergepkg.recipe.locate import key_name, locate
from mergepkg.recipe.model import Dependency, Recipe, Source
from mergepkg.recipe.names import canonical_name, check_version
from mergepkg.recipe.parse import parse_recipe
from mergepkg.recipe.versions import Range
from mergepkg.registry import audit
from mergepkg.registry.index import (
    FORMAT,
    MAX_RECIPE_BYTES,
    Entry,
    index_path,
    local_sources,
    published_lock_path,
    read_index,
    recipe_path,
    summary,
    with_yanked,
    write_index,
)

PRIVATE = ".mergepkg"  # write lock and hashed tokens; never served


def make_entry(recipe: Recipe, data: bytes, lock_text: str | None = None, now: datetime | None = None) -> Entry:
    """The index entry for publishing `recipe`, whose file holds `data`. Source pins come
    from the recipe's lock when it has one (commits), else from the revisions asked for."""
    locked = parse_lock(lock_text, lock_path(recipe)).sources if lock_text else {}

    def pin(name: str, src: Source) -> str:  # a lock's commit counts only where it asked for what the recipe asks now
        held = locked.get(name)
        commit = held.pin.commit if held and (held.hf, held.revision) == (src.hf, src.revision) else None
        return commit if commit is not None else src.revision  # None: a hand-edited lock without a commit

    sources = {n: f"{s.hf}@{pin(n, s)}" for n, s in sorted(recipe.sources.items()) if s.hf}
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Entry(
        canonical_name(recipe.name),
        str(check_version(recipe.version)),
        hashlib.sha256(data).hexdigest(),
        tuple(recipe.dependencies.values()),
        sources,
        recipe.description,
        recipe.tags,
        False,
        stamp,
        recipe.remote or "",
        hashlib.sha256(lock_text.encode()).hexdigest() if lock_text else "",
    )


def check_publishable(recipe: Recipe, data: bytes) -> None:
    """What every registry refuses, whoever publishes: names, versions, size (local
    sources are refused before parsing, by `parse_published`)."""
    if len(data) > MAX_RECIPE_BYTES:
        raise PublishError(
            f"the recipe is {len(data)} bytes; the limit is {MAX_RECIPE_BYTES}", status=413, file=str(recipe.display)
        )
    canonical_name(recipe.name)
    check_version(recipe.version)


def check_lock_current(lock: Lock, flat: Recipe, lock_file: str, recipe_file: str) -> None:
    """Refuse a lock made before its recipe last changed: published, its keys would not be
    the recipe's, and a `--locked` build of the package would fail on a file its user cannot
    fix. `flat`: the recipe with its dependencies' steps joined in, as `mergepkg lock` hashed
    it. The one check of `publish` (packages.py) and of an upload to `registry serve`."""
    if lock.recipe_hash != recipe_hash(flat):
        raise PublishError(
            f"{Path(lock_file).name} is out of date: the recipe changed since it was locked",
            file=lock_file,
            hint=f"run `mergepkg lock {recipe_file}` (or build it), then publish",
        )


def _local_user() -> str:
    try:
        return "local:" + getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return "local"


def _write(path: Path, data: bytes) -> None:
    write_atomic(path, data, durable=True)  # a registry's files are read from other machines


class RegistryFolder:
    """A registry's files on this machine."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def private(self) -> Path:
        return self.root / PRIVATE

    def init(self, name: str, *, private: bool = False) -> None:
        """A new, empty registry; a `private` one answers reads only with a token (scope read)."""
        if (self.root / "config.json").exists():
            raise RegistryError("a registry already lives here", file=str(self.root / "config.json"))
        canonical_name(name)
        config = {"format": FORMAT, "name": name, **({"private": True} if private else {})}
        _write(self.root / "config.json", json.dumps(config, indent=1).encode() + b"\n")
        _write(self.root / "packages.json", packages_json({}))
        _write(self.root / ".gitignore", f"{PRIVATE}/\n".encode())  # a registry is often a git repository

    def config(self) -> dict:
        path = self.root / "config.json"
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise RegistryError(
                "not a registry folder (no config.json)",
                file=str(self.root),
                hint="create one with `mergepkg registry init DIR --name NAME`",
            ) from None
        except ValueError as e:
            raise RegistryError(f"config.json is not JSON: {e}", file=str(path)) from None
        if config.get("format") != FORMAT:
            raise RegistryError(
                f"registry format {config.get('format')!r}; this mergepkg reads format {FORMAT}",
                file=str(path),
                hint="upgrade mergepkg",
            )
        return config

    def check_not_circular(self, recipe: Recipe) -> None:
        """No version here that the recipe's dependencies (and theirs) may pick needs the
        recipe's own package: once published, the newest version fitting it would be this
        one, and the recipes would import each other."""
        me = canonical_name(recipe.name)
        todo: list[tuple[str, str, str, tuple[str, ...]]] = [
            (canonical_name(d.name), d.range, f"dependencies.{d.name}", ()) for d in recipe.dependencies.values()
        ]
        seen: set[tuple[str, str]] = set()
        while todo:
            name, rng, key, path = todo.pop()
            if (name, rng) in seen:
                continue
            seen.add((name, rng))
            for e in self.entries(name):
                if e.yanked or not Range.parse(rng).allows(e.semver):
                    continue
                chain = (*path, f"{name}@{e.version}")
                for dep in e.dependencies:
                    if canonical_name(dep.name) == me:
                        raise PublishError(
                            f"{me} would depend on itself: {' -> '.join((me, *chain, me))}",
                            file=str(recipe.display),
                            line=recipe.line_of(key),
                            key=key,
                            hint="two packages cannot use each other's steps; move the shared steps into a third",
                        )
                    todo.append((canonical_name(dep.name), dep.range, key, chain))

    def entries(self, name: str) -> list[Entry]:
        path = self.root / index_path(name)
        try:
            return read_index(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            return []

    def _lock(self) -> FileLock:
        self.private.mkdir(exist_ok=True)
        return FileLock(self.private / "write.lock", timeout=60)

    def publish(
        self, recipe: Recipe, data: bytes, lock_text: str | None = None, *, who: str = "", source: str = "local"
    ) -> tuple[Entry, bool]:
        """Add a version. Returns (entry, True), or (the existing entry, False) when this
        exact file is already published; other content under a published version is refused.
        `who` (a token's label; default: this machine's user) and `source` go to the audit log."""
        check_publishable(recipe, data)
        entry = make_entry(recipe, data, lock_text)
        self.config()
        with self._lock():
            entries = self.entries(entry.name)
            same = next((e for e in entries if e.version == entry.version), None)
            if same is not None:
                if same.sha256 == entry.sha256:
                    self._finish(entries, same, who=who or _local_user(), source=source)
                    return same, False
                raise PublishError(
                    f"{entry.name}@{entry.version} is already published with other content",
                    status=409,
                    hint="published versions are immutable: bump [package] version",
                )
            _write(self.root / recipe_path(entry.name, entry.version), data)
            if lock_text:  # before the index names it, as the recipe file
                _write(self.root / published_lock_path(entry.name, entry.version), lock_text.encode())
            self._save(entry.name, [*entries, entry])
            audit.record(
                self.private,
                who=who or _local_user(),
                action="publish",
                name=entry.name,
                version=entry.version,
                sha256=entry.sha256,
                source=source,
            )
        return entry, True

    def yank(self, name: str, version: str, yanked: bool = True, *, who: str = "", source: str = "local") -> Entry:
        name, version = canonical_name(name), str(check_version(version))
        self.config()
        with self._lock():
            entries = self.entries(name)
            if not any(e.version == version for e in entries):
                raise PublishError(
                    f"{name}@{version} is not published here",
                    status=404,
                    hint=f"published: {', '.join(e.version for e in entries) or 'no versions'}",
                )
            entries = with_yanked(entries, version, yanked)
            self._save(name, entries)
            entry = next(e for e in entries if e.version == version)
            audit.record(
                self.private,
                who=who or _local_user(),
                action="yank" if yanked else "unyank",
                name=name,
                version=version,
                sha256=entry.sha256,
                source=source,
            )
        return entry

    def check_dependencies(self, recipe: Recipe) -> None:
        """Dependencies without a registry of their own must be here, with a version that
        fits and the steps the recipe uses, and none may need the package again (what a
        server can check of an upload)."""
        self.check_not_circular(recipe)
        for dep in recipe.dependencies.values():
            if dep.registry is not None:
                continue  # a name in the publisher's registry list: nothing to look up here
            key = f"dependencies.{dep.name}"
            best = self.newest_fit(dep)
            if best is None:
                raise PublishError(
                    f"depends on {dep.name} {dep.range}, and this registry has no such version",
                    file=str(recipe.display),
                    line=recipe.line_of(key),
                    key=key,
                    hint="published: " + (", ".join(e.version for e in self.entries(dep.name)) or "nothing"),
                )
            steps = self._published(best).steps
            for name, src in recipe.sources.items():
                if src.dependency == dep.name and src.step not in steps:
                    assert src.step is not None  # the parser gives every dependency source a step
                    raise PublishError(
                        f"{dep.name}@{best.version} has no step {src.step!r}",
                        file=str(recipe.display),
                        line=recipe.line_of(f"sources.{key_name(name)}.step"),
                        key=f"sources.{key_name(name)}.step",
                        hint=did_you_mean(src.step, steps),
                    )

    def newest_fit(self, dep: Dependency) -> Entry | None:
        """The version of `dep` here that a publisher's `mergepkg lock` would pick when
        nothing else pins it: the newest non-yanked one its range allows; None if none."""
        fits = [e for e in self.entries(dep.name) if not e.yanked and Range.parse(dep.range).allows(e.semver)]
        return max(fits, key=lambda e: e.semver, default=None)

    def _published(self, entry: Entry) -> Recipe:
        """The recipe file of a version the index lists. A missing or unreadable one is this
        registry's damage, not the publisher's mistake: said so, and a server answers 500."""
        path = self.root / recipe_path(entry.name, entry.version)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problem = "its file is missing"
        except (OSError, UnicodeDecodeError) as e:
            problem = f"its file cannot be read ({getattr(e, 'strerror', None) or e})"
        else:
            return parse_recipe(text, path)
        raise PublishError(
            f"the registry lists {entry.name}@{entry.version} but {problem}",
            status=500,
            file=str(path),
            hint="the registry folder is damaged; tell its maintainer",
        )

    def _finish(self, entries: list[Entry], same: Entry, *, who: str, source: str) -> None:
        """What a publish killed after writing the index left undone, done by publishing the
        same bytes again: the package's line in packages.json (else `search` never finds it)
        and the audit line the log lacks: killed before packages.json, or between it and the
        log. A listed package in a registry without a log (a git checkout: the log is
        private) gets none, crediting no one else's publish. Under the write lock; what is
        up to date is not written."""
        packages = self.packages()
        stale = packages.get(same.name) != summary(entries)
        if stale:
            self._save_packages(packages, same.name, entries)
        if not stale and not (self.private / audit.FILE).is_file():
            return  # listed, and no log to mend (a fresh git checkout of the registry)
        try:
            logged = any(
                (r.get("action"), r.get("name"), r.get("version")) == ("publish", same.name, same.version)
                for r in audit.read(self.private)
            )
        except RegistryError:
            logged = True  # a damaged log is `registry log`'s to report; appending to it would not mend it
        if not logged:
            audit.record(
                self.private,
                who=who,
                action="publish",
                name=same.name,
                version=same.version,
                sha256=same.sha256,
                source=source,
            )

    def _save(self, name: str, entries: list[Entry]) -> None:
        _write(self.root / index_path(name), write_index(entries).encode())
        self._save_packages(self.packages(), name, entries)

    def packages(self) -> dict:
        """packages.json's packages; rebuilt from every index when it is damaged or missing
        (what the next write saves, and what `registry site` copies)."""
        try:
            packages = json.loads((self.root / "packages.json").read_text())["packages"]
            if not isinstance(packages, dict):
                raise TypeError
        except (FileNotFoundError, ValueError, KeyError, TypeError, RecursionError):
            packages = self._packages_from_index()
        return packages

    def _save_packages(self, packages: dict, name: str, entries: list[Entry]) -> None:
        packages[name] = summary(entries)
        _write(self.root / "packages.json", packages_json(packages))

    def _packages_from_index(self) -> dict:
        packages = {}
        for file in sorted((self.root / "index").rglob("*.jsonl")):
            entries = read_index(file.read_text(encoding="utf-8"), str(file))
            if entries:
                packages[entries[0].name] = summary(entries)
        return packages


def packages_json(packages: dict) -> bytes:
    """packages.json's bytes for `packages` (name -> summary), sorted by name: one file for
    one set of packages, whoever writes it."""
    return json.dumps({"packages": dict(sorted(packages.items()))}, indent=1).encode() + b"\n"


def parse_published(data: bytes, label: str) -> Recipe:
    """The recipe to publish from its bytes (an upload, or the publisher's file named by
    `label`): sources that exist only on the publisher's machine are refused first."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PublishError("the recipe is not UTF-8 text", file=label) from None
    try:
        return parse_recipe(_without_local_sources(text, label), Path(label))
    except PublishError:
        raise
    except MergepkgError as e:
        raise PublishError(e.message, file=label, line=e.line, key=e.key, hint=e.hint) from None


def _without_local_sources(text: str, label: str) -> str:
    """Refuse local sources before parsing: parsing would look for their folders here.
    Installing checks the same (`local_sources`) of what a registry serves."""
    local = list(local_sources(text))
    if local:
        key = f"sources.{key_name(local[0])}"
        raise PublishError(
            "sources that only exist on the publisher's machine cannot be published: " + ", ".join(local),
            file=label,
            line=locate(text, key),
            key=key,
            hint="publish those models to the Hugging Face Hub (a `hf` source), or publish the other "
            "recipe and use it through [dependencies]",
        )
    return text
