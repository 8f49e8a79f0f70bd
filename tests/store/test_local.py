"""store/local.py: a store on another file system than its home stages beside itself."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import build_recipe, load_tensors

from mergepkg.store.local import STAGING, Store

LINEAR = '[steps.m]\nmethod = "linear"\ninputs = ["ft1", "ft2"]\nparams = { weight = 0.5 }\n'


@pytest.fixture
def other_disk(tmp_path):
    """A folder on another file system than the test's (/dev/shm, a tmpfs), removed after."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no file system other than the test folder's to put a store on")
    folder = Path(tempfile.mkdtemp(prefix="mergepkg-test-store-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_store_linked_to_another_disk_builds_commits_and_cleans_there(
    write_recipe, tmp_path, mergepkg_home, other_disk
):
    """`store/` a link to another disk: the step was built in `tmp/`, then its commit's
    rename failed with EXDEV in a traceback, the work lost."""
    from transformers import AutoModelForCausalLM

    mergepkg_home.mkdir()
    (mergepkg_home / "store").symlink_to(other_disk)
    store = Store(mergepkg_home)
    assert store.tmp == mergepkg_home / "store" / STAGING  # on the store's disk
    leftover = store.tmp / ("a" * 64 + ".x1y2")  # what a build killed there left
    leftover.mkdir(parents=True)
    recipe = write_recipe(LINEAR)
    report = build_recipe(recipe, tmp_path / "out")
    assert not leftover.exists() and os.listdir(store.tmp) == []
    (art,) = report.artifacts.values()
    assert art.folder == mergepkg_home / "store" / art.key and (other_disk / art.key).is_dir()
    assert [a.key for a in store.all()] == [art.key]  # the staging folder is no artifact
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    store.discard(art.key)  # a rename into the staging folder too
    assert store.all() == [] and os.listdir(other_disk) == [STAGING]
    again = build_recipe(recipe, tmp_path / "out")
    assert again.built == ["m"] and load_tensors(tmp_path / "out").keys() == load_tensors(art.folder).keys()


def test_a_store_on_the_home_s_disk_stages_in_tmp_as_ever(tmp_path):
    home = tmp_path / "home"
    assert Store(home).tmp == home / "tmp"  # nothing made yet
    (home / "store").mkdir(parents=True)
    assert Store(home).tmp == home / "tmp"
