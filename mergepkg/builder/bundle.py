"""What an output folder carries to be rebuilt from itself: the recipe as written
(`mergepkg.toml`), the recipe files it imports, and its lock (`mergepkg.lock`), so that
`mergepkg build mergepkg.toml --locked` in that folder rebuilds the same bytes.

Imported recipe files (`{ recipe = "...", step = ... }` sources, and theirs in turn)
inside the recipe's folder keep their place relative to it; those outside it go under
`imports/` (keeping their places relative to one another), and the `recipe = "..."`
strings that name them are rewritten on their line. Registry dependencies are not
copied: the rebuild installs the versions the lock records. Model folders are never
copied: hub sources are fetched at their locked commits, and a local source is
expected where the placed recipe files name it (`Bundle.local`, which the card lists).

The lock is the build's, relocated: the same pins, keys and digests; local sources'
paths as the placed files name them (relative to `mergepkg.toml`, or absolute as
written: the folder can move), and the recipe hash of the placed files, without the
record of pushes (so pushing changes no output file).
A recipe that imports nothing from outside its folder keeps its lock as it is.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from mergepkg._toml import tomllib
from mergepkg.lockfile import Lock, lock_text, recipe_hash
from mergepkg.recipe.flatten import SEP
from mergepkg.recipe.locate import key_name, locate
from mergepkg.resolve.resolution import Resolution

RECIPE_FILE = "mergepkg.toml"
LOCK_FILE = "mergepkg.lock"
IMPORTS = "imports"
RESERVED = {RECIPE_FILE, LOCK_FILE, "README.md", "mergekit_config.yml"}


@dataclass(frozen=True)
class Bundle:
    files: dict[str, str]  # recipe files in the output folder (posix paths, mergepkg.toml first) -> text
    lock: Lock  # the lock of those files, placed
    local: dict[str, str]  # local source -> the folder the rebuild expects, relative to mergepkg.toml

    @functools.cached_property
    def lock_text(self) -> str:
        return lock_text(self.lock)


def bundle(res: Resolution, lock: Lock, root: Path) -> Bundle:
    """The recipe files and lock of `res` (built, with `lock`) placed in the output folder
    `root` (its path only: nothing there is read)."""
    main = res.recipe.path
    texts = {s.origin.path: s.origin.text for s in res.recipe.steps.values() if s.origin is not None}
    texts[main] = res.recipe.text
    tables: dict[Path, dict] = {}  # each recipe file -> its [sources] table
    order: list[Path] = []
    todo = [main]
    while todo:
        file = todo.pop(0)
        if file in tables:
            continue
        if file not in texts:  # every imported file has steps (with their origin): not reached
            texts[file] = file.read_text(encoding="utf-8")
        tables[file] = _sources(texts[file])
        order.append(file)
        todo += [target for src in tables[file].values() if (target := _imported(file, src)) is not None]

    placed = _places(main, order)
    files = {}
    for file in order:
        text = texts[file]
        for name, src in tables[file].items():
            target = _imported(file, src)
            if target is None:
                continue
            new = posixpath.relpath(placed[target], posixpath.dirname(placed[file]) or ".")
            if posixpath.normpath(PurePosixPath(Path(src["recipe"]).as_posix()).as_posix()) != new:
                text = _rewrite(text, name, src["recipe"], new)
        files[placed[file]] = text

    def written_in(name: str) -> Path | None:
        """The placed file a (flattened) source is written in; None: one not placed (a dependency's)."""
        file = main
        for part in name.split(SEP)[:-1]:
            target = _imported(file, tables.get(file, {}).get(part))
            if target is None:
                return None
            file = target
        return file

    moved: dict[str, Path] = {}  # local source -> where the rebuild finds it
    for name, src in res.recipe.sources.items():
        if src.path is None:
            continue
        home = written_in(name)
        raw = tables[home].get(name.split(SEP)[-1]) if home is not None and home in placed else None
        written = raw.get("path") if isinstance(raw, dict) else None
        if home is None or not isinstance(written, str):
            moved[name] = src.path  # a dependency's: where it was installed
        else:  # as the placed file writes it (an absolute path stays what it is)
            moved[name] = Path(os.path.normpath(root / posixpath.dirname(placed[home]) / written))
    placed_recipe = replace(
        res.recipe,
        path=root / RECIPE_FILE,
        sources={n: replace(s, path=moved[n]) if n in moved else s for n, s in res.recipe.sources.items()},
    )
    # named as the lock of the placed files names them (an absolute path as written: the
    # folder may move, and its lock still holds)
    local = {n: placed_recipe.sources[n].lock_path(root) or "" for n in moved}  # the card names them so too
    sources = {n: replace(s, path=local[n]) if s.path else s for n, s in lock.sources.items()}
    placed_lock = replace(lock, recipe_hash=recipe_hash(placed_recipe), sources=sources, pushes=())
    return Bundle(files, placed_lock, local)


def _sources(text: str) -> dict:
    """The [sources] table of a recipe's text (parsed before: it is valid TOML)."""
    try:
        sources = tomllib.loads(text).get("sources", {})
    except (tomllib.TOMLDecodeError, RecursionError):
        return {}
    return sources if isinstance(sources, dict) else {}


def _imported(file: Path, src: object) -> Path | None:
    """The recipe file a source of `file` imports, if it is a `recipe` source."""
    if isinstance(src, dict) and isinstance(src.get("recipe"), str):
        return (file.parent / src["recipe"]).resolve()
    return None


def _places(main: Path, order: list[Path]) -> dict[Path, str]:
    """Where each recipe file goes in the output folder (posix paths)."""
    placed = {main: RECIPE_FILE}
    folder = main.parent
    inside = {f for f in order[1:] if f.is_relative_to(folder) and f.suffix == ".toml"}
    outside = [f for f in order[1:] if f not in inside]
    common = Path(os.path.commonpath([f.parent for f in outside])) if outside else folder
    taken = set(RESERVED)
    for i, file in enumerate(order[1:]):
        if file in inside:
            where = file.relative_to(folder).as_posix()
        else:
            where = f"{IMPORTS}/{file.relative_to(common).as_posix()}"
        if where in taken:
            where = f"{IMPORTS}/{i}/{file.name}"
        placed[file] = where
        taken.add(where)
    return placed


def _rewrite(text: str, source: str, old: str, new: str) -> str:
    """`text` with the string `old` of `sources.<source>.recipe` written as `new`. Found on the
    key's line as TOML writes a string (basic or literal); left as it is otherwise."""
    line = locate(text, f"sources.{key_name(source)}.recipe")
    if line is None:
        return text
    lines = text.splitlines(keepends=True)
    for written in (json.dumps(old, ensure_ascii=False), f"'{old}'"):
        if written in lines[line - 1]:
            lines[line - 1] = lines[line - 1].replace(written, json.dumps(new, ensure_ascii=False), 1)
            return "".join(lines)
    return text
