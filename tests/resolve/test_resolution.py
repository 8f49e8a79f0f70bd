"""A first build (a cold hash cache, a lock beside the recipe) keys its steps by the lock's
claims without reading the sources, and never records or stores what a false claim made."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from helpers import build_recipe

import mergepkg.store.hashcache
from mergepkg.errors import SourceError
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.local import Store
from mergepkg.store.session import Session

RECIPE = """
[steps.merged]
method = "linear"
inputs = [{ model = "mine", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
"""


@pytest.fixture
def recipe(write_recipe, tmp_path, models) -> tuple[Path, Path]:
    """A recipe over a copy of ft1 (editable here), built and locked once in another home:
    (recipe, the copy's weights)."""
    mine = tmp_path / "mine"
    shutil.copytree(models["ft1"], mine)
    path = write_recipe(RECIPE)
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nmine = {{ path = "{mine}" }}\n'))
    build_recipe(path, home=tmp_path / "first-home")
    return path, mine / "model.safetensors"


def new_home(monkeypatch, tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    return home


def swap_keeping_size(weights: Path, lock: Path) -> None:
    """Other bytes of the same size in `weights`, before the lock was written (as a lock made
    elsewhere, or a file changed before locking, leaves it): the lock's claim is false."""
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0x01
    weights.write_bytes(bytes(data))
    future = os.stat(weights).st_ctime_ns + 10**9
    os.utime(lock, ns=(future, future))


def test_a_first_build_is_keyed_by_the_locks_claims_before_any_file_is_read(recipe, tmp_path, monkeypatch):
    path, _ = recipe
    locked = read_lock(lock_path(load_recipe(path)))
    assert locked is not None
    new_home(monkeypatch, tmp_path, "second-home")
    gate, read = threading.Event(), []
    real = mergepkg.store.hashcache.sha256_file

    def held(p):  # no file is read until the keys are out
        gate.wait(60)  # until the test sets it; only a stalled test thread takes long
        read.append(p)
        return real(p)

    monkeypatch.setattr(mergepkg.store.hashcache, "sha256_file", held)
    session = Session()
    res = resolve(load_recipe(path), session, lock=locked, defer=True)
    assert read == [] and res.keys == {n: s.key for n, s in locked.steps.items()}
    gate.set()
    assert res.lock({}).sources == locked.sources  # confirmed: every claimed file read and found true
    assert len(read) == sum(len(s.pin.files) for s in locked.sources.values())
    report = build_recipe(path)
    assert report.built == ["merged"] and report.lock == locked


def test_a_false_claim_is_refused_before_the_step_is_stored_and_the_next_build_re_pins(recipe, tmp_path, monkeypatch):
    path, weights = recipe
    lock_file = lock_path(load_recipe(path))
    swap_keeping_size(weights, lock_file)
    before = lock_file.read_text()
    home = new_home(monkeypatch, tmp_path, "second-home")
    with pytest.raises(SourceError) as info:
        build_recipe(path, out=tmp_path / "out")
    assert "does not hold the sha256 the lock gives it" in info.value.message
    assert Store(home).all() == [] and not (tmp_path / "out").exists()
    assert lock_file.read_text() == before and not any((home / "tmp").iterdir())
    report = build_recipe(path, out=tmp_path / "out")  # the read's sha256 was remembered: pinned anew
    assert report.built == ["merged"]
    (mine,) = [f for f in report.lock.sources["mine"].pin.files if f.name == "model.safetensors"]
    assert mine.sha256 == mergepkg.store.hashcache.sha256_file(weights)


def test_a_false_claim_over_a_stored_step_fails_locked_before_the_lock_and_outputs(recipe, tmp_path, monkeypatch):
    path, weights = recipe
    home = new_home(monkeypatch, tmp_path, "first-home")  # the step is stored here
    (home / "hashes.sqlite").unlink()  # a cold hash cache
    lock_file = lock_path(load_recipe(path))
    swap_keeping_size(weights, lock_file)
    before = lock_file.read_text()
    with pytest.raises(SourceError) as info:
        build_recipe(path, out=tmp_path / "out", mode="locked")
    assert "does not hold the sha256 the lock gives it" in info.value.message
    assert lock_file.read_text() == before and not (tmp_path / "out").exists()


def test_an_edited_source_is_hashed_at_once_not_claimed(recipe, tmp_path, monkeypatch):
    """A file changed after the lock was written (its ctime is newer) is read for its pin:
    a plain build pins the new content, as before first builds took claims."""
    path, weights = recipe
    time.sleep(0.01)
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0x01
    weights.write_bytes(bytes(data))
    new_home(monkeypatch, tmp_path, "second-home")
    report = build_recipe(path)
    (mine,) = [f for f in report.lock.sources["mine"].pin.files if f.name == "model.safetensors"]
    assert mine.sha256 == mergepkg.store.hashcache.sha256_file(weights)


def test_a_local_dir_download_is_keyed_by_huggingface_hubs_records_before_it_is_read(
    fake_hub, models, write_recipe, tmp_path, monkeypatch
):
    """A folder `hf download --local-dir` wrote (here by huggingface_hub's own client, from
    the fake Hub) needs no lock: its weights are keyed by the sha256 huggingface_hub
    recorded for them, to the same keys their content gives, and read beside the build."""
    from fakehub import Repo
    from huggingface_hub import snapshot_download

    fake_hub.repos["tiny/ft1"] = Repo(private=False)
    fake_hub.commit("tiny/ft1", {p.name: p.read_bytes() for p in models["ft1"].iterdir() if p.is_file()})
    local = Path(snapshot_download("tiny/ft1", local_dir=tmp_path / "ft1-local"))
    path = write_recipe(RECIPE)
    text = path.read_text()
    path.write_text(text.replace("[sources]\n", f'[sources]\nmine = {{ path = "{local}" }}\n'))
    same = path.with_name("same.toml")
    same.write_text(text.replace("[sources]\n", f'[sources]\nmine = {{ path = "{models["ft1"]}" }}\n'))
    expected = resolve(load_recipe(same), Session()).keys  # the content's own keys, hashed first

    new_home(monkeypatch, tmp_path, "second-home")
    gate, read = threading.Event(), []
    real = mergepkg.store.hashcache.sha256_file

    def held(p):  # the download's weights are not read until the keys are out
        if str(p).startswith(str(local.resolve())) and str(p).endswith(".safetensors"):
            gate.wait(60)  # until the test sets it; only a stalled test thread takes long
            read.append(p)
        return real(p)

    monkeypatch.setattr(mergepkg.store.hashcache, "sha256_file", held)
    try:
        res = resolve(load_recipe(path), Session(), defer=True)
        assert read == [] and res.keys == expected
    finally:
        gate.set()  # a failure above must not leave the checking thread waiting
    locked = res.lock({})  # confirmed: the weights read and found as recorded
    (weights,) = [f for f in locked.sources["mine"].pin.files if f.name == "model.safetensors"]
    assert read and weights.sha256 == real(local / "model.safetensors")
    assert build_recipe(path).built == ["merged"]


def test_an_out_of_date_lock_s_hint_fits_every_command_that_refuses_it(recipe_file, capsys):
    """`verify --rebuild` on an out-of-date lock hinted "(or build without
    --locked/--frozen)": options verify does not have."""
    from mergepkg.cli.app import main

    path = recipe_file('[steps.soup]\nmethod = "linear"\ninputs = ["ft1", "ft2"]\n[steps.soup.params]\nweight = 1\n')
    assert main(["lock", str(path)]) == 0
    path.write_text(path.read_text().replace("weight = 1", "weight = 2"))
    capsys.readouterr()
    for command in (["verify", str(path), "--rebuild"], ["build", str(path), "--locked", "-q"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "recipe.lock is out of date" in err and "Traceback" not in err, err
        hint = err.split("hint:")[1]
        assert f"mergepkg lock {path}" in hint and "then run this command again" in hint
        assert "--locked" not in hint and "--frozen" not in hint
