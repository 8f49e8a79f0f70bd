"""`mergepkg verify`: check stored artifacts against the lock, or rebuild from the lock.

Checking re-reads every tensor of every locked step's artifact and recomputes its
digest. An artifact whose tensors no longer match its manifest is discarded, so the
next build rebuilds it instead of reusing it. A locked step the store lacks is pulled
from the remotes (configured, or the recipe's `[package] remote`; unless `remote` is
"never"), checked file by file and by digest against the lock as a build's pull is, and
kept (`remote` names where from); a remote's copy that fails those checks is `refused`
and never stored. Rebuilding builds the locked recipe into an empty temporary store
(sources pinned as locked, never re-resolved, no remote asked) and compares each step's
digest with the lock.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from mergepkg.builder.build import build
from mergepkg.builder.substitute import Policy, Remotes
from mergepkg.engine.progress import NullReporter, Reporter
from mergepkg.errors import LockError, MergepkgError
from mergepkg.io.digest import model_digest
from mergepkg.lockfile import Lock, lock_path, read_lock
from mergepkg.recipe.model import Recipe
from mergepkg.remote.errors import RemoteError
from mergepkg.store.session import Session


@dataclass(frozen=True)
class Check:
    step: str
    key: str
    locked: str | None  # digest in the lock
    actual: str | None  # digest found now (None: nothing to check)
    status: str  # "ok", "missing", "corrupt" (discarded), "differs", "refused" (a remote's copy failed its checks)
    remote: str | None = None  # the remote it was pulled from ("ok") or refused from ("refused")
    note: str | None = None  # why a remote's copy was refused

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(
    recipe: Recipe,
    session: Session,
    *,
    rebuild: bool = False,
    reporter: Reporter | None = None,
    remote: Policy = "auto",
) -> list[Check]:
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
        pulled = _pull_missing(recipe, session, lock, reporter or NullReporter()) if remote != "never" else {}
        return _check_store(session, lock, pulled)


def _pull_missing(recipe: Recipe, session: Session, lock: Lock, reporter: Reporter) -> dict[str, Check]:
    """The locked steps the store lacks, pulled from the remotes that have them: each an
    "ok" check (the pull checked the lock's digest), or "refused" with why."""
    lacking = {n: s for n, s in lock.steps.items() if s.digest is not None and session.store.get(s.key) is None}
    if not lacking:
        return {}
    remotes = Remotes.for_recipe(session.settings, recipe, reporter.warning)
    offers = remotes.look_up({s.key: s.digest for s in lacking.values()})
    checks = {}
    for name, step in sorted(lacking.items()):
        offer = offers.get(step.key)
        try:
            if offer is None:
                if (refused := remotes.refused.get(step.key)) is not None:
                    raise refused
                continue
            reporter.pull_started(name, offer.remote, offer.size)
            art = remotes.pull(session.store, step.key, offer, step.digest, lambda f, d, t: reporter.pull_progress(d))
            reporter.step_pulled(name, step.key, offer.remote)
            checks[name] = Check(name, step.key, step.digest, art.digest, "ok", offer.remote)
        except RemoteError as e:
            where = offer.remote if offer else None
            checks[name] = Check(name, step.key, step.digest, None, "refused", where, f"{e.where}: {e.message}")
    return checks


def _check_store(session: Session, lock: Lock, pulled: dict[str, Check]) -> list[Check]:
    checks = []
    for name, step in sorted(lock.steps.items()):
        if name in pulled:
            checks.append(pulled[name])  # checked as it was pulled: every file and the digest
            continue
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
        report = build(
            recipe, scratch, mode="frozen", reporter=reporter, check_digests=False, remote="never", all_steps=True
        )
        checks = []
        for name, step in sorted(lock.steps.items()):
            actual = report.artifacts[name].digest
            status = "ok" if step.digest in (None, actual) else "differs"
            checks.append(Check(name, step.key, step.digest, actual, status))
        return checks
    finally:
        shutil.rmtree(home, ignore_errors=True)
