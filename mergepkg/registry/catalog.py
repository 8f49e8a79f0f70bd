"""What the registry's web pages show, read from a registry folder (`pages.py`).

A `Catalog` holds every package's index entries, who depends on whom, and the search
`mergepkg search` does (every word in the name, description or tags, case-insensitive).
`load_catalog` reads the folder once and keeps the result until `packages.json` changes:
every publish and yank rewrites it by rename (`folder.py`), so its inode, size and
modification time together tell a changed registry from an unchanged one.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mergepkg.errors import MergepkgError
from mergepkg.recipe.names import canonical_name
from mergepkg.registry.folder import RegistryFolder
from mergepkg.registry.index import Entry, latest_of, read_index


@dataclass(frozen=True)
class Package:
    """One package: its entries, oldest first, and what its summary shows."""

    name: str
    entries: tuple[Entry, ...]

    @functools.cached_property
    def latest(self) -> Entry:
        """What `install NAME` picks, as packages.json says (`index.latest_of`)."""
        return latest_of(list(self.entries))

    @property
    def yanked(self) -> bool:
        return all(e.yanked for e in self.entries)

    def newest_first(self) -> list[Entry]:
        return sorted(self.entries, key=lambda e: e.semver, reverse=True)

    def entry(self, version: str) -> Entry | None:
        return next((e for e in self.entries if e.version == version), None)

    @functools.cached_property
    def haystack(self) -> str:
        """What search looks in: name, description and tags, lowercase."""
        latest = self.latest
        return " ".join([self.name, latest.description, *latest.tags]).lower()


@dataclass(frozen=True)
class Dependent:
    """A package whose versions name another in `[dependencies]`."""

    name: str
    versions: tuple[str, ...]  # its versions that do, oldest first
    ranges: tuple[str, ...]  # the ranges they ask for, as written, without repeats


@dataclass(frozen=True)
class Catalog:
    registry: str  # config.json's name
    packages: dict[str, Package]  # by canonical name, sorted
    dependents: dict[str, tuple[Dependent, ...]] = field(default_factory=dict)
    stamp: tuple = ()  # what `load_catalog` compares to tell a changed folder

    def search(self, text: str) -> list[Package]:
        words = text.lower().split()
        return [p for p in self.packages.values() if all(w in p.haystack for w in words)]

    def find(self, name: str) -> Package | None:
        try:
            return self.packages.get(canonical_name(name))
        except MergepkgError:
            return None


def read_catalog(root: Path) -> Catalog:
    """Every package of the registry folder `root`, from its index files."""
    stamp = _stamp(root)  # before reading: a publish during the read makes the next `get` read again
    config = RegistryFolder(root).config()  # a folder that is not a registry: one clean error
    packages: dict[str, Package] = {}
    index = root / "index"
    files = sorted(index.rglob("*.jsonl")) if index.is_dir() else []
    for file in files:
        entries = read_index(file.read_text(encoding="utf-8"), file.relative_to(root).as_posix())
        if entries:
            packages[entries[0].name] = Package(entries[0].name, tuple(entries))
    asking: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    for pkg in packages.values():
        for e in pkg.entries:
            for dep in e.dependencies:
                versions, ranges = asking.setdefault(dep.name, {}).setdefault(pkg.name, ([], []))
                versions.append(e.version)
                if dep.range not in ranges:
                    ranges.append(dep.range)
    dependents = {
        name: tuple(Dependent(n, tuple(v), tuple(r)) for n, (v, r) in sorted(by.items())) for name, by in asking.items()
    }
    return Catalog(str(config.get("name", "")), dict(sorted(packages.items())), dependents, stamp)


def _stamp(root: Path) -> tuple:
    try:
        s = (root / "packages.json").stat()
        return (s.st_ino, s.st_size, s.st_mtime_ns)
    except OSError:
        return ()


class CatalogCache:
    """The catalog of one folder, read again only when the folder changed."""

    def __init__(self, root: Path):
        self.root = root
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()

    def get(self) -> Catalog:
        with self._lock:
            if self._catalog is None or self._catalog.stamp != _stamp(self.root) or not self._catalog.stamp:
                self._catalog = read_catalog(self.root)
            return self._catalog
