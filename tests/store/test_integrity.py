"""The store and the hash cache hold against edits that keep sizes and mtimes, killed
builds' leftovers, and stray files (issue: hardening)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cli

from mergepkg.lockfile import read_lock
from mergepkg.store.local import Store

pytestmark = pytest.mark.slow  # tiny models

RECIPE = """
[steps.merged]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 0.5, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.5 }]
"""


def flip_keeping_stat(path: Path, at: int = -9) -> None:
    """Change one byte of `path`, keeping its size and mtime (as `touch -d` would put back)."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


@pytest.fixture
def built(write_recipe, tmp_path, models, capsys):
    """A recipe over copies of ft1 (editable here) built once: (recipe, ft1 copy)."""
    import shutil

    ft1 = tmp_path / "ft1-copy"
    shutil.copytree(models["ft1"], ft1)
    path = write_recipe(RECIPE.replace('model = "ft1"', 'model = "mine"'))
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nmine = {{ path = "{ft1}" }}\n'))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    return path, ft1


def test_a_source_edited_in_place_with_its_mtime_kept_is_noticed(built, tmp_path, capsys):
    path, ft1 = built
    lock_before = path.with_suffix(".lock").read_text()
    flip_keeping_stat(ft1 / "model.safetensors")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q", "--locked")
    assert code == 1 and "out of date" in err and "has different content than locked" in err, err
    assert path.with_suffix(".lock").read_text() == lock_before
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")  # a plain build: a new key
    assert code == 0 and "built merged" in err, err
    assert read_lock(path.with_suffix(".lock")).steps["merged"].key not in lock_before


def test_a_stored_artifact_flipped_with_its_mtime_kept_is_rebuilt_by_locked(built, tmp_path, mergepkg_home, capsys):
    path, _ = built
    (art,) = Store(mergepkg_home).all()
    flip_keeping_stat(next(art.folder.glob("*.safetensors")))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q", "--locked")
    assert code == 0 and "built merged" in err, err  # re-read, found changed, rebuilt to the locked digest
    (again,) = Store(mergepkg_home).all()
    assert again.holds()
    flip_keeping_stat(next(again.folder.glob("*.safetensors")))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q", "--verify-store")
    assert code == 0 and "built merged" in err, err


def test_the_next_build_removes_what_a_killed_build_left(built, tmp_path, mergepkg_home, capsys):
    path, _ = built
    stale = mergepkg_home / "tmp" / ("a" * 64 + ".x1y2")
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert not stale.exists()


def test_gc_removes_the_lock_files(built, mergepkg_home, capsys):
    assert list((mergepkg_home / "locks").glob("*.lock"))
    code, _, err = cli(capsys, "cache", "gc")
    assert code == 0, err
    assert list((mergepkg_home / "locks").glob("*.lock")) == []


def test_stray_files_in_the_store_are_not_artifacts(built, mergepkg_home, capsys):
    (mergepkg_home / "store" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (mergepkg_home / "store" / "notes.txt").write_text("mine")
    (mergepkg_home / "store" / ("b" * 64)).mkdir()  # a folder without a manifest
    code, _, err = cli(capsys, "cache", "list")
    assert code == 0 and "1 artifacts" in err, err
    code, _, err = cli(capsys, "cache", "gc")  # the folder without a manifest is no artifact: it goes
    assert code == 0 and not (mergepkg_home / "store" / ("b" * 64)).exists(), err
    assert (mergepkg_home / "store" / "notes.txt").exists() and len(Store(mergepkg_home).all()) == 1


def test_weight_files_are_not_executable_and_their_folder_is_readable(built, mergepkg_home, tmp_path):
    (art,) = Store(mergepkg_home).all()
    for f in [*art.folder.iterdir(), *(tmp_path / "out").iterdir()]:
        assert f.stat().st_mode & 0o111 == 0, f
    assert art.folder.stat().st_mode & 0o777 == 0o755  # mkdtemp's 0700 hid the files from other readers


def test_verify_finds_a_side_file_gone_and_keeps_an_unreadable_artifact(built, mergepkg_home, monkeypatch, capsys):
    """`verify` said ok of an artifact without its tokenizer.json, which build then refused;
    one this user may not read was discarded as corrupt, though its bytes may be fine."""
    path, _ = built
    (art,) = Store(mergepkg_home).all()
    from mergepkg.builder import verify as verify_module

    def denied(folder):
        raise PermissionError(13, "Permission denied", str(folder / "model.safetensors"))

    with monkeypatch.context() as m:
        m.setattr(verify_module, "model_digest", denied)
        code, out, err = cli(capsys, "verify", path)
    assert code == 1 and "unreadable" in out and "Permission denied" in err, err
    assert Store(mergepkg_home).get(art.key) is not None  # kept
    (art.folder / "tokenizer.json").unlink()
    code, out, err = cli(capsys, "verify", path)
    assert code == 1 and "corrupt" in out and "a file changed since the build" in err, err
    assert Store(mergepkg_home).get(art.key) is None


def test_the_lock_is_a_gc_root_before_it_is_written(built, tmp_path, mergepkg_home, monkeypatch, capsys):
    """A full disk while recording the root left a lock `cache gc` did not keep, and said
    "No space left on device" with no place. The write inside `add_root` fails, so its
    own wrapping of the error (what it was recording, where) is what the user reads."""
    import errno

    from mergepkg.store import local

    path, _ = built
    path.write_text(path.read_text().replace("density = 0.5 }, {", "density = 0.6 }, {"))
    lock_before = path.with_suffix(".lock").read_text()
    (mergepkg_home / "roots.json").unlink()  # the first build recorded the root: record it again

    def full(target, text, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(local, "write_atomic", full)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")
    assert code == 1 and "No space left on device while recording" in err, err
    assert f"{path.with_suffix('.lock').name} in {mergepkg_home / 'roots.json'}" in err, err
    assert path.with_suffix(".lock").read_text() == lock_before  # not written: gc would not keep it
