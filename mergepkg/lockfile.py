"""The lock file: what a recipe resolved to, so anyone can rebuild the same bytes.

It sits beside its recipe, named after it: `mergepkg.toml` -> `mergepkg.lock`,
`example.toml` -> `example.lock` (so several recipes can share a folder); a recipe not
named `*.toml` gets `.lock` added, `soup.v1` -> `soup.v1.lock` (`files.lock_file_of`).

TOML, written by mergepkg in a stable order: a format version, a hash of the recipe
content it was made from, every source with its requested revision, resolved commit
and each used file's size and sha256, every step with its key and output digest, and
every export (`[exports.NAME]`: the step, format, type, converter, key and the file's
sha256) likewise; then, once `mergepkg push` has sent an output to the Hub, where it went (`[[push]]`:
repo, commit, step, key, digest; builder/push.py). Pushes are in no hash and no output
folder's lock, and a lock without them reads as before.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from mergepkg._toml import tomllib
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import MergepkgError, RecipeError
from mergepkg.files import lock_file_of, write_atomic
from mergepkg.recipe.flatten import SEP
from mergepkg.recipe.model import Condition, Recipe
from mergepkg.recipe.names import canonical_name, check_version
from mergepkg.recipe.plan import ancestors

LOCK_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Pin:
    """What a source resolved to: enough to fetch the same bytes again and check them."""

    commit: str | None  # hub sources
    files: tuple[FileRecord, ...]  # every file a merge uses, sorted by name

    @property
    def ref(self) -> str:
        """The source's identity in step keys: content (and commit), never name or path."""
        body = {"commit": self.commit, "files": [[f.name, f.size, f.sha256] for f in self.files]}
        return "sha256:" + sha256_hex(canonical_json(body))


@dataclass(frozen=True)
class LockedDependency:
    """A registry recipe picked for `[dependencies]`: what the lock records of it."""

    name: str
    version: str
    registry: str  # the registry's URL (a folder path or http(s) base URL)
    sha256: str  # of the recipe file


@dataclass(frozen=True)
class LockedSource:
    name: str
    hf: str | None
    revision: str | None
    path: str | None  # as the recipe writes it: absolute, or relative to the recipe file (`Source.lock_path`)
    pin: Pin

    def same_request(self, other: LockedSource) -> bool:
        """Asks for the same thing (a moved branch is still the same request)."""
        return (self.hf, self.revision, self.path) == (other.hf, other.revision, other.path)


@dataclass(frozen=True)
class LockedStep:
    name: str
    method: str
    key: str
    digest: str | None  # None until built


@dataclass(frozen=True)
class LockedExport:
    """A step converted to another format (mergepkg/export/): its key and the file's sha256."""

    name: str
    step: str
    format: str
    type: str
    converter: str  # the converter's identity (export/gguf.py): version and sha256 of its code
    key: str
    digest: str | None  # "sha256:<hex>" of the file; None until built


@dataclass(frozen=True)
class LockedPush:
    """An output sent to a Hub repo by `mergepkg push`: the commit that holds it."""

    repo: str
    commit: str
    step: str
    key: str
    digest: str


@dataclass(frozen=True)
class Lock:
    recipe_hash: str
    sources: dict[str, LockedSource]
    steps: dict[str, LockedStep]
    version: int = LOCK_VERSION
    dependencies: dict[str, LockedDependency] = field(default_factory=dict)
    pushes: tuple[LockedPush, ...] = ()  # by repo, then step: the latest push of each
    exports: dict[str, LockedExport] = field(default_factory=dict)
    # the seed of random methods where a build was given one (`--seed`) in place of the recipe's:
    # its keys were made with it, and `--locked` builds with it again
    seed: int | None = None


def locked_digests(lock: Lock | None) -> dict[str, str]:
    """The digest the lock records for each step key: looked up by key, not by step name,
    since a step renamed keeps its key (names are in no key)."""
    if lock is None:
        return {}
    return {s.key: s.digest for s in lock.steps.values() if s.digest is not None}


def lock_path(recipe: Recipe) -> Path:
    return lock_file_of(recipe.path)


