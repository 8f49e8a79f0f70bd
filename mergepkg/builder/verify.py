"""`mergepkg verify`: check stored artifacts against the lock, or rebuild from the lock.

Checking re-reads every tensor of every locked step's artifact and recomputes its
digest. An artifact whose tensors no longer match its manifest is discarded, so the
next build rebuilds it instead of reusing it. A locked step the store lacks is pulled
from the remotes (configured, or the recipe's `[package] remote`; unless `remote` is
"never"), checked file by file and by digest against the lock as a build's pull is, and
kept (`remote` names where from); a remote's copy that fails those checks is `refused`
and never stored. Rebuilding builds the locked recipe into an empty temporary store
(sources pinned as locked, never re-resolved, no remote asked; the registry packages
installed for the lock read where they are) and compares each step's digest with the lock.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from mergepkg.builder.build import build
from mergepkg.builder.substitute import Offer, Policy, Remotes, reason
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
    # "ok", "missing", "corrupt" (discarded), "unreadable" (no permission: kept), "differs",
    # "refused" (a remote's copy failed its checks)
    status: str
    remote: str | None = None  # the remote it was pulled from ("ok") or refused from ("refused")
    note: str | None = None  # why: a remote's copy was refused, the artifact is corrupt or unreadable

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
        if offer is None:
            if (refused := remotes.refused.get(step.key)) is not None:
                checks[name] = Check(
                    name, step.key, step.digest, None, "refused", refused.remote, reason(refused.error)
                )
            continue
        assert step.digest is not None  # only pinned steps are lacking
        checks[name] = _pull_one(name, step.key, step.digest, offer, remotes, session, reporter)
    return checks


def _pull_one(
    name: str, key: str, digest: str, offer: Offer, remotes: Remotes, session: Session, reporter: Reporter
) -> Check:
    """Pull one locked step from `offer`'s remote, or the next that gives it
    (`Remotes.pull_any`, as a build does): "ok" from where it came, or "refused" with the
    first failure, from `offer`'s remote."""
    try:
        art, source = remotes.pull_any(session.store, name, key, offer, digest, reporter)
    except RemoteError as e:  # an OSError of this machine's disk is no remote's refusal: raised
        return Check(name, key, digest, None, "refused", offer.remote, reason(e))
    return Check(name, key, digest, art.digest, "ok", source.remote)


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
        if not art.intact():  # a file gone or changed since the build (a config, a tokenizer): build refuses it too
            with session.store.lock(step.key):
                session.store.discard(step.key)
            checks.append(Check(name, step.key, step.digest, None, "corrupt", note="a file changed since the build"))
            continue
        try:
            actual = model_digest(art.folder)
        except PermissionError as e:  # the bytes may be fine: said, not discarded
            checks.append(Check(name, step.key, step.digest, None, "unreadable", note=f"{e.strerror}: {e.filename}"))
            continue
        except (OSError, ValueError, MergepkgError) as e:  # truncated file, broken header
            with session.store.lock(step.key):
                session.store.discard(step.key)
            checks.append(Check(name, step.key, step.digest, None, "corrupt", note=str(e)))
            continue
        if actual != art.digest:
            with session.store.lock(step.key):
                session.store.discard(step.key)
            checks.append(Check(name, step.key, step.digest, actual, "corrupt"))
        elif step.digest is not None and actual != step.digest:
            checks.append(Check(name, step.key, step.digest, actual, "differs"))
        else:
            checks.append(Check(name, step.key, step.digest, actual, "ok"))
    return checks


def _scratch(session: Session, home: Path) -> Session:
    """A session that stores what it builds, and hashes every source file afresh, under the
    empty `home`, but reads the user's installed packages and registries
    (`$MERGEPKG_HOME/packages/`, `registries.toml`): a frozen build only reads them, and a
    recipe with `[dependencies]` cannot be rebuilt without them."""
    return Session(session.settings, home=home)


def _rebuild(recipe: Recipe, session: Session, lock: Lock, reporter: Reporter | None) -> list[Check]:
    """Rebuild into a scratch home inside this home's `tmp/`, under a lock of its name: a
    build or `cache gc` meanwhile leaves it alone, and the next one removes it if this
    process was killed (in the system's temp folder, often RAM, it stayed for good)."""
    name = f"verify-{secrets.token_hex(6)}"
    with session.store.lock(name):
        home = session.store.new_folder(name)
        return _rebuild_in(home, recipe, session, lock, reporter)


def _rebuild_in(home: Path, recipe: Recipe, session: Session, lock: Lock, reporter: Reporter | None) -> list[Check]:
    try:
        scratch = _scratch(session, home)
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
