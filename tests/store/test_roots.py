"""store/local.py's gc roots (`roots.json`): a damaged list is an error, never no roots."""

from __future__ import annotations

import fcntl

import pytest

from mergepkg.errors import StoreError
from mergepkg.store.gc import collect_garbage
from mergepkg.store.local import Store


@pytest.mark.parametrize("text", ["[", "null", "[1]", '"x"'])
def test_a_damaged_root_list_is_refused_by_gc_and_by_the_next_build(tmp_path, text):
    """Read as no roots, `[` made gc remove every artifact and the next build keep only its
    own lock; `null` and `[1]` were TypeErrors; `"x"` was a list of characters."""
    store = Store(tmp_path / "home")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "roots.json").write_text(text)
    with pytest.raises(StoreError, match="the list of locks whose steps gc keeps is damaged") as e:
        collect_garbage(store)
    assert e.value.file == str(tmp_path / "home" / "roots.json")
    with pytest.raises(StoreError):
        store.add_root(tmp_path / "r.lock")
    assert (tmp_path / "home" / "roots.json").read_text() == text


def test_roots_are_added_once_and_kept_sorted(tmp_path):
    store = Store(tmp_path / "home")
    for name in ("b.lock", "a.lock", "b.lock"):
        store.add_root(tmp_path / name)
    assert store.roots() == [str(tmp_path / "a.lock"), str(tmp_path / "b.lock")]


def test_gc_reads_the_roots_with_the_store_held_alone(tmp_path, monkeypatch):
    """Read before the store was held, the roots missed a build that ran from start to end
    in between: gc then removed the steps it had just committed and locked."""
    store = Store(tmp_path / "home")
    store.add_root(tmp_path / "r.lock")
    held = []

    def roots():
        with open(store.home / "store.lock", "a+") as f:  # what a build's `in_use` takes
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return []

    monkeypatch.setattr(store, "roots", roots)
    collect_garbage(store)
    assert held == [True]
