"""store/gc.py: `cache gc` keeps what every remembered lock pins; a lock that is there
but cannot be read stops it before anything is removed, a lock that is gone keeps nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from remotes import make_artifact

from mergepkg.cli.app import main
from mergepkg.errors import StoreError
from mergepkg.lockfile import Lock, LockedStep, write_lock
from mergepkg.store.gc import collect_garbage
from mergepkg.store.session import Session

UNREADABLE = {
    "newer": lambda text: text.replace("version = 1", "version = 2"),  # as a later mergepkg would write it
    "conflict": lambda text: f"<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> theirs\n",  # a merge left undone
}


def locked(tmp_path: Path, session: Session) -> tuple[Path, list[str]]:
    """A lock beside a recipe (`r.lock`) pinning two stored artifacts, remembered as a build
    remembers its lock; and the keys of those two and of one no lock pins."""
    kept = [make_artifact(session.store, seed, rows=4, shards=1) for seed in (1, 2)]
    other = make_artifact(session.store, 3, rows=4, shards=1)
    lock_file = tmp_path / "r.lock"
    steps = {f"s{i}": LockedStep(f"s{i}", "test", a.key, a.digest) for i, a in enumerate(kept)}
    write_lock(lock_file, Lock("sha256:" + "0" * 64, {}, steps))
    session.store.add_root(lock_file)
    return lock_file, [a.key for a in kept] + [other.key]


@pytest.mark.parametrize("damage", sorted(UNREADABLE))
def test_a_lock_gc_cannot_read_stops_it_before_anything_is_removed(tmp_path, damage):
    """Read as no lock, a lock a newer mergepkg wrote (or one with conflict markers) made gc
    remove every step it pins, saying only `kept what 0 lockfiles reference`."""
    session = Session()
    lock_file, keys = locked(tmp_path, session)
    lock_file.write_text(UNREADABLE[damage](lock_file.read_text()))
    for dry_run in (True, False):
        with pytest.raises(StoreError, match="gc keeps what this lock pins, so it removes nothing") as e:
            collect_garbage(session.store, dry_run=dry_run)
        assert e.value.file == str(lock_file)
        assert "delete it or remove it from" in (e.value.hint or "") and "roots.json" in (e.value.hint or "")
    assert sorted(a.key for a in session.store.all()) == sorted(keys)  # the unpinned one too: nothing removed
    if damage == "newer":
        assert "upgrade mergepkg" in (e.value.hint or "")


def test_gc_names_the_unreadable_lock_on_the_command_line(tmp_path, capsys):
    session = Session()
    lock_file, _ = locked(tmp_path, session)
    lock_file.write_text(UNREADABLE["newer"](lock_file.read_text()))
    assert main(["cache", "gc"]) == 1
    err = capsys.readouterr().err
    assert str(lock_file) in err and "lock format 2 is not 1" in err and "Traceback" not in err
    assert len(session.store.all()) == 3


def test_a_lock_that_is_gone_keeps_nothing_and_a_readable_one_keeps_its_steps(tmp_path):
    session = Session()
    lock_file, keys = locked(tmp_path, session)
    done = collect_garbage(session.store)
    assert [a.key for a in done.artifacts] == [keys[2]] and done.roots == [str(lock_file)]
    lock_file.unlink()  # its recipe deleted: nothing keeps its steps
    done = collect_garbage(session.store)
    assert sorted(a.key for a in done.artifacts) == sorted(keys[:2]) and done.roots == []
    assert session.store.all() == []
