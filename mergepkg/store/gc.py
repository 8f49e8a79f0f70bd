"""`mergepkg cache gc`: remove what no built recipe's lock file references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import MergepkgError, StoreError
from mergepkg.lockfile import Lock, read_lock
from mergepkg.store.local import Artifact, Store


@dataclass(frozen=True)
class Collected:
    artifacts: list[Artifact]  # removed (or, in a dry run, that would be)
    leftovers: list[Path]  # temp folders of killed builds, likewise
    roots: list[str]  # the lock files whose steps were kept

    @property
    def size(self) -> int:
        return sum(a.size for a in self.artifacts)


def collect_garbage(store: Store, *, dry_run: bool = False) -> Collected:
    """Remove every artifact no remembered lock file references (a lock file that is gone
    keeps nothing) and leftovers of killed builds. A lock that is there but cannot be read
    stops gc before anything is removed (`read_root`). The roots are read with the store
    held alone, so a build cannot commit and record its root in between."""
    with store.alone():
        keep: set[str] = set()
        roots = []
        for root in store.roots():
            lock = read_root(store, Path(root))
            if lock is not None:
                roots.append(root)
                keep |= {s.key for s in lock.steps.values()} | {e.key for e in lock.exports.values()}
        gone, leftovers = store.sweep(keep, dry_run=dry_run)
    return Collected(gone, leftovers, roots)


def read_root(store: Store, lock_file: Path) -> Lock | None:
    """The lock at `lock_file`, a root of `store`; None only where it is gone (its recipe
    deleted or moved: nothing keeps its steps). A lock that is there but cannot be read (one
    a newer mergepkg wrote, one with merge-conflict markers, unreadable) is an error: read
    as gone, gc removed every step it pins, a build's or a pull's, and named no lock."""
    try:
        return read_lock(lock_file)
    except MergepkgError as e:
        raise StoreError(
            f"{e.message} (gc keeps what this lock pins, so it removes nothing until it can read it)",
            file=e.file or lock_file,
            line=e.line,
            hint=f"{e.hint or 'fix it'}; or, if what it pins may go, delete it or remove it from"
            f" {store.home / 'roots.json'}",
        ) from e
