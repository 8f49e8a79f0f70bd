"""Hugging Face sources through the real huggingface_hub code, offline, from a cache
folder laid out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_recipe, load_tensors
from hfcache import add_to_cache

from mergepkg.errors import LockError, SourceError
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.model import Source
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.lock import lock_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.resolve.sources import fetch
from mergepkg.settings import Settings
from mergepkg.store.session import Session


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
    no_backoff(monkeypatch)
    return hub


def no_backoff(monkeypatch) -> None:
    """huggingface_hub's retries (5, for a tree listing or a download that failed to connect
    or got a 5xx or 429) without their waits, 23 s in all."""
    from types import SimpleNamespace

    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http, "time", SimpleNamespace(sleep=lambda seconds: None))


@pytest.mark.parametrize(
    "command", [["build"], ["build", "--locked"], ["build", "--locked", "pinned"], ["lock"], ["validate"]]
)
def test_an_unreachable_hub_is_a_located_error(unreachable, tmp_path, command, capsys):
    """`pinned`: the lock pins the files too, so they are fetched as the lock says (by
    huggingface_hub's snapshot_download at the commit, which reports a Hub it could not
    reach as a cache entry not found): that said "the hub is offline", and to unset
    HF_HUB_OFFLINE, which nobody had set."""
    from helpers import cli

    path = tmp_path / "r.toml"
    path.write_text(HUB_RECIPE)
    if "--locked" in command:  # a lock that asks for what the recipe asks, at commits not in the cache
        path.with_suffix(".lock").write_text(_lock_naming_other_commits(path, files="pinned" in command))
    args = [*command[:2], path] + (["--out", tmp_path / "out", "-q"] if command[0] == "build" else [])
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    assert f"error: {path}:5: sources.base: cannot reach the Hugging Face Hub for tiny/base" in err, err
    assert "HF_ENDPOINT" in err and "offline" not in err.split("hint:")[0] and "unset HF_HUB_OFFLINE" not in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _lock_naming_other_commits(recipe, files: bool = False) -> str:
    from mergepkg.lockfile import FileRecord, Lock, LockedSource, Pin, read_lock, recipe_hash, write_lock
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.resolve.resolution import resolve
    from mergepkg.store.session import Session

    r = load_recipe(recipe)
    pinned = (FileRecord("config.json", 2, "0" * 64),) if files else ()
    sources = {n: LockedSource(n, s.hf, s.revision, None, Pin("0" * 40, pinned)) for n, s in r.sources.items()}
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


# Partial caches: a snapshot holds the files someone downloaded, not always those a merge reads.

TOKENIZER = {"tokenizer.json": b'{"model": {}}', "tokenizer_config.json": b"{}"}
PARTIAL = '[package]\nname = "p"\nversion = "0.1.0"\n[sources]\nbase = { hf = "tiny/base" }\n' + (
    '[steps.m]\nmethod = "passthrough"\ninputs = ["base"]\n'
)


def repo_files(stub: Path, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A stub model's files (config.json, model.safetensors) and `extra`, as a repo holds them."""
    return {p.name: p.read_bytes() for p in stub.iterdir() if p.is_file()} | (extra or {})


def folder_of(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def recipe_at(tmp_path: Path) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(PARTIAL)
    return path


def offline_in(cache: Path) -> Session:
    return Session(Settings(offline=True, hf_cache=str(cache)))


def test_a_lock_made_from_a_partial_cache_is_built_online_from_the_locks_files(fake_hub, tmp_path, stub_models):
    """A lock pinning no tokenizer (made where the cache held none: before mergepkg refused
    such a snapshot, or where the repo had none) is built elsewhere, online, from exactly
    its files: the Hub's tokenizer is not downloaded, so the pins agree with the lock."""
    from fakehub import Repo

    full = repo_files(stub_models["base"], TOKENIZER)
    fake_hub.repos["tiny/base"] = Repo(private=False)
    commit = fake_hub.commit("tiny/base", full)
    partial = folder_of(tmp_path / "partial", repo_files(stub_models["base"]))
    add_to_cache(tmp_path / "there", "tiny/base", partial, commit=commit)
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), offline_in(tmp_path / "there"))
    lock = read_lock(lock_path(load_recipe(path)))
    assert lock is not None and [f.name for f in lock.sources["base"].pin.files] == ["config.json", "model.safetensors"]

    res = resolve(load_recipe(path), Session(), lock=lock, mode="locked")  # a fresh cache, online
    assert res.sources["base"].locked == lock.sources["base"]
    assert sorted(p.name for p in res.source_folder("base").iterdir()) == ["config.json", "model.safetensors"]
    assert not [r for r in fake_hub.requests if r[1].endswith("tokenizer.json")]


