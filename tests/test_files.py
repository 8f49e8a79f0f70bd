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


def test_a_file_with_the_longest_name_the_system_allows_is_written_and_its_leftovers_removed(tmp_path):
    """A recipe named with 240 characters (Linux allows 255) failed writing its lock: the
    temp file's name, the lock's with a dot and a random part added, was too long."""
    target = tmp_path / ("é" * 100 + "x" * 50 + ".lock")  # 255 bytes: two per é
    assert len(os.fsencode(target.name)) == files.NAME_MAX
    prefix = files.temp_prefix(".", target.name, ".", suffix=".tmp")
    stale = tmp_path / (prefix + "abc12345.tmp")  # what a writer killed before its rename left
    stale.write_text("half")
    long_ago = time.time() - LEFTOVER_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    write_atomic(target, "whole\n")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_text() == "whole\n"


def test_a_cut_temp_prefix_fits_keeps_its_start_and_differs_for_names_that_start_alike():
    a, b = "x" * 250 + "a", "x" * 250 + "b"
    pa, pb = (files.temp_prefix(".mergepkg-build-", n, "-") for n in (a, b))
    assert pa != pb and pa.startswith(".mergepkg-build-xxxx") and pa.endswith("-")
    assert len(os.fsencode(pa)) + files.TEMP_RANDOM == files.NAME_MAX
    assert files.temp_prefix(".", "short.lock", ".") == ".short.lock."  # as before: leftovers keep their names


@pytest.mark.parametrize(
    ("recipe", "lock"),
    [
        ("recipe.toml", "recipe.lock"),  # as ever
        ("Recipe.TOML", "Recipe.lock"),
        ("soup.v1", "soup.v1.lock"),  # soup.v1 and soup.v2 shared soup.lock
        ("soup.v2", "soup.v2.lock"),
        ("recipe.v2", "recipe.v2.lock"),  # overwrote recipe.toml's
        ("recipe", "recipe.lock"),
    ],
)
def test_a_recipe_lock_is_named_after_the_whole_file_name_unless_it_is_toml(tmp_path, recipe, lock):
    assert files.lock_file_of(tmp_path / recipe) == tmp_path / lock
