"""mergepkg/files.py: small files written whole or not at all."""

from __future__ import annotations

import errno
import io
import os
import time

import pytest

from mergepkg import files
from mergepkg.errors import DiskError
from mergepkg.files import LEFTOVER_SECONDS, write_atomic


def test_a_write_replaces_the_file_whole_and_removes_old_leftovers_of_killed_writers(tmp_path):
    target = tmp_path / "r [1].lock"  # brackets: a glob pattern would read them as a class
    stale = tmp_path / ".r [1].lock.abc123.tmp"  # what a writer killed before its rename left
    fresh = tmp_path / ".r [1].lock.def456.tmp"  # a writer at work right now
    other = tmp_path / ".other.lock.abc123.tmp"
    for f in (stale, fresh, other):
        f.write_text("half")
    long_ago = time.time() - LEFTOVER_SECONDS - 60
    for f in (stale, other):
        os.utime(f, (long_ago, long_ago))
    write_atomic(target, "whole\n")
    assert target.read_text() == "whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, fresh.name, other.name])


class _FullDisk(io.BytesIO):
    """A file whose bytes the disk refuses when they are flushed, as a full tmpfs does at close."""

    def close(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_and_its_folder(tmp_path, monkeypatch):
    """It said `No space left on device` and to point MERGEPKG_HOME or --out elsewhere,
    of a lock written beside its recipe, which neither moves."""
    target = tmp_path / "recipe.lock"

    def fdopen(fd, mode):
        os.close(fd)
        return _FullDisk()

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    with pytest.raises(DiskError) as e:
        write_atomic(target, "whole\n")
    assert e.value.located == f"No space left on device while writing {target}"
    assert e.value.hint == f"free some space on the disk that holds {tmp_path}"
    assert e.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []  # no temp file left


def test_a_read_only_folder_names_it(tmp_path, monkeypatch):
    def mkstemp(**kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".recipe.lock.x.tmp"))

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    with pytest.raises(DiskError) as e:
        write_atomic(tmp_path / "recipe.lock", "whole\n")
    assert e.value.located == f"Read-only file system while writing {tmp_path / 'recipe.lock'}"
    assert e.value.hint == f"{tmp_path} is on a read-only file system: work on a copy on a writable one"


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, name in ((a, "x"), (b, "y")):
        folder.mkdir()
        (folder / name).write_text(name)
    assert files.exchange(a, b)  # Linux with glibc 2.28+, on a local file system: this machine's
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]
    with pytest.raises(FileNotFoundError):
        files.exchange(a, tmp_path / "gone")
