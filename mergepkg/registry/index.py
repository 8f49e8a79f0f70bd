"""The registry index format: a static layout a folder, a web server or a git checkout holds.

```
config.json                  {"format": 1, "name": "..."}
packages.json                {"packages": {name: {"description", "tags", "latest"}}}: what `search` reads
index/<name>.jsonl           one JSON entry per published version, oldest first
index/<team>/<name>.jsonl    (namespaced names)
recipes/<name>/<version>.toml  the recipe files, byte for byte as published
```

Names are lowercase `[a-z0-9][a-z0-9_-]{0,63}`, optionally `team/name`; `-` and `_`
name the same package, and files use the canonical spelling (`_` written as `-`):
`mergepkg/recipe/names.py`.
An entry is immutable once published except for its `yanked` flag. docs/registry.md
specifies every field.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, field, replace

from mergepkg._toml import tomllib
from mergepkg.errors import RegistryError
from mergepkg.recipe.model import Dependency
from mergepkg.recipe.names import canonical_name, check_version
from mergepkg.recipe.versions import Version

FORMAT = 1
MAX_RECIPE_BYTES = 1_000_000  # a recipe is a few KB; anything near this is not one
LOCAL_KINDS = ("path", "recipe")  # sources that name files on the machine that reads the recipe


def local_sources(text: str) -> dict[str, str]:
    """The sources of a recipe's TOML text that name files on the machine reading it (a
    `path` or `recipe` source), name -> kind, in the file's order. A published recipe has
    none: publishing refuses them (the publisher's files exist nowhere else) and installing
    does too (a registry's file must not make a consumer's build read the consumer's own
    files). Read from the TOML alone, before the parser looks for those files. Text that is
    no TOML has none here: the parser says what is wrong with it."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return {}
    sources = data.get("sources")
    if not isinstance(sources, dict):
        return {}
    return {
        n: next(k for k in LOCAL_KINDS if k in s)
        for n, s in sources.items()
        if isinstance(s, dict) and any(k in s for k in LOCAL_KINDS)
    }


def index_path(name: str) -> str:
    return f"index/{canonical_name(name)}.jsonl"


def recipe_path(name: str, version: str) -> str:
    return f"recipes/{canonical_name(name)}/{check_version(version)}.toml"


def published_lock_path(name: str, version: str) -> str:
    """The publisher's lock, beside the recipe file: its pins, keys and digests."""
    return f"recipes/{canonical_name(name)}/{check_version(version)}.lock"


@dataclass(frozen=True)
class Entry:
    """One published version of one package."""

    name: str  # canonical
    version: str
    sha256: str  # of the recipe file's bytes
    dependencies: tuple[Dependency, ...] = ()  # as the recipe file declares them
    sources: dict[str, str] = field(default_factory=dict)  # source name -> "org/name@commit-or-revision"
    description: str = ""
    tags: tuple[str, ...] = ()
    yanked: bool = False
    published: str = ""  # UTC, ISO 8601
    remote: str = ""  # `[package] remote`: where the built steps are (docs/remote.md); "" when none
    lock: str = ""  # sha256 of the publisher's lock (`recipes/<name>/<version>.lock`); "" when none was published

    @functools.cached_property
    def semver(self) -> Version:
        return Version.parse(self.version)

    def to_json(self) -> str:
        data = asdict(self)
        for optional in ("remote", "lock"):  # written only when set: older entries stay byte for byte
            if not data[optional]:
                del data[optional]
        data["tags"] = list(self.tags)
        data["dependencies"] = {
            d.name: {k: v for k, v in (("range", d.range), ("registry", d.registry)) if v}
            for d in sorted(self.dependencies, key=lambda d: d.name)
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str) -> Entry:
        try:
            data = json.loads(text)
            deps = tuple(
                Dependency(canonical_name(n), d["range"], d.get("registry"))
                for n, d in data.get("dependencies", {}).items()
            )
            entry = cls(
                canonical_name(data["name"]),
                str(check_version(data["version"])),
                data["sha256"],
                deps,
                dict(data.get("sources", {})),
                data.get("description", ""),
                tuple(data.get("tags", ())),
                bool(data.get("yanked", False)),
                data.get("published", ""),
                str(data.get("remote", "")),
                str(data.get("lock", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise RegistryError(
                f"malformed index entry: {e}", file=where, hint="the registry's index is damaged; tell its maintainer"
            ) from None
        if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise RegistryError(f"malformed index entry: sha256 {entry.sha256!r}", file=where)
        if entry.lock and not re.fullmatch(r"[0-9a-f]{64}", entry.lock):
            raise RegistryError(f"malformed index entry: lock {entry.lock!r}", file=where)
        return entry


def read_index(text: str, where: str) -> list[Entry]:
    return [Entry.from_json(line, where) for line in text.splitlines() if line.strip()]


def write_index(entries: list[Entry]) -> str:
    return "".join(e.to_json() + "\n" for e in entries)


def with_yanked(entries: list[Entry], version: str, yanked: bool) -> list[Entry]:
    return [replace(e, yanked=yanked) if e.version == version else e for e in entries]


def latest_of(entries: list[Entry]) -> Entry:
    """The version a package's summary and page show: what `install NAME` picks (the newest
    non-yanked release), else the newest non-yanked pre-release, else the newest. A
    pre-release is never the latest while a release could be installed instead."""
    live = [e for e in entries if not e.yanked] or entries
    releases = [e for e in live if not e.semver.pre] or live
    return max(releases, key=lambda e: e.semver)


def summary(entries: list[Entry]) -> dict:
    """A package's line in packages.json: from its `latest` version."""
    latest = latest_of(entries)
    return {
        "description": latest.description,
        "tags": list(latest.tags),
        "latest": latest.version,
        "yanked": not any(not e.yanked for e in entries),
    }
