"""`mergepkg lock`: resolve a recipe and write its lock file, building nothing.

A step's digest is kept when its artifact is stored, or when the old lock has it for
the same key (under any name: a step renamed keeps it); otherwise the step is locked
without one until it is built. Exports are keyed with llama.cpp's converter where one
is set (MERGEPKG_LLAMA_CPP), else with the converter the lock names; only an export the
lock has never keyed needs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import ExportError
from mergepkg.export.gguf import SETUP_HINT
from mergepkg.lockfile import Lock, differences, lock_path, locked_digests, read_lock, write_lock
from mergepkg.recipe.model import Recipe
from mergepkg.registry.pick import ALL
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session


@dataclass(frozen=True)
class Locked:
    path: Path  # the lock file
    lock: Lock
    changes: list[str]  # what changed against the lock file there was ("new lock" for none)


def lock_recipe(recipe: Recipe, session: Session, *, upgrade: frozenset[str] | None = None) -> Locked:
    """Write or refresh `recipe`'s lock. `upgrade`: sources and dependencies to move to
    their newest commits and versions (empty: all of them); None holds what is locked."""
    path = lock_path(recipe)
    old = read_lock(path)
    res = resolve(
        recipe,
        session,
        lock=old,
        upgrade=frozenset() if upgrade is None else (upgrade or frozenset([ALL])),
        exports="current",  # llama.cpp's converter where one is set, else the lock's
    )
    if unkeyed := [n for n in res.recipe.exports if n not in res.exports]:
        raise res.recipe.locate(
            ExportError(
                f"export {unkeyed[0]!r} is not in the lock, and keying it needs llama.cpp's converter: none is set",
                hint=SETUP_HINT,
            ),
            f"exports.{unkeyed[0]}",
        )
    held = locked_digests(old)
    digests = {}
    for name, key in res.keys.items():
        art = session.store.get(key)
        digests[name] = art.digest if art else held.get(key)
    new = res.lock(digests)
    changes = differences(old, new) if old else ["new lock"]
    if new != old and not changes:  # a digest built since, a method name edited by hand: no key moved
        changes = ["rewritten: no pin moved, recorded fields brought up to date"]
    if new != old:
        write_lock(path, new)
    session.store.add_root(path)
    return Locked(path, new, changes)