def test_a_cache_holding_more_than_the_lock_pins_says_so_and_lock_pins_it(tmp_path, stub_models):
    """The same commit with files the lock does not pin (downloaded since) is no damaged
    cache: --locked names them, and `mergepkg lock` pins them (deleting the repo from
    the cache, as the damaged-cache hint says, would not help)."""
    partial = folder_of(tmp_path / "partial", repo_files(stub_models["base"]))
    full = folder_of(tmp_path / "full", repo_files(stub_models["base"], TOKENIZER))
    commit = add_to_cache(tmp_path / "there", "tiny/base", partial)
    add_to_cache(tmp_path / "here", "tiny/base", full, commit=commit)
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), offline_in(tmp_path / "there"))
    lock = read_lock(lock_path(load_recipe(path)))
    for mode in ("locked", "frozen"):
        with pytest.raises(LockError) as info:
            resolve(load_recipe(path), offline_in(tmp_path / "here"), lock=lock, mode=mode)
        e = info.value
        assert (
            f"tiny/base@{commit}" in e.message and "tokenizer.json, tokenizer_config.json not in the lock" in e.message
        )
        assert "damaged" not in e.message and "`mergepkg lock`" in e.hint and e.key == "sources.base"
    building = resolve(load_recipe(path), offline_in(tmp_path / "here"), lock=lock, defer=True)  # as `build` does
    with pytest.raises(LockError, match=r"tokenizer\.json, tokenizer_config\.json not in the lock"):
        building.source_folder("base")  # its step is keyed by the lock's pin: it must not read more
    lock_recipe(load_recipe(path), offline_in(tmp_path / "here"))
    relocked = read_lock(lock_path(load_recipe(path)))
    assert relocked is not None and "tokenizer.json" in [f.name for f in relocked.sources["base"].pin.files]
    resolve(load_recipe(path), offline_in(tmp_path / "here"), lock=relocked, mode="locked")


def test_a_damaged_file_at_the_locked_commit_is_still_a_damaged_cache(tmp_path, stub_models):
    full = folder_of(tmp_path / "full", repo_files(stub_models["base"], TOKENIZER))
    commit = add_to_cache(tmp_path / "there", "tiny/base", full)
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), offline_in(tmp_path / "there"))
    lock = read_lock(lock_path(load_recipe(path)))
    other = folder_of(tmp_path / "other", repo_files(stub_models["base"], {**TOKENIZER, "tokenizer.json": b"{}"}))
    add_to_cache(tmp_path / "here", "tiny/base", other, commit=commit)
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), offline_in(tmp_path / "here"), lock=lock, mode="locked")
    assert "differ from the lock (a damaged Hugging Face cache?): tokenizer.json" in info.value.message


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json"])
@pytest.mark.parametrize("mode", ["update", "locked", "frozen"])
def test_offline_a_locked_file_missing_from_the_cache_is_named(tmp_path, stub_models, missing, mode):
    full = folder_of(tmp_path / "full", repo_files(stub_models["base"], TOKENIZER))
    commit = add_to_cache(tmp_path / "hf", "tiny/base", full)
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), offline_in(tmp_path / "hf"))
    lock = read_lock(lock_path(load_recipe(path)))
    (tmp_path / "hf" / "models--tiny--base" / "snapshots" / commit / missing).unlink()
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), offline_in(tmp_path / "hf"), lock=lock, mode=mode)
    e = info.value
    assert e.message.startswith(f"tiny/base@{commit}: the local Hugging Face cache lacks {missing}, which the lock")
    assert e.hint.endswith(f"`hf download tiny/base {missing} --revision {commit}`") and e.key == "sources.base"


def test_frozen_online_says_to_build_without_frozen(tmp_path, stub_models):
    full = folder_of(tmp_path / "full", repo_files(stub_models["base"], TOKENIZER))
    commit = add_to_cache(tmp_path / "hf", "tiny/base", full)
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), offline_in(tmp_path / "hf"))
    (tmp_path / "hf" / "models--tiny--base" / "snapshots" / commit / "tokenizer.json").unlink()
    online = Session(Settings(offline=False, hf_cache=str(tmp_path / "hf")))
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), online, lock=read_lock(lock_path(load_recipe(path))), mode="frozen")
    assert "tokenizer.json" in info.value.message and "build once without --frozen" in info.value.hint


