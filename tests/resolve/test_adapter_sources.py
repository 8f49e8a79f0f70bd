"""LoRA adapters in resolution: pinned like other sources (folders by file hashes, hub
repos by commit and file hashes), and the implicit `base+adapter` step keyed by the two
identities only, so recipes share it. Stub folders and a hand-laid hub cache: no torch."""

from __future__ import annotations

import pytest
from hfcache import add_to_cache
from lora_adapters import stub_adapter

from mergepkg._version import ENGINE_VERSION
from mergepkg.errors import SourceError
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.keys import HASH_VERSION
from mergepkg.resolve.lock import lock_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

HEAD = '[package]\nname = "{name}"\nversion = "0.1.0"\n\n'


def write(folder, name: str, sources: dict[str, str], body: str):
    path = folder / f"{name}.toml"
    lines = "".join(f"{n} = {v}\n" for n, v in sources.items())
    path.write_text(HEAD.format(name=name) + "[sources]\n" + lines + "\n" + body)
    return path


def soup(model: str, other: str, name: str = "soup") -> str:
    return (
        f'[steps.{name}]\nmethod = "linear"\n'
        f'inputs = [{{ model = "{model}", weight = 0.5 }}, {{ model = "{other}", weight = 0.5 }}]\n'
    )


@pytest.fixture
def adapters(tmp_path):
    return {"ad": stub_adapter(tmp_path / "ad"), "ad_other": stub_adapter(tmp_path / "ad_other", value=3.0)}


def test_the_applied_model_has_one_key_whatever_recipe_names_it(tmp_path, stub_models, adapters):
    a = write(
        tmp_path,
        "first",
        {
            "base": f'{{ path = "{stub_models["base"]}" }}',
            "ft1": f'{{ path = "{stub_models["ft1"]}" }}',
            "ad": '{ path = "ad" }',
        },
        soup("base+ad", "ft1"),
    )
    # other names, another position, another use, another step around it
    b = write(
        tmp_path,
        "second",
        {
            "lora": '{ path = "ad" }',
            "ft2": f'{{ path = "{stub_models["ft2"]}" }}',
            "llama": f'{{ path = "{stub_models["base"]}" }}',
        },
        soup("ft2", "ft2+lora", name="first")
        + '[steps.then]\nmethod = "slerp"\nbase = "llama+lora"\ninputs = ["first"]\nparams = { t = 0.5 }\n',
    )
    ra, rb = resolve(load_recipe(a), Session()), resolve(load_recipe(b), Session())
    key = ra.keys["base+ad"]
    assert rb.keys["llama+lora"] == key and rb.keys["ft2+lora"] != key
    assert ra.entries["base+ad"] == {
        "hash_version": HASH_VERSION,
        "engine": ENGINE_VERSION,
        "method": "lora",
        "method_version": 2,  # 2: tied heads and fan_in_fan_out as peft decides them (layout/lora.py)
        "base": ra.sources["base"].locked.pin.ref,
        "adapter": ra.sources["ad"].locked.pin.ref,
    }
    # the adapter's content is its identity: another adapter, another key, and downstream too
    c = write(
        tmp_path,
        "third",
        {
            "base": f'{{ path = "{stub_models["base"]}" }}',
            "ft1": f'{{ path = "{stub_models["ft1"]}" }}',
            "ad": '{ path = "ad_other" }',
        },
        soup("base+ad", "ft1"),
    )
    rc = resolve(load_recipe(c), Session())
    assert rc.keys["base+ad"] != key and rc.keys["soup"] != ra.keys["soup"]