def _plain(value):
    if isinstance(value, Condition):
        return {"filter": value.filter, "value": _plain(value.value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _imported_unused(recipe: Recipe) -> set[str]:
    """The sources and steps of imported recipe files and dependencies (`name::…`,
    recipe/flatten.py) that none of the recipe's own steps reads, directly or not: flatten
    joins every entry of an imported file, and editing one no step here reads changes no
    build, so it is in no hash. (Outputs and exports name own steps only; a step's
    tokenizer, tokens and adapter name models it reads.)"""
    names = recipe.sources.keys() | recipe.steps.keys()
    own = [n for n in recipe.steps if SEP not in n]
    used = set(own).union(*(ancestors(recipe, n) for n in own))
    return {n for n in names if SEP in n} - used


def recipe_hash(recipe: Recipe) -> str:
    """A hash of what the recipe says (not how it is written: comments, key order and
    number spelling do not count), local paths as the lock names them (`Source.lock_path`).
    What imported recipe files say that no step here reads counts neither: an unused
    entry of a shared file edited leaves the locks of the recipes importing it current."""
    root = recipe.path.parent
    unused = _imported_unused(recipe)
    body = {
        "package": [recipe.name, recipe.version, sorted(recipe.outputs), recipe.seed],
        "sources": {
            n: [s.hf, s.revision if s.hf else None, s.lock_path(root)]
            for n, s in recipe.sources.items()
            if n not in unused
        },
        "steps": {
            n: [
                s.method,
                s.base,
                [[i.model, _plain(dict(i.params))] for i in s.inputs],
                [
                    [[[x.model, list(x.layers), _plain(dict(x.params))] for x in sl.sources], _plain(dict(sl.params))]
                    for sl in s.slices
                ],
                _plain(dict(s.params)),
                s.dtype,
                s.out_dtype,
                s.tokenizer,
            ]
            + ([sorted([t.token, t.model, t.from_token, t.from_id, t.force] for t in s.tokens)] if s.tokens else [])
            + ([s.pad_to_multiple_of] if s.pad_to_multiple_of else [])
            + ([asdict(s.moe)] if s.moe else [])  # only on moe steps: other hashes stay
            + ([{"chat_template": s.chat_template}] if s.chat_template is not None else [])  # likewise
            + ([{"config": s.config}] if s.config is not None else [])  # likewise
            for n, s in recipe.steps.items()
            if n not in unused
        },
    }
    if recipe.dependencies:  # only then, so that locks of recipes without any keep their hash
        body["dependencies"] = {n: [d.range, d.registry] for n, d in recipe.dependencies.items()}
    if recipe.exports:  # likewise
        body["exports"] = {n: [e.step, e.format, e.type] for n, e in recipe.exports.items()}
    return "sha256:" + sha256_hex(canonical_json(body))


def read_lock(path: Path) -> Lock | None:
    try:
        return parse_lock(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the lock: {e}", file=path, hint="delete it and run `mergepkg lock`") from None


def parse_lock(text: str, path: Path | str) -> Lock:
    """A lock from its text (`path` names it in errors: a file, or an uploaded lock)."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise RecipeError(f"cannot read the lock: {e}", file=path, hint="delete it and run `mergepkg lock`") from None
    if "version" not in data:
        raise RecipeError(
            "not a mergepkg lock: it has no `version`", file=path, hint="delete it and run `mergepkg lock`"
        )
    if data.get("version") != LOCK_VERSION:
        newer = isinstance(data["version"], int) and data["version"] > LOCK_VERSION
        raise RecipeError(
            f"lock format {data['version']!r} is not {LOCK_VERSION}",
            file=path,
            # `mergepkg lock` reads the lock it refreshes, so it cannot be the way out
            hint="a newer mergepkg wrote it: upgrade mergepkg" if newer else "delete it and run `mergepkg lock`",
        )
    try:
        sources = {s["name"]: _locked_source(s) for s in _records(data, "source")}
        steps = {s["name"]: _locked_step(s) for s in _records(data, "step")}
        deps = {d["name"]: _locked_dependency(d, path) for d in _records(data, "dependency")}
        exports = {e["name"]: _locked_export(e) for e in _records(data, "export")}
        if not isinstance(data["recipe"], str):
            raise TypeError("recipe is not a hash")
        pushes = _pushes(data.get("push", []))
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError("seed is not an integer")
        return Lock(data["recipe"], sources, steps, dependencies=deps, pushes=pushes, exports=exports, seed=seed)
    except MergepkgError:  # located already (a dependency record)
        raise
    except KeyError as e:
        raise RecipeError(f"malformed lock: missing {e}", file=path, hint="delete it and run `mergepkg lock`") from None
    except (TypeError, ValueError) as e:
        raise RecipeError(f"malformed lock: {e}", file=path, hint="delete it and run `mergepkg lock`") from None


HEX64 = re.compile(r"[0-9a-f]{64}")


def _records(data: dict, kind: str) -> list[dict]:
    records = data.get(kind, [])
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("name"), str) for r in records
    ):
        raise TypeError(f"[[{kind}]] entries must be tables with a name")
    return records


def _locked_source(s: dict) -> LockedSource:
    files = []
    if not isinstance(s["files"], list):
        raise TypeError(f"source {s['name']!r}: files is not a list of file records")
    for f in s["files"]:
        if not (
            isinstance(f, dict)
            and isinstance(f.get("name"), str)
            and type(f.get("size")) is int
            and f["size"] >= 0
            and isinstance(f.get("sha256"), str)
            and HEX64.fullmatch(f["sha256"])
        ):
            raise TypeError(f"source {s['name']!r}: a file record {f!r} is not a name, a size and a sha256")
        files.append(FileRecord(f["name"], f["size"], f["sha256"]))
    for field_ in ("hf", "revision", "path", "commit"):
        if s.get(field_) is not None and not isinstance(s[field_], str):
            raise TypeError(f"source {s['name']!r}: {field_} is not a string")
    return LockedSource(s["name"], s.get("hf"), s.get("revision"), s.get("path"), Pin(s.get("commit"), tuple(files)))


def _locked_step(s: dict) -> LockedStep:
    key, digest = _key_and_digest(s, "step")
    if not isinstance(s["method"], str):
        raise TypeError(f"step {s['name']!r}: method {s['method']!r} is not a method name")
    return LockedStep(s["name"], s["method"], key, digest)


def _locked_export(e: dict) -> LockedExport:
    key, digest = _key_and_digest(e, "export")
    fields = ("step", "format", "type", "converter")
    if not all(isinstance(e[f], str) for f in fields):
        raise TypeError(f"export {e['name']!r}: {', '.join(fields)} must be strings")
    return LockedExport(e["name"], e["step"], e["format"], e["type"], e["converter"], key, digest)


def _key_and_digest(record: dict, kind: str) -> tuple[str, str | None]:
    key, digest = record["key"], record.get("digest")
    if not (isinstance(key, str) and HEX64.fullmatch(key)):
        raise TypeError(f"{kind} {record['name']!r}: key {key!r} is not a {kind} key")
    if digest is not None and not (
        isinstance(digest, str) and digest.startswith("sha256:") and HEX64.fullmatch(digest[7:])
    ):
        raise TypeError(f"{kind} {record['name']!r}: digest {digest!r} is not a digest")
    return key, digest


def _pushes(records: object) -> tuple[LockedPush, ...]:
    fields = ("repo", "commit", "step", "key", "digest")
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and all(isinstance(r.get(f), str) for f in fields) for r in records
    ):
        raise TypeError("[[push]] entries must be tables with repo, commit, step, key and digest")
    return tuple(LockedPush(*(r[f] for f in fields)) for r in records)


def _locked_dependency(d: dict, path: Path | str) -> LockedDependency:
    try:
        ok = (
            canonical_name(d["name"]) == d["name"]
            and str(check_version(d["version"])) == d["version"]
            and isinstance(d["registry"], str)
            and isinstance(d["sha256"], str)
            and HEX64.fullmatch(d["sha256"])
        )
    except (MergepkgError, TypeError):
        ok = False
    if not ok:
        raise RecipeError(
            f"malformed lock: dependency {d.get('name')!r} {d.get('version')!r}",
            file=path,
            key="dependency",
            hint="delete it and run `mergepkg lock`",
        )
    return LockedDependency(d["name"], d["version"], d["registry"], d["sha256"])


def write_lock(path: Path, lock: Lock) -> None:
    """Write atomically (temp file + rename)."""
    write_atomic(path, lock_text(lock))


def lock_text(lock: Lock) -> str:
    """The lock file's text: TOML, sources and steps sorted by name."""
    doc = {
        "version": lock.version,
        "recipe": lock.recipe_hash,
        "seed": lock.seed,
        "dependency": [
            {"name": d.name, "version": d.version, "registry": d.registry, "sha256": d.sha256}
            for d in sorted(lock.dependencies.values(), key=lambda d: d.name)
        ],
        "source": [
            {
                k: v
                for k, v in {
                    "name": s.name,
                    "hf": s.hf,
                    "revision": s.revision,
                    "path": s.path,
                    "commit": s.pin.commit,
                    "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in s.pin.files],
                }.items()
                if v is not None
            }
            for s in sorted(lock.sources.values(), key=lambda s: s.name)
        ],
        "step": [
            {
                k: v
                for k, v in {"name": s.name, "method": s.method, "key": s.key, "digest": s.digest}.items()
                if v is not None
            }
            for s in sorted(lock.steps.values(), key=lambda s: s.name)
        ],
    }
    if lock.seed is None:
        del doc["seed"]
    if not doc["dependency"]:
        del doc["dependency"]
    if lock.exports:
        doc["export"] = [
            {k: v for k, v in asdict(e).items() if v is not None}
            for e in sorted(lock.exports.values(), key=lambda e: e.name)
        ]
    if lock.pushes:
        doc["push"] = [asdict(p) for p in sorted(lock.pushes, key=lambda p: (p.repo, p.step))]
    return "# Written by mergepkg. Do not edit: run `mergepkg lock` to refresh it.\n" + tomli_w.dumps(doc)


def differences(old: Lock | None, new: Lock) -> list[str]:
    """What changed between a lock on disk and the one the recipe resolves to now."""
    if old is None:
        return ["there is no lock file"]
    out = _compare("dependency", old.dependencies, new.dependencies, _dependency_change)
    out += _compare("source", old.sources, new.sources, _source_change)
    out += _compare("step", old.steps, new.steps, _step_change)
    out += _compare("export", old.exports, new.exports, _step_change)
    if old.seed != new.seed:
        now, locked = ("the recipe's" if s is None else str(s) for s in (new.seed, old.seed))
        out.append(f"the seed is {now} (locked: {locked})")
    if not out and old.recipe_hash != new.recipe_hash:
        out.append("the recipe changed")
    return out


def _compare(kind: str, old: dict, new: dict, change) -> list[str]:
    """Added, removed and changed entries of one kind, by name; `change(a, b)` says how, or None."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        text = "was added" if a is None else "was removed" if b is None else change(a, b)
        if text:
            out.append(f"{kind} {name!r} {text}")
    return out


def _dependency_change(a: LockedDependency, b: LockedDependency) -> str | None:
    if a.version != b.version:
        return f"resolves to {b.version} (locked: {a.version})"
    return None if a == b else f"{a.version} has different content or registry than locked"


def _source_change(a: LockedSource, b: LockedSource) -> str | None:
    if not a.same_request(b):
        return f"now asks for {b.hf or b.path}@{b.revision or '-'} (locked: {a.hf or a.path}@{a.revision or '-'})"
    if a.pin != b.pin:
        old, new = a.pin.commit, b.pin.commit  # None in a hand-edited lock: no commits to show
        return "has different content than locked" + (
            f" (commit {old[:12]} -> {new[:12]})" if old is not None and new is not None and old != new else ""
        )
    return None


def _step_change(a: LockedStep | LockedExport, b: LockedStep | LockedExport) -> str | None:
    return f"changed (key {a.key[:12]} -> {b.key[:12]})" if a.key != b.key else None
