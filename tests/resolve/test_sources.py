"""Hugging Face sources through the real huggingface_hub code, offline, from a cache
folder laid out by hand."""

from __future__ import annotations

import pytest
from helpers import build_recipe, load_tensors
from hfcache import add_to_cache

from mergepkg.errors import SourceError
from mergepkg.recipe.model import Source
from mergepkg.resolve.sources import fetch
from mergepkg.settings import Settings


@pytest.fixture
def hub(tmp_path, models, monkeypatch):
    cache = tmp_path / "hf-cache"
    commits = {
        "base": add_to_cache(cache, "tiny/base", models["base"]),
        "ft1": add_to_cache(cache, "tiny/ft1", models["ft1"], revision="v1"),
    }
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commits


def test_offline_fetch_resolves_revision_to_commit(hub):
    fetched = fetch(Source("b", hf="tiny/base", revision="main"), Settings())
    assert fetched.commit == hub["base"]
    assert (fetched.folder / "model.safetensors").is_file()
    pinned = fetch(Source("b", hf="tiny/base", revision=hub["base"]), Settings())
    assert pinned.folder == fetched.folder


def test_missing_revision_names_repo_and_revision(hub):
    with pytest.raises(SourceError) as info:
        fetch(Source("b", hf="tiny/base", revision="v9"), Settings())
    assert "tiny/base@v9" in info.value.message and "offline" in info.value.message
    with pytest.raises(SourceError, match="tiny/nothing@main"):
        fetch(Source("n", hf="tiny/nothing"), Settings())


def test_build_from_hub_sources(hub, tmp_path, models):
    import torch

    path = tmp_path / "r.toml"
    path.write_text(
        '[package]\nname = "hub"\nversion = "0.1.0"\n[sources]\n'
        'base = { hf = "tiny/base" }\nft1 = { hf = "tiny/ft1", revision = "v1" }\n'
        '[steps.m]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1.0 }]\n'
    )
    out = build_recipe(path, tmp_path / "out").outputs["m"]
    got, want = load_tensors(out), load_tensors(models["ft1"])
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_missing_cache_entry_in_a_build_is_located(hub, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[package]\nname = "hub"\nversion = "0.1.0"\n[sources]\n'
        'base = { hf = "tiny/base", revision = "dev" }\n'
        '[steps.m]\nmethod = "passthrough"\ninputs = ["base"]\n'
    )
    with pytest.raises(SourceError) as info:
        build_recipe(path, tmp_path / "out")
    assert info.value.key == "sources.base" and info.value.line == 5


HUB_RECIPE = (
    '[package]\nname = "hub"\nversion = "0.1.0"\n[sources]\n'
    'base = { hf = "tiny/base" }\nft1 = { hf = "tiny/ft1", revision = "v1" }\n'
    '[steps.m]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1.0 }]\n'
)


@pytest.fixture
def unreachable(hub, monkeypatch):
    """The Hub at a closed port on 127.0.0.1, and HF_HUB_OFFLINE unset: every request fails to connect."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    # huggingface_hub reads both when first imported, which an earlier test may have done offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    return hub


@pytest.mark.parametrize("command", [["build"], ["build", "--locked"], ["lock"], ["validate"]])
def test_an_unreachable_hub_is_a_located_error(unreachable, tmp_path, command, capsys):
    from helpers import cli

    path = tmp_path / "r.toml"
    path.write_text(HUB_RECIPE)
    if "--locked" in command:  # a lock that asks for what the recipe asks, at commits not in the cache
        path.with_suffix(".lock").write_text(_lock_naming_other_commits(path))
    args = [*command, path] + (["--out", tmp_path / "out", "-q"] if command[0] == "build" else [])
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    assert f"error: {path}:5: sources.base: cannot reach the Hugging Face Hub for tiny/base" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _lock_naming_other_commits(recipe) -> str:
    from mergepkg.lockfile import Lock, LockedSource, Pin, read_lock, recipe_hash, write_lock
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.resolve.resolution import resolve
    from mergepkg.store.session import Session

    r = load_recipe(recipe)
    sources = {n: LockedSource(n, s.hf, s.revision, None, Pin("0" * 40, ())) for n, s in r.sources.items()}
    lock_file = recipe.with_name("scratch.lock")
    write_lock(lock_file, Lock(recipe_hash(r), sources, {}))
    # the steps keyed from those pins (deferred sources: nothing is fetched), so the lock is whole
    write_lock(lock_file, resolve(r, Session(), lock=read_lock(lock_file), defer=True).lock({}))
    return lock_file.read_text()


def test_a_locked_build_from_a_complete_cache_asks_the_hub_nothing(unreachable, tmp_path, monkeypatch, capsys):
    from helpers import cli

    path = tmp_path / "r.toml"
    path.write_text(HUB_RECIPE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")  # writes the lock, from the cache
    assert code == 0, err
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online again, with the Hub unreachable
    for args in (
        ["build", path, "--out", tmp_path / "out", "-q", "--locked"],
        ["build", path, "-q", "--out", tmp_path / "out"],
        ["validate", path],
        ["plan", path],
    ):
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)


def test_a_hub_download_fetches_the_index_then_the_shards_it_names(fake_hub, tmp_path):
    """Through huggingface_hub's client from the fake Hub: a whole-model copy beside the
    shards (Mistral's `consolidated.safetensors`) and an adapter are not downloaded."""
    import json

    from fakehub import Repo

    from mergepkg.recipe.model import Source
    from mergepkg.settings import Settings

    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {
        "config.json": b"{}",
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": b"one",
        "model-00002-of-00002.safetensors": b"two",
        "consolidated.safetensors": b"the whole model again",
        "adapter_model.safetensors": b"an adapter",
    }
    fake_hub.repos["org/m"] = Repo(private=False)
    fake_hub.commit("org/m", files)
    fetched = fetch(Source(name="m", hf="org/m", revision="main"), Settings(home=tmp_path / "home"))
    got = sorted(p.name for p in fetched.folder.iterdir())
    assert got == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
