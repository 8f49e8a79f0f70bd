"""`mergepkg verify`: check stored artifacts against the lock, or rebuild from the lock.

Checking re-reads every tensor of every locked step's artifact and recomputes its
digest. An artifact whose tensors no longer match its manifest is discarded, so the
next build rebuilds it instead of reusing it. Rebuilding builds the locked recipe
into an empty temporary store (sources pinned as locked, never re-resolved) and
compares each step's digest with the lock.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from mergepkg.builder.build import build
from mergepkg.engine.progress import Reporter
from mergepkg.errors import LockError, MergepkgError
from mergepkg.io.digest import model_digest
from mergepkg.lockfile import Lock, lock_path, read_lock
from mergepkg.recipe.model import Recipe
from mergepkg.store.session import Session


@dataclass(frozen=True)
class Check:
    step: str
    key: str
    locked: str | None  # digest in the lock
    actual: str | None  # digest found now (None: nothing to check)
    status: str  # "ok", "missing", "corrupt" (discarded), "differs"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(recipe: Recipe, session: Session, *, rebuild: bool = False, reporter: Reporter | None = None) -> list[Check]:
    lock = read_lock(lock_path(recipe))
    if lock is None:
        raise LockError(
            "there is no lock to verify against",
            file=str(lock_path(recipe)),
            hint="run `mergepkg build` or `mergepkg lock` first",
        )
    if rebuild:
        return _rebuild(recipe, session, lock, reporter)
    with session.store.in_use():  # `cache gc` waits: it may not take the locks of what we check
        return _check_store(session, lock)


def _check_store(session: Session, lock: Lock) -> list[Check]:
    checks = []
    for name, step in sorted(lock.steps.items()):
        art = session.store.get(step.key)
        if art is None:
            checks.append(Check(name, step.key, step.digest, None, "missing"))
            continue
        try:
            actual = model_digest(art.folder)
        except (OSError, ValueError, MergepkgError) as e:  # truncated file, broken header
            actual = f"unreadable: {e}"
        if actual != art.digest:
            with session.store.lock(step.key):
                session.store.discard(step.key)
            checks.append(Check(name, step.key, step.digest, actual, "corrupt"))
        elif step.digest is not None and actual != step.digest:
            checks.append(Check(name, step.key, step.digest, actual, "differs"))
        else:
            checks.append(Check(name, step.key, step.digest, actual, "ok"))
    return checks


def _rebuild(recipe: Recipe, session: Session, lock: Lock, reporter: Reporter | None) -> list[Check]:
    home = Path(tempfile.mkdtemp(prefix="mergepkg-verify-"))
    try:
        scratch = Session(replace(session.settings, home=home))
        report = build(recipe, scratch, mode="frozen", reporter=reporter, check_digests=False)
        checks = []
        for name, step in sorted(lock.steps.items()):
            actual = report.artifacts[name].digest
            status = "ok" if step.digest in (None, actual) else "differs"
            checks.append(Check(name, step.key, step.digest, actual, status))
        return checks
    finally:
        shutil.rmtree(home, ignore_errors=True)