def test_offline_a_snapshot_with_no_tokenizer_is_refused_unless_the_cache_says_the_repo_has_none(tmp_path, stub_models):
    """A snapshot holding weights but no tokenizer (transformers loaded the model only) would
    merge into an output with no tokenizer, and a lock whose files an online build would
    not read: refused, unless huggingface_hub recorded the repo has no tokenizer_config.json."""
    weights_only = folder_of(tmp_path / "m", repo_files(stub_models["base"]))
    commit = add_to_cache(tmp_path / "partial", "tiny/base", weights_only, complete=False)
    path = recipe_at(tmp_path)
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), offline_in(tmp_path / "partial"))
    e = info.value
    assert f"tiny/base@{commit}: the local Hugging Face cache holds no tokenizer files" in e.message
    assert f"`hf download tiny/base --include 'tokenizer*' --revision {commit}`" in e.hint and e.key == "sources.base"
    add_to_cache(tmp_path / "complete", "tiny/base", weights_only)  # the repo has none, and the cache knows
    res = resolve(load_recipe(path), offline_in(tmp_path / "complete"))
    assert [f.name for f in res.sources["base"].locked.pin.files] == ["config.json", "model.safetensors"]


def test_offline_a_bin_snapshot_is_refused_unless_the_cache_says_the_repo_has_no_safetensors(tmp_path, stub_models):
    """Online, a repo with both formats is read as safetensors; offline, a snapshot holding
    only pytorch_model.bin must not be read in its place unless the repo has no safetensors."""
    both = repo_files(stub_models["base"], {**TOKENIZER, "pytorch_model.bin": b"a .bin checkpoint"})
    bin_only = folder_of(tmp_path / "m", {n: d for n, d in both.items() if n != "model.safetensors"})
    commit = add_to_cache(tmp_path / "partial", "tiny/base", bin_only, complete=False)
    path = recipe_at(tmp_path)
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), offline_in(tmp_path / "partial"))
    e = info.value
    assert f"tiny/base@{commit}: the local Hugging Face cache holds its pytorch_model.bin but no safetensors" in (
        e.message
    )
    assert f"`hf download tiny/base --include 'model*.safetensors*' --revision {commit}`" in e.hint
    add_to_cache(tmp_path / "complete", "tiny/base", bin_only)  # the repo is .bin only, and the cache knows
    res = resolve(load_recipe(path), offline_in(tmp_path / "complete"))
    assert "pytorch_model.bin" in [f.name for f in res.sources["base"].locked.pin.files]


def test_an_online_fetch_records_what_the_repo_lacks_so_offline_builds_take_it(fake_hub, tmp_path, stub_models):
    from fakehub import Repo

    files = {n: d for n, d in repo_files(stub_models["base"]).items() if n != "model.safetensors"}
    fake_hub.repos["tiny/old"] = Repo(private=False)
    commit = fake_hub.commit("tiny/old", files | {"pytorch_model.bin": b"a .bin checkpoint"})
    online = fetch(Source("o", hf="tiny/old"), Settings())
    assert online.commit == commit
    no_exist = online.folder.parent.parent / ".no_exist" / commit
    assert sorted(p.name for p in no_exist.iterdir()) == [
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer_config.json",
    ]
    assert fetch(Source("o", hf="tiny/old", revision=commit), Settings(offline=True)).folder == online.folder


# The Hub failing, through huggingface_hub's real client against the fake Hub (tests/fakehub.py).


def on_fake_hub(fake_hub, stub: Path, repo: str = "tiny/base", **how) -> str:
    """A stub model with a tokenizer as `repo` on the fake Hub (`how`: Repo's fields); its commit."""
    from fakehub import Repo

    fake_hub.repos[repo] = Repo(private=False, **how)
    return fake_hub.commit(repo, repo_files(stub, TOKENIZER))


def hub_failure(path: Path, session: Session | None = None) -> SourceError:
    """The error `mergepkg lock` of the recipe at `path` fails with; no lock written."""
    with pytest.raises(SourceError) as info:
        lock_recipe(load_recipe(path), session or Session())
    assert info.value.key == "sources.base" and not lock_path(load_recipe(path)).exists()
    return info.value


