"""Hugging Face sources through the real huggingface_hub code, offline, from a cache
folder laid out by hand."""

from __future__ import annotations

import pytest
from helpers import build_recipe, load_tensors
from hfcache import add_to_cache

from mergepkg.errors import SourceError
from mergepkg.recipe.model import Source
from mergepkg.resolve.sources import choose_weight_patterns, fetch
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


def test_weight_format_choice_prefers_safetensors():
    assert choose_weight_patterns(["model.safetensors", "pytorch_model.bin"])[0] == "*.safetensors"
    assert choose_weight_patterns(["pytorch_model.bin", "config.json"])[0] == "pytorch_model*.bin"