def test_the_lock_pins_an_adapter_by_its_files(tmp_path, stub_models, adapters):
    path = write(
        tmp_path,
        "r",
        {
            "base": f'{{ path = "{stub_models["base"]}" }}',
            "ft1": f'{{ path = "{stub_models["ft1"]}" }}',
            "ad": '{ path = "ad" }',
        },
        soup("base+ad", "ft1"),
    )
    lock_recipe(load_recipe(path), Session())
    lock = read_lock(lock_path(load_recipe(path)))
    assert lock is not None
    ad = lock.sources["ad"]
    assert (ad.path, ad.pin.commit) == ("ad", None)
    assert [f.name for f in ad.pin.files] == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(len(f.sha256) == 64 and f.size > 0 for f in ad.pin.files)
    step = lock.steps["base+ad"]
    assert step.method == "lora" and step.digest is None
    assert "adapter_model.safetensors" in lock_path(load_recipe(path)).read_text()
    # an edited adapter file is a changed source, and a changed key
    (adapters["ad"] / "adapter_config.json").write_text(
        (adapters["ad"] / "adapter_config.json").read_text().replace('"lora_alpha": 2', '"lora_alpha": 4')
    )
    res = resolve(load_recipe(path), Session())
    assert res.keys["base+ad"] != step.key


@pytest.fixture
def hub(tmp_path, stub_models, adapters, monkeypatch):
    """tiny/base, tiny/ft1 and the adapter tiny/ad in a hand-laid Hugging Face cache, offline."""
    cache = tmp_path / "hf-cache"
    commits = {
        "base": add_to_cache(cache, "tiny/base", stub_models["base"]),
        "ft1": add_to_cache(cache, "tiny/ft1", stub_models["ft1"]),
        "ad": add_to_cache(cache, "tiny/ad", adapters["ad"], revision="v1"),
    }
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commits


def test_a_hub_adapter_is_pinned_at_its_commit_offline(tmp_path, hub):
    hf = {"base": '{ hf = "tiny/base" }', "ft1": '{ hf = "tiny/ft1" }', "ad": '{ hf = "tiny/ad", revision = "v1" }'}
    path = write(tmp_path, "r", hf, soup("base+ad", "ft1"))
    lock_recipe(load_recipe(path), Session())
    lock = read_lock(lock_path(load_recipe(path)))
    assert lock is not None
    ad = lock.sources["ad"]
    assert (ad.hf, ad.revision, ad.pin.commit) == ("tiny/ad", "v1", hub["ad"])
    assert [f.name for f in ad.pin.files] == ["adapter_config.json", "adapter_model.safetensors"]
    # the same files as a folder; a hub source's identity holds its commit too
    local = write(
        tmp_path,
        "local",
        {"base": '{ hf = "tiny/base" }', "ft1": '{ hf = "tiny/ft1" }', "ad": '{ path = "ad" }'},
        soup("base+ad", "ft1"),
    )
    res = resolve(load_recipe(local), Session())
    assert res.sources["ad"].locked.pin.files == ad.pin.files
    assert res.sources["ad"].locked.pin.ref != ad.pin.ref  # a commit is part of a hub source's identity


def test_a_hub_adapter_where_a_model_is_expected_says_so(tmp_path, hub):
    path = write(
        tmp_path, "r", {"base": '{ hf = "tiny/base" }', "ad": '{ hf = "tiny/ad", revision = "v1" }'}, soup("base", "ad")
    )
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), Session())
    e = info.value
    assert "is a PEFT LoRA adapter (adapter_config.json, no config.json), not a model" in e.message
    assert '"BASE+ADAPTER"' in (e.hint or "")
    assert (
        e.key == "sources.ad"
        and e.line == path.read_text().splitlines().index('ad = { hf = "tiny/ad", revision = "v1" }') + 1
    )


def test_a_model_after_a_plus_is_not_an_adapter(tmp_path, stub_models):
    path = write(
        tmp_path,
        "r",
        {"base": f'{{ path = "{stub_models["base"]}" }}', "ft1": f'{{ path = "{stub_models["ft1"]}" }}'},
        soup("base+ft1", "base"),
    )
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), Session())
    e = info.value
    assert "not a PEFT adapter: no adapter_config.json (a model folder)" in e.message
    assert e.key == "sources.ft1" and "after a `+` comes a LoRA adapter" in (e.hint or "")
