"""store/local.py's gc of store folders that hold no artifact: only a manifest missing,
not JSON or incomplete marks one, and a kept key is never removed."""

from __future__ import annotations

import errno
import json
from pathlib import Path

from remotes import make_artifact

from mergepkg.store.local import MANIFEST, Store


def unreadable(monkeypatch, manifest: Path) -> None:
    """Reading `manifest` is denied, as another user's 0700 folder is."""
    read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == manifest:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)


def test_a_kept_artifact_whose_manifest_cannot_be_read_survives_gc(tmp_path, monkeypatch):
    """gc took every key folder `get` found nothing in for damaged, a permission error
    too, and removed it though its key was kept."""
    store = Store(tmp_path)
    kept, other = make_artifact(store, 1), make_artifact(store, 2)
    unreadable(monkeypatch, kept.folder / MANIFEST)
    gone, leftovers = swept(store, {kept.key, other.key}, dry_run=True)
    assert (gone, leftovers) == ([], [])
    swept(store, {kept.key, other.key})
    monkeypatch.undo()
    assert [a.key for a in store.all()] == sorted([kept.key, other.key])


def test_gc_removes_a_folder_whose_manifest_is_missing_unparsable_or_incomplete_unless_kept(tmp_path, monkeypatch):
    store = Store(tmp_path)
    missing, unparsable, incomplete, denied, kept = (store.path(c * 64) for c in "abcde")
    for folder in (missing, unparsable, incomplete, denied, kept):
        folder.mkdir(parents=True)
    (unparsable / MANIFEST).write_text("{")
    (incomplete / MANIFEST).write_text(json.dumps({"key": incomplete.name}))
    (denied / MANIFEST).write_text(json.dumps({"key": denied.name}))
    unreadable(monkeypatch, denied / MANIFEST)
    _, leftovers = swept(store, {kept.name})
    assert leftovers == [missing, unparsable, incomplete]
    assert not any(p.exists() for p in leftovers) and denied.is_dir() and kept.is_dir()


def swept(store, keep, *, dry_run=False):
    """What gc does with the roots read as `keep`."""
    with store.alone():
        return store.sweep(keep, dry_run=dry_run)
