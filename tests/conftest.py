"""Session fixtures: tiny seeded models (built once), stub model folders for tests that
only parse, pin and key, and recipe writers over either.

Markers: a test that uses the tiny models (`models`, `write_recipe`, `tiny_hub`) is
marked `slow` here, as are test modules and tests marked so themselves (mergekit,
builds in subprocesses, transformers generating); `pytest -m "not slow"` runs the rest.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MODEL_FIXTURES = {"models", "write_recipe", "tiny_hub"}
HEAD = '[package]\nname = "test"\nversion = "0.1.0"\n\n'


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def mergepkg_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty store."""
    home = tmp_path / "mergepkg-home"
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def hub_offline_as_the_environment_says(monkeypatch) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, when first imported: a test that imported it
    with the variable set must not leave every later test offline (tests/resolve alone did)."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture(autouse=True)
def malloc_left_as_it_is(monkeypatch) -> None:
    """A build under --max-memory in this process sets glibc's mmap threshold for good
    (engine/memory.return_freed_memory): every later test's large buffers were then mapped
    and unmapped, and the fast set took half again as long. Builds in subprocesses keep it."""
    monkeypatch.setattr("mergepkg.engine.memory.return_freed_memory", lambda: None)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """base: random tiny Llama (4 layers); ft1..ft3: base + small seeded deltas;
    ft1_sharded: ft1 saved in many shards; ft2_bin: ft2 as pytorch_model.bin;
    ft1_bf16: ft1 in bfloat16; wide: a different hidden size; deep: 6 layers."""
    import torch
    from safetensors.torch import load_file
    from tiny import make_model

    root = tmp_path_factory.mktemp("models")
    m = {"base": make_model(root / "base", seed=0)}
    for i in (1, 2, 3):
        m[f"ft{i}"] = make_model(root / f"ft{i}", seed=i, base=m["base"])
    m["ft1_sharded"] = make_model(root / "ft1_sharded", seed=1, base=m["base"], shard_size="20KB")
    m["ft1_bf16"] = make_model(root / "ft1_bf16", seed=1, base=m["base"], dtype=torch.bfloat16)
    m["wide"] = make_model(root / "wide", seed=5, hidden=48)
    m["deep"] = make_model(root / "deep", seed=6, layers=6)
    # a pytorch_model.bin checkpoint of ft2 (transformers 5 writes safetensors only)
    bin_dir = root / "ft2_bin"
    bin_dir.mkdir()
    for f in m["ft2"].iterdir():
        if not f.name.endswith(".safetensors"):
            (bin_dir / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(m["ft2"] / "model.safetensors"), bin_dir / "pytorch_model.bin")
    m["ft2_bin"] = bin_dir
    return m


@pytest.fixture(scope="session")
def stub_models(tmp_path_factory) -> dict[str, Path]:
    """Model folders with the names of `models` that only parsing, pinning and keying can
    use: a config.json and a one-tensor model.safetensors each, different per model.
    Made without torch, in milliseconds."""
    import numpy as np
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("stubs")
    out = {}
    for i, name in enumerate(("base", "ft1", "ft2", "ft3", "ft1_sharded", "ft1_bf16", "wide", "deep", "ft2_bin")):
        folder = root / name
        folder.mkdir()
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4}
        (folder / "config.json").write_text(json.dumps(config))
        save_file({"model.embed_tokens.weight": np.full((4, 2), i, dtype=np.float32)}, folder / "model.safetensors")
        out[name] = folder
    return out


def _recipe_writer(tmp_path: Path, folders: dict[str, Path]):
    def write(body: str, *, sources: bool = True, name: str = "recipe.toml") -> Path:
        head = HEAD
        if sources:
            head += "[sources]\n" + "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in folders.items()) + "\n"
        path = tmp_path / name
        path.write_text(head + textwrap.dedent(body))
        return path

    return write


@pytest.fixture(scope="session")
def chat(models, tmp_path_factory) -> Path:
    """ft1 with two more special tokens, and two more embedding and head rows: a step over
    it and the others merges on a union vocabulary, its rows aligned."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("chat") / "chat"
    tok = AutoTokenizer.from_pretrained(models["ft1"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model = LlamaForCausalLM.from_pretrained(models["ft1"], dtype=torch.float32)
    torch.manual_seed(9)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def write_recipe(tmp_path, models):
    """write_recipe(body) -> path of a recipe whose [sources] name every tiny model."""
    return _recipe_writer(tmp_path, models)


@pytest.fixture
def recipe_file(tmp_path, stub_models):
    """recipe_file(body) -> path of a recipe whose [sources] name the stub models: for
    tests that parse, plan, pin and key, and never read a tensor."""
    return _recipe_writer(tmp_path, stub_models)


@pytest.fixture
def tiny_hub(tmp_path, models, monkeypatch) -> dict[str, str]:
    """tiny/base and tiny/ft1..ft3 in a Hugging Face cache laid out by hand, read through
    the real huggingface_hub with HF_HUB_OFFLINE=1; returns their commits."""
    from registries import lay_out_hub

    cache = tmp_path / "hf-cache"
    commits = lay_out_hub(cache, models)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commits


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub on 127.0.0.1 (tests/fakehub.py) as huggingface_hub's endpoint, online,
    with HF_TOKEN set to its token and a Hugging Face home and cache of the test's own."""
    from fakehub import TOKEN, FakeHub
    from huggingface_hub import constants

    fake = FakeHub(TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield fake
    fake.close()