def test_a_small_file_damaged_in_transit_is_never_pinned(fake_hub, tmp_path, stub_models):
    """config.json is no LFS file: its blob is named by its git blob sha1, which was not
    checked. The damaged bytes were pinned in the lock and built from, and the correct
    ones, downloaded elsewhere, refused as "differ from the lock"."""
    import hashlib
    import shutil

    on_fake_hub(fake_hub, stub_models["base"])
    fake_hub.fault(r"/resolve/.*/config\.json$", method="GET", corrupt=True, times=1)
    path = recipe_at(tmp_path)
    for _ in range(2):  # the damaged blob stays in the cache: refused every time
        e = hub_failure(path)
        assert "does not hold the git blob sha1 its Hugging Face cache blob's name gives it" in e.message
        assert "delete that repo from the Hugging Face cache" in e.hint
    shutil.rmtree(tmp_path / "hf-cache" / "models--tiny--base")  # as the hint says
    lock_recipe(load_recipe(path), Session())
    lock = read_lock(lock_path(load_recipe(path)))
    assert lock is not None
    config = next(f for f in lock.sources["base"].pin.files if f.name == "config.json")
    assert config.sha256 == hashlib.sha256((stub_models["base"] / "config.json").read_bytes()).hexdigest()


def test_a_locked_build_from_an_empty_cache_says_the_hub_failed_not_that_it_is_offline(
    fake_hub, tmp_path, stub_models, monkeypatch
):
    commit = on_fake_hub(fake_hub, stub_models["base"])
    path = recipe_at(tmp_path)
    lock_recipe(load_recipe(path), Session())
    lock = read_lock(lock_path(load_recipe(path)))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    no_backoff(monkeypatch)
    fake_hub.fault(r"^/api/models/tiny/base/tree/", status=500)
    with pytest.raises(SourceError) as info:
        resolve(load_recipe(path), Session(), lock=lock, mode="locked").source_folder("base")
    e = info.value
    assert e.message.startswith(f"the Hub answered 500 for tiny/base@{commit}") and "offline" not in e.message
    assert fake_hub.url in e.hint and "HF_HUB_OFFLINE=1" in e.hint and "unset" not in e.hint


@pytest.mark.parametrize("token", [None, "hf_test_token"])
def test_a_gated_repo_says_so_and_how_to_get_access(fake_hub, tmp_path, stub_models, monkeypatch, token):
    """Listed to anyone, its files to no one without access (401 with no token, 403 with
    one): huggingface_hub's GatedRepoError is a RepositoryNotFoundError, so it read
    "no such model on the Hugging Face Hub"."""
    on_fake_hub(fake_hub, stub_models["base"], gated=True)
    if token is None:
        monkeypatch.delenv("HF_TOKEN")
    e = hub_failure(recipe_at(tmp_path))
    assert e.message == "tiny/base is gated: request access on its Hub page, then `hf auth login` or set HF_TOKEN"
    assert f"{fake_hub.url}/tiny/base" in e.hint and ("401" if token is None else "403") in e.hint


def test_an_invalid_token_is_one_line_with_the_login_hint(fake_hub, tmp_path, stub_models, monkeypatch):
    """It was huggingface_hub's message on four lines (a link to MDN among them), and "check the network"."""
    on_fake_hub(fake_hub, stub_models["base"])
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_token")
    e = hub_failure(recipe_at(tmp_path))
    assert e.message == "the Hub refused access to tiny/base@main (401): Invalid credentials in Authorization header"
    assert "hf auth login" in e.hint and "HF_TOKEN" in e.hint and "network" not in e.hint


def test_a_rate_limit_and_a_file_the_hub_lacks_get_their_own_hints(fake_hub, tmp_path, stub_models, monkeypatch):
    """Both said "check the network, or set HF_HUB_OFFLINE=1"."""
    no_backoff(monkeypatch)
    on_fake_hub(fake_hub, stub_models["base"])
    path = recipe_at(tmp_path)
    limited = fake_hub.fault(r"/resolve/.*/config\.json$", status=429, headers={"Retry-After": "1"})
    e = hub_failure(path)
    assert e.message.startswith("the Hub rate-limited the requests for tiny/base@main (429)")
    assert "run it again" in e.hint and "hf auth login" in e.hint and "network" not in e.hint
    limited.times = 0  # config.json was not downloaded: asked for again
    fake_hub.fault(r"/resolve/.*/config\.json$", status=404, headers={"X-Error-Code": "EntryNotFound"})
    e = hub_failure(path)
    assert e.message == "tiny/base@main has no file config.json"
    assert "revision" in e.hint and "network" not in e.hint
