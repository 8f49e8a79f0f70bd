"""`mergepkg cache gc`: remove what no built recipe's lock file references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import MergepkgError
from mergepkg.lockfile import read_lock
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
    or unreadable keeps nothing) and leftovers of killed builds. The roots are read with
    the store held alone, so a build cannot commit and record its root in between."""
    with store.alone():
        keep: set[str] = set()
        roots = []
        for root in store.roots():
            try:
                lock = read_lock(Path(root))
            except MergepkgError:
                lock = None
            if lock is not None:
                roots.append(root)
                keep |= {s.key for s in lock.steps.values()} | {e.key for e in lock.exports.values()}
        gone, leftovers = store.sweep(keep, dry_run=dry_run)
    return Collected(gone, leftovers, roots)
