"""mergepkg.lock: what it records, that it is stable, `--locked` and `--frozen`, hub
sources pinned to a commit until `mergepkg lock --upgrade`, local content changes,
no-op rebuilds that read nothing, and partial rebuilds after an edit.

Hub sources run the real huggingface_hub code offline against a Hugging Face cache
laid out by hand (tests/hfcache.py). The CLI runs in-process through `main(argv)`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import THREE, build_recipe, load_tensors
from hfcache import add_to_cache

from mergepkg._toml import tomllib
from mergepkg.cli.app import main
from mergepkg.errors import LockError, SourceError
from mergepkg.lockfile import LOCK_VERSION, read_lock, recipe_hash
from mergepkg.recipe.parse import load_recipe
from mergepkg.settings import Settings
from mergepkg.store.local import MANIFEST
from mergepkg.store.session import Session

if TYPE_CHECKING:
    import torch

# THREE written differently: comments, key order inside tables and inline tables,
# number spelling. Nothing it says has changed.
THREE_RESTYLED = """
# a comment at the top
[steps.a]            # the first merge
base = "base"
inputs = [
  { weight = 1, model = "ft1" },      # 1 == 1.0
  { model = "ft2", weight = 5e-1 },   # 5e-1 == 0.5
]
method = "task_arithmetic"

[steps.b]
inputs = [{ weight = 0.50, model = "a" }, { model = "ft3", weight = 0.5 }]
method = "linear"    # method after inputs

[steps.z]
inputs = [{ model = "ft2", weight = 0.3 }, { model = "ft3", weight = 0.7 }]
method = "linear"
"""

# THREE with its step tables in another order (b, z, a): still the same recipe.
THREE_REORDERED = """
[steps.z]
method = "linear"
inputs = [{ model = "ft2", weight = 0.3 }, { model = "ft3", weight = 0.7 }]

[steps.b]
method = "linear"
inputs = [{ model = "a", weight = 0.5 }, { model = "ft3", weight = 0.5 }]

[steps.a]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 0.5 }]
"""

HUB = """[package]
name = "hub"
version = "0.1.0"

[sources]
base = {{ hf = "tiny/base" }}
ft = {{ hf = "tiny/ft", revision = "{rev}" }}

[steps.m]
method = "task_arithmetic"
base = "base"
inputs = [{{ model = "ft", weight = 1.0 }}]
"""


# -- helpers -------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    """In-process `mergepkg ARGS`: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def counts(err: str) -> tuple[int, int]:
    """(built, reused) from the `done: N built, M reused` line of `mergepkg build`."""
    m = re.search(r"done: (\d+) built, (\d+) reused", err)
    assert m, err
    return int(m[1]), int(m[2])


def lockf(recipe: Path) -> Path:
    """The lock of a recipe file: named after it, beside it (r.toml -> r.lock)."""
    return recipe.with_suffix(".lock")


def lock_data(recipe: Path) -> dict:
    return tomllib.loads(lockf(recipe).read_text())


def locked_keys(recipe: Path) -> dict[str, str]:
    return {s["name"]: s["key"] for s in lock_data(recipe)["step"]}


def locked_source(recipe: Path, name: str) -> dict:
    (src,) = [s for s in lock_data(recipe)["source"] if s["name"] == name]
    return src


def store_keys(home: Path) -> set[str]:
    root = home / "store"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def local_recipe(path: Path, sources: dict[str, Path], body: str) -> Path:
    head = '[package]\nname = "local"\nversion = "0.1.0"\n\n[sources]\n'
    head += "".join(f'{n} = {{ path = "{p}" }}\n' for n, p in sources.items())
    return write_text(path, head + body)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "error:" in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, f"{f!r} not in:\n{err}"


# -- what the lock records ---------------------------------------------------------------
def test_lock_records_version_recipe_hash_used_sources_files_and_steps(write_recipe, models, tmp_path):
    path = write_recipe(THREE)
    report = build_recipe(path)
    data = lock_data(path)
    assert data["version"] == LOCK_VERSION == 1
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", data["recipe"])
    assert data["recipe"] == recipe_hash(load_recipe(path))
    # every used source, no unused one (the recipe names every fixture model)
    sources = {s["name"]: s for s in data["source"]}
    assert set(sources) == {"base", "ft1", "ft2", "ft3"}
    for name, src in sources.items():
        assert src["path"] == str(models[name])  # written absolute: kept absolute
        assert "commit" not in src and "hf" not in src and "revision" not in src
        files = {f["name"]: f for f in src["files"]}
        assert [f["name"] for f in src["files"]] == sorted(files)
        assert set(files) == {p.name for p in models[name].iterdir()}
        assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
        for fname, rec in files.items():
            real = models[name] / fname
            assert rec["size"] == real.stat().st_size
            assert rec["sha256"] == sha256(real), (name, fname)
    # every step with its method, key and digest
    steps = {s["name"]: s for s in data["step"]}
    assert set(steps) == {"a", "b", "z"}
    for name, st in steps.items():
        assert st["method"] == {"a": "task_arithmetic", "b": "linear", "z": "linear"}[name]
        assert re.fullmatch(r"[0-9a-f]{64}", st["key"]) and st["key"] == report.resolution.keys[name]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", st["digest"]) and st["digest"] == report.artifacts[name].digest
    assert len({st["key"] for st in steps.values()}) == 3
    # the library reads back what was written
    lock = read_lock(lockf(path))
    assert lock == report.lock


def test_lock_records_only_the_files_a_merge_uses(models, tmp_path):
    folder = tmp_path / "models" / "ft1"
    shutil.copytree(models["ft1"], folder)
    (folder / "README.md").write_text("# a model card\n")
    (folder / "training_args.json").write_text("{}\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "x.txt").write_text("x")
    path = local_recipe(
        tmp_path / "r.toml",
        {"base": models["base"], "ft1": folder.relative_to(tmp_path)},  # written relative
        '[steps.m]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "ft1", weight = 1.0 }]\n',
    )
    build_recipe(path)
    src = locked_source(path, "ft1")
    assert src["path"] == "models/ft1"  # relative to the recipe
    names = [f["name"] for f in src["files"]]
    assert names == sorted(p.name for p in models["ft1"].iterdir())
    assert "README.md" not in names and "training_args.json" not in names


def test_lock_records_hub_revision_commit_and_file_hashes(hub, models, tmp_path):
    commit_base = add_to_cache(hub, "tiny/base", models["base"])
    commit_ft = add_to_cache(hub, "tiny/ft", models["ft1"], revision="v1")
    path = write_text(tmp_path / "r.toml", HUB.format(rev="v1"))
    build_recipe(path)
    base, ft = locked_source(path, "base"), locked_source(path, "ft")
    assert (base["hf"], base["revision"], base["commit"]) == ("tiny/base", "main", commit_base)
    assert (ft["hf"], ft["revision"], ft["commit"]) == ("tiny/ft", "v1", commit_ft)
    assert "path" not in ft
    snapshot = hub / "models--tiny--ft" / "snapshots" / commit_ft
    assert [f["name"] for f in ft["files"]] == sorted(p.name for p in snapshot.iterdir())
    for rec in ft["files"]:
        real = models["ft1"] / rec["name"]
        assert (rec["size"], rec["sha256"]) == (real.stat().st_size, sha256(real))


def test_lock_output_is_stable_and_sorted(models, tmp_path, capsys):
    # sources and steps written out of alphabetical order
    path = local_recipe(
        tmp_path / "r.toml",
        {"zeta": models["ft2"], "alpha": models["base"], "mid": models["ft1"]},
        '[steps.zz]\nmethod = "linear"\ninputs = [{ model = "aa", weight = 0.5 }, { model = "mid", weight = 0.5 }]\n\n'
        '[steps.aa]\nmethod = "task_arithmetic"\nbase = "alpha"\n'
        'inputs = [{ model = "mid", weight = 0.5 }, { model = "zeta", weight = 0.5 }]\n',
    )
    lock_file = lockf(path)
    code, out, err = cli(capsys, "lock", path)
    assert code == 0, err
    assert out.strip() == str(lock_file)
    first = lock_file.read_bytes()
    data = tomllib.loads(first.decode())
    assert [s["name"] for s in data["source"]] == ["alpha", "mid", "zeta"]
    assert [s["name"] for s in data["step"]] == ["aa", "zz"]
    assert all("digest" not in s for s in data["step"])  # nothing built yet
    assert first.decode().startswith("#")  # the "written by mergepkg" header
    code, _, err = cli(capsys, "lock", path)
    assert code == 0 and "up to date" in err
    assert lock_file.read_bytes() == first
    # a hand edit no key notices is rewritten, and said to be (it printed "up to date")
    lock_file.write_text(first.decode().replace('method = "linear"', 'method = "zzz"', 1))
    code, _, err = cli(capsys, "lock", path)
    assert code == 0 and "rewritten: no pin moved" in err and lock_file.read_bytes() == first
    # a build adds the digests, keys unchanged; then lock and build again change nothing
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert code == 0, err
    built = lock_file.read_bytes()
    assert locked_keys(path) == {s["name"]: s["key"] for s in data["step"]}
    assert all(s["digest"].startswith("sha256:") for s in lock_data(path)["step"])
    mtime = lock_file.stat().st_mtime_ns
    for args in (("lock", path), ("build", path, "--out", tmp_path / "o", "-q"), ("lock", path)):
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        assert lock_file.read_bytes() == built
    assert lock_file.stat().st_mtime_ns == mtime  # an unchanged lock is not even rewritten


def test_lock_without_a_store_keeps_the_locked_digests(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(THREE)
    build_recipe(path)
    before = lockf(path).read_bytes()
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "another-home"))
    code, _, err = cli(capsys, "lock", path)
    assert code == 0, err
    assert lockf(path).read_bytes() == before


# -- build writes the lock; --locked -----------------------------------------------------
def test_build_writes_and_updates_the_lock(write_recipe, tmp_path):
    path = write_recipe(THREE)
    assert not lockf(path).exists()
    first = build_recipe(path)
    assert locked_keys(path) == first.resolution.keys
    path.write_text(path.read_text().replace('model = "ft3", weight = 0.5', 'model = "ft3", weight = 0.25'))
    second = build_recipe(path)
    assert locked_keys(path) == second.resolution.keys
    assert second.resolution.keys["b"] != first.resolution.keys["b"]
    assert second.resolution.keys["a"] == first.resolution.keys["a"]
    assert lock_data(path)["recipe"] == recipe_hash(load_recipe(path)) != first.lock.recipe_hash


def test_comments_key_order_and_number_spelling_change_nothing(write_recipe, tmp_path, capsys):
    path = write_recipe(THREE)
    out = tmp_path / "o"
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0, err
    before, keys = lockf(path).read_bytes(), locked_keys(path)
    write_recipe(THREE_RESTYLED)
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--locked")
    assert code == 0, err
    assert counts(err) == (0, 3)
    assert lockf(path).read_bytes() == before
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0 and counts(err) == (0, 3)
    assert locked_keys(path) == keys and lockf(path).read_bytes() == before


def test_reordering_step_tables_does_not_make_locked_fail(write_recipe, tmp_path, capsys):
    """The order of [steps.*] tables says nothing about what is built (outputs are a set
    of folders), so it must not make `--locked` fail."""
    path = write_recipe(THREE)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert code == 0, err
    keys = locked_keys(path)
    write_recipe(THREE_REORDERED)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert code == 0, err
    assert counts(err) == (0, 3)
    assert locked_keys(path) == keys


def test_changed_number_makes_locked_fail_naming_the_step_and_its_dependents(
    write_recipe, tmp_path, mergepkg_home, capsys
):
    path = write_recipe(THREE)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert code == 0, err
    lock_before, stored = lockf(path).read_bytes(), store_keys(mergepkg_home)
    keys = locked_keys(path)
    # upstream edit: a and b change, z does not
    write_recipe(THREE.replace('model = "ft2", weight = 0.5', 'model = "ft2", weight = 0.6'))
    code, out, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert_clean_error(
        code, err, "out of date", "step 'a' changed", "step 'b' changed", keys["a"][:12], "mergepkg lock"
    )
    assert "'z'" not in err and out == ""
    assert "hint:" in err.split("out of date")[1]
    assert lockf(path).read_bytes() == lock_before  # not rewritten
    assert store_keys(mergepkg_home) == stored  # nothing built
    # downstream edit only: b alone is named
    write_recipe(THREE.replace('model = "ft3", weight = 0.5', 'model = "ft3", weight = 0.4'))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert_clean_error(code, err, "step 'b' changed", "mergepkg lock")
    assert "'a'" not in err and "'z'" not in err
    # the library raises LockError with the lock file as location
    with pytest.raises(LockError) as info:
        build_recipe(path, mode="locked")
    assert info.value.file == str(lockf(path))
    # `mergepkg lock` makes --locked pass again, and then the build builds b only
    code, _, err = cli(capsys, "lock", path)
    assert code == 0 and "step 'b' changed" in err
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert code == 0, err
    assert counts(err) == (1, 2)


DRAWN = """
[steps.d]
method = "dare_ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 1.0, density = 0.5 }]
"""


def test_a_seed_given_to_the_build_is_locked_and_locked_builds_use_it(write_recipe, tmp_path, capsys):
    """`--seed` draws other DARE masks than the recipe's seed: the lock records the seed its
    keys were made with, so --locked (here and in the output folder) builds those bytes."""
    path = write_recipe(DRAWN)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "seven", "-q", "--seed", "7")
    assert code == 0, err
    assert lock_data(path)["seed"] == 7
    seven = locked_keys(path)
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "again", "-q", "--locked")
    assert code == 0 and counts(err) == (0, 1), err
    again, before = load_tensors(tmp_path / "again"), load_tensors(tmp_path / "seven")
    assert again.keys() == before.keys() and all(a.equal(before[k]) for k, a in again.items())
    bundled = tmp_path / "seven" / "mergepkg.toml"  # the recipe and lock the output folder carries
    code, _, err = cli(capsys, "build", bundled, "--out", tmp_path / "rebuilt", "-q", "--locked")
    assert code == 0 and counts(err) == (0, 1), err
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "nine", "-q", "--locked", "--seed", "9")
    assert_clean_error(code, err, "step 'd' changed", "the seed is 9 (locked: 7)")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "own", "-q")  # the recipe's seed again
    assert code == 0, err
    assert "seed" not in lock_data(path) and locked_keys(path) != seven


def test_locked_and_frozen_fail_without_a_lock(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    for flag in ("--locked", "--frozen"):
        code, out, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", flag)
        assert_clean_error(code, err, "lock", "mergepkg lock")
        assert out == ""
    assert not lockf(path).exists()
    assert not (tmp_path / "o").exists()
    assert store_keys(mergepkg_home) == set()
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "--locked", "--frozen")
    assert code == 2 and "--locked and --frozen exclude each other" in err, err  # a usage error


def test_a_damaged_lock_is_a_clean_error(write_recipe, tmp_path, capsys):
    path = write_recipe(THREE)
    build_recipe(path)
    lock_file = lockf(path)
    lock_file.write_text(lock_file.read_text().replace("version = 1", "version = 99"))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert_clean_error(code, err, "99", "a newer mergepkg wrote it")
    lock_file.write_text("this is [ not toml")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert_clean_error(code, err, str(lock_file))


# -- hub sources: a moved branch does not move the build ---------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_moved_branch_keeps_the_locked_commit_until_upgrade(hub, models, tmp_path, capsys):
    add_to_cache(hub, "tiny/base", models["base"])
    commit_a = add_to_cache(hub, "tiny/ft", models["ft1"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    out = tmp_path / "o"
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0, err
    assert counts(err) == (1, 0)
    assert locked_source(path, "ft")["commit"] == commit_a
    assert_close(load_tensors(out), load_tensors(models["ft1"]))
    lock_a = lockf(path).read_bytes()

    commit_b = add_to_cache(hub, "tiny/ft", models["ft2"])  # main moves to B
    assert commit_b != commit_a
    assert (hub / "models--tiny--ft" / "refs" / "main").read_text() == commit_b
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0, err
    assert counts(err) == (0, 1)  # still A: nothing rebuilt
    assert lockf(path).read_bytes() == lock_a
    assert_close(load_tensors(out), load_tensors(models["ft1"]))
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--locked")
    assert code == 0, err
    assert counts(err) == (0, 1)

    code, _, err = cli(capsys, "lock", path, "--upgrade")
    assert code == 0, err
    assert "'ft'" in err and commit_a[:12] in err and commit_b[:12] in err
    assert locked_source(path, "ft")["commit"] == commit_b
    ft_files = {f["name"]: f["sha256"] for f in locked_source(path, "ft")["files"]}
    assert ft_files["model.safetensors"] == sha256(models["ft2"] / "model.safetensors")
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--locked")
    assert code == 0, err
    assert counts(err) == (1, 0)
    assert_close(load_tensors(out), load_tensors(models["ft2"]))


def test_upgrade_of_one_source_moves_only_that_source(hub, models, tmp_path, capsys):
    base_a = add_to_cache(hub, "tiny/base", models["base"])
    add_to_cache(hub, "tiny/ft", models["ft1"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert code == 0, err
    base_b = add_to_cache(hub, "tiny/base", models["ft3"])  # both branches move
    ft_b = add_to_cache(hub, "tiny/ft", models["ft2"])
    code, _, err = cli(capsys, "lock", path, "--upgrade", "ft")
    assert code == 0, err
    assert locked_source(path, "ft")["commit"] == ft_b
    assert locked_source(path, "base")["commit"] == base_a
    code, _, err = cli(capsys, "lock", path, "--upgrade", "base")
    assert code == 0, err
    assert (locked_source(path, "base")["commit"], locked_source(path, "ft")["commit"]) == (base_b, ft_b)
    # naming sources needs --upgrade
    code, _, err = cli(capsys, "lock", path, "ft")
    assert code == 2 and "--upgrade" in err


def test_upgrade_of_an_unknown_source_is_an_error(hub, models, tmp_path, capsys):
    """`mergepkg lock --upgrade fr` (a typo of `ft`) must not silently upgrade nothing."""
    add_to_cache(hub, "tiny/base", models["base"])
    add_to_cache(hub, "tiny/ft", models["ft1"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    code, _, err = cli(capsys, "lock", path)
    assert code == 0, err
    add_to_cache(hub, "tiny/ft", models["ft2"])
    before = lockf(path).read_bytes()
    code, _, err = cli(capsys, "lock", path, "--upgrade", "fr")
    assert lockf(path).read_bytes() == before
    assert code != 0 and "fr" in err, err


def test_a_changed_revision_request_is_re_resolved(hub, models, tmp_path, capsys):
    add_to_cache(hub, "tiny/base", models["base"])
    commit_a = add_to_cache(hub, "tiny/ft", models["ft1"])
    commit_v2 = add_to_cache(hub, "tiny/ft", models["ft2"], revision="v2")
    add_to_cache(hub, "tiny/ft", models["ft1"])  # main back on A
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    assert cli(capsys, "build", path, "--out", tmp_path / "o", "-q")[0] == 0
    assert locked_source(path, "ft")["commit"] == commit_a
    path.write_text(HUB.format(rev="v2"))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--locked")
    assert_clean_error(code, err, "source 'ft' now asks for tiny/ft@v2", "mergepkg lock")
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q")
    assert code == 0 and counts(err) == (1, 0)
    assert (locked_source(path, "ft")["revision"], locked_source(path, "ft")["commit"]) == ("v2", commit_v2)


# -- --frozen ----------------------------------------------------------------------------
def test_frozen_builds_from_the_lock_without_touching_the_network(hub, models, tmp_path, monkeypatch, capsys):
    add_to_cache(hub, "tiny/base", models["base"])
    commit_a = add_to_cache(hub, "tiny/ft", models["ft1"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    assert cli(capsys, "build", path, "--out", tmp_path / "o", "-q")[0] == 0
    lock_before = lockf(path).read_bytes()
    add_to_cache(hub, "tiny/ft", models["ft2"])  # the branch moves; frozen must not care
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("MERGEPKG_OFFLINE", raising=False)
    assert Settings().offline is False
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "fresh-home"))  # empty store: really builds
    calls = _install_no_network(monkeypatch)
    out = tmp_path / "frozen-out"
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--frozen")
    assert code == 0, err
    assert counts(err) == (1, 0)
    assert calls == []
    assert_close(load_tensors(out), load_tensors(models["ft1"]))
    assert lockf(path).read_bytes() == lock_before
    report = build_recipe(path, mode="frozen")
    assert report.built == [] and report.resolution.sources["ft"].locked.pin.commit == commit_a


def _install_no_network(monkeypatch) -> list:
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network access refused by the test")

    import huggingface_hub

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    real = huggingface_hub.snapshot_download

    def snapshot_download(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            refuse(*args)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_frozen_fails_cleanly_when_the_recipe_asks_for_something_not_locked(hub, models, tmp_path, capsys):
    add_to_cache(hub, "tiny/base", models["base"])
    add_to_cache(hub, "tiny/ft", models["ft1"])
    add_to_cache(hub, "tiny/ft", models["ft2"], revision="v2")
    add_to_cache(hub, "tiny/ft3", models["ft3"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    assert cli(capsys, "build", path, "--out", tmp_path / "o", "-q")[0] == 0
    # a new source
    text = HUB.format(rev="main").replace("[steps.m]", 'extra = { hf = "tiny/ft3" }\n\n[steps.m]')
    text = text.replace(
        'inputs = [{ model = "ft", weight = 1.0 }]',
        'inputs = [{ model = "ft", weight = 1.0 }, { model = "extra", weight = 0.5 }]',
    )
    path.write_text(text)
    code, _out, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--frozen")
    line = text.splitlines().index('extra = { hf = "tiny/ft3" }') + 1
    assert_clean_error(code, err, f"{path}:{line}: sources.extra", "'extra' is not in the lock", "mergepkg lock")
    with pytest.raises(LockError):
        build_recipe(path, mode="frozen")
    # the same source asking for another revision
    path.write_text(HUB.format(rev="v2"))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--frozen")
    assert_clean_error(code, err, "sources.ft", "'ft' is not in the lock", "mergepkg lock")
    # a changed parameter
    path.write_text(HUB.format(rev="main").replace("weight = 1.0", "weight = 0.5"))
    code, _, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--frozen")
    assert_clean_error(code, err, "step 'm' changed", "mergepkg lock")


def test_frozen_names_repo_and_commit_missing_from_the_cache(hub, models, tmp_path, monkeypatch, capsys, mergepkg_home):
    add_to_cache(hub, "tiny/base", models["base"])
    commit_a = add_to_cache(hub, "tiny/ft", models["ft1"])
    path = write_text(tmp_path / "r.toml", HUB.format(rev="main"))
    assert cli(capsys, "build", path, "--out", tmp_path / "o", "-q")[0] == 0
    commit_b = add_to_cache(hub, "tiny/ft", models["ft2"])
    shutil.rmtree(hub / "models--tiny--ft" / "snapshots" / commit_a)  # the locked commit is gone
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = _install_no_network(monkeypatch)
    # every step stored: no source is needed, so none is looked for
    assert cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--frozen")[0] == 0
    shutil.rmtree(mergepkg_home / "store")  # now the step must be built from its sources
    code, _out, err = cli(capsys, "build", path, "--out", tmp_path / "o", "-q", "--frozen")
    line = HUB.format(rev="main").splitlines().index('ft = { hf = "tiny/ft", revision = "main" }') + 1
    assert_clean_error(
        code, err, f"{path}:{line}: sources.ft", f"tiny/ft@{commit_a}", "not in the local Hugging Face cache"
    )
    assert commit_b not in err and calls == []
    with pytest.raises(SourceError) as info:
        build_recipe(path, mode="frozen")
    assert commit_a in info.value.message and "tiny/ft" in info.value.message


# -- local sources whose content changed -------------------------------------------------
def test_changed_local_source_is_re_pinned_and_its_dependents_rebuilt(models, tmp_path, capsys):
    folder = tmp_path / "models" / "ft1"
    shutil.copytree(models["ft1"], folder)
    srcs = {"base": models["base"], "ft1": folder, "ft2": models["ft2"], "ft3": models["ft3"]}
    path = local_recipe(tmp_path / "r.toml", srcs, THREE)
    out = tmp_path / "o"
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0 and counts(err) == (3, 0)
    keys = locked_keys(path)
    # new content for ft1 (a new file: new inode, size unchanged)
    tmp = folder / "model.safetensors.new"
    shutil.copyfile(models["ft3"] / "model.safetensors", tmp)
    os.replace(tmp, folder / "model.safetensors")
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--locked")
    assert_clean_error(code, err, "source 'ft1' has different content than locked", "mergepkg lock")
    assert "'ft2'" not in err and "'z'" not in err
    code, _, err = cli(capsys, "build", path, "--out", out, "-q", "--frozen")
    assert_clean_error(code, err, "source 'ft1' has different content than locked")
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0 and counts(err) == (2, 1)
    new = locked_keys(path)
    assert new["z"] == keys["z"] and new["a"] != keys["a"] and new["b"] != keys["b"]
    files = {f["name"]: f for f in locked_source(path, "ft1")["files"]}
    assert files["model.safetensors"]["sha256"] == sha256(models["ft3"] / "model.safetensors")
    # the same content in place again (in-place write, same inode): re-hashed, back to the old keys
    (folder / "model.safetensors").write_bytes((models["ft1"] / "model.safetensors").read_bytes())
    code, _, err = cli(capsys, "build", path, "--out", out, "-q")
    assert code == 0 and counts(err) == (0, 3)
    assert locked_keys(path) == keys


# -- no-op and partial rebuilds ------------------------------------------------------------
def test_unchanged_rebuild_hashes_nothing_and_reads_no_tensor_data(write_recipe, tmp_path, monkeypatch):
    import mergepkg.builder.steps
    import mergepkg.builder.verify
    import mergepkg.io.reader
    from mergepkg.builder.build import build

    path = write_recipe(THREE)
    first = Session()
    report = build(load_recipe(path), first, out=tmp_path / "o")
    assert sorted(report.built) == ["a", "b", "z"]
    assert first.hashes.hashed == sum(len(s.locked.pin.files) for s in report.resolution.sources.values()) > 0
    lock_before = lockf(path).read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("an unchanged rebuild read tensor data")

    monkeypatch.setattr(mergepkg.builder.steps, "lay_out", forbidden)
    monkeypatch.setattr(mergepkg.builder.steps, "build_step", forbidden)
    monkeypatch.setattr(mergepkg.io.reader.ModelReader, "get", forbidden)
    monkeypatch.setattr(mergepkg.builder.verify, "model_digest", forbidden)
    second = Session()  # fresh: no in-process memory of the first build
    report = build(load_recipe(path), second, out=tmp_path / "o")
    assert report.built == [] and sorted(report.reused) == ["a", "b", "z"]
    assert second.hashes.hashed == 0
    assert lockf(path).read_bytes() == lock_before
    assert sorted(report.outputs) == ["b", "z"]
    assert all((folder / "model.safetensors").is_file() for folder in report.outputs.values())


def test_editing_a_step_rebuilds_it_and_its_dependents_only(write_recipe, tmp_path, mergepkg_home):
    path = write_recipe(THREE)
    first = build_recipe(path)
    keys = first.resolution.keys
    # upstream edit: a and its dependent b
    write_recipe(THREE.replace('model = "ft1", weight = 1.0', 'model = "ft1", weight = 0.9'))
    report = build_recipe(path)
    assert (report.built, sorted(report.reused)) == (["a", "b"], ["z"])
    assert report.resolution.keys["z"] == keys["z"]
    assert report.resolution.keys["a"] != keys["a"] and report.resolution.keys["b"] != keys["b"]
    # downstream edit: b only, a's artifact reused
    write_recipe(THREE.replace('model = "ft3", weight = 0.5', 'model = "ft3", weight = 0.4'))
    report = build_recipe(path)
    assert (report.built, sorted(report.reused)) == (["b"], ["a", "z"])
    assert report.resolution.keys["a"] == keys["a"] and report.artifacts["a"].folder == first.artifacts["a"].folder
    # back to the original: everything is in the store already
    write_recipe(THREE)
    report = build_recipe(path)
    assert report.built == [] and report.resolution.keys == keys
    assert {k for k in keys.values()} <= store_keys(mergepkg_home)
    assert len(store_keys(mergepkg_home)) == 3 + 2 + 1
    for key in store_keys(mergepkg_home):
        assert (mergepkg_home / "store" / key / MANIFEST).is_file()


# -- where local paths are written from ----------------------------------------------------
LINEAR_MINE = (
    '[steps.m]\nmethod = "linear"\ninputs = [{ model = "mine", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
)


def lock_here(path: Path) -> list[str]:
    """`mergepkg lock` through the library: what changed."""
    from mergepkg.resolve.lock import lock_recipe

    return lock_recipe(load_recipe(path), Session()).changes


def test_an_absolute_path_stays_absolute_and_a_relative_one_relative_wherever_the_recipe_is(stub_models, tmp_path):
    """A project (recipe, lock and a model folder beside them) checked out at another
    depth: the relative path still names its folder, and so does the absolute one, which
    the lock and the recipe hash keep absolute (relative to the recipe, it would differ
    per checkout: `--locked` refused, and each checkout's `lock` flipped it)."""
    from mergepkg.resolve.resolution import resolve

    project = tmp_path / "project"
    shutil.copytree(stub_models["ft1"], project / "models" / "mine")
    path = write_text(
        project / "r.toml",
        f'[package]\nname = "p"\nversion = "0.1.0"\n\n[sources]\nmine = {{ path = "models/mine" }}\n'
        f'ft2 = {{ path = "{stub_models["ft2"]}" }}\n\n{LINEAR_MINE}',
    )
    assert lock_here(path) == ["new lock"]
    assert locked_source(path, "mine")["path"] == "models/mine"
    assert locked_source(path, "ft2")["path"] == str(stub_models["ft2"])
    elsewhere = tmp_path / "checkouts" / "deep" / "er" / "project"
    shutil.copytree(project, elsewhere)
    moved = elsewhere / "r.toml"
    recipe = load_recipe(moved)
    resolve(recipe, Session(), lock=read_lock(lockf(moved)), mode="locked")  # up to date
    before = lockf(moved).read_bytes()
    assert lock_here(moved) == []
    assert lockf(moved).read_bytes() == before


def test_a_locked_absolute_folder_that_is_gone_is_taken_at_the_locks_pin(stub_models, tmp_path):
    """The parser lets a missing folder through when the lock pins it there: as the lock
    names it (absolute)."""
    gone = tmp_path / "gone"
    shutil.copytree(stub_models["ft1"], gone)
    path = write_text(
        tmp_path / "r.toml",
        f'[package]\nname = "p"\nversion = "0.1.0"\n\n[sources]\nmine = {{ path = "{gone}" }}\n'
        f'ft2 = {{ path = "{stub_models["ft2"]}" }}\n\n{LINEAR_MINE}',
    )
    lock_here(path)
    shutil.rmtree(gone)
    assert load_recipe(path).sources["mine"].path == gone


# -- --upgrade of imported sources, renamed sources and steps ---------------------------------
LIB = """[package]
name = "lib"
version = "0.1.0"

[sources]
base = { hf = "tiny/base" }
ft = { hf = "tiny/ft" }

[steps.soup]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft", weight = 1.0 }]
"""

MAIN = """[package]
name = "main"
version = "0.1.0"

[sources]
soup = { recipe = "lib.toml", step = "soup" }
base = { hf = "tiny/base" }

[steps.final]
method = "linear"
inputs = [{ model = "soup", weight = 0.5 }, { model = "base", weight = 0.5 }]
"""


def upgrade(path: Path, *names: str) -> list[str]:
    """`mergepkg lock --upgrade NAMES` through the library: what changed."""
    from mergepkg.resolve.lock import lock_recipe

    return lock_recipe(load_recipe(path), Session(), upgrade=frozenset(names)).changes


def commits(path: Path) -> dict[str, str]:
    return {s["name"]: s.get("commit") for s in lock_data(path)["source"]}


def test_upgrade_names_an_imported_source_as_the_lock_does_or_the_import_for_all_inside_it(hub, stub_models, tmp_path):
    """`--upgrade soup::ft` (the lock's and the messages' name) moves that source alone;
    `--upgrade soup` every source of that import; `--upgrade soupp` is refused, naming it.
    (Before, `soup::ft` was refused and `soup` upgraded nothing, silently.)"""
    base_a = add_to_cache(hub, "tiny/base", stub_models["base"])
    ft_a = add_to_cache(hub, "tiny/ft", stub_models["ft1"])
    write_text(tmp_path / "lib.toml", LIB)
    path = write_text(tmp_path / "main.toml", MAIN)
    assert lock_here(path) == ["new lock"]
    assert commits(path) == {"base": base_a, "soup::base": base_a, "soup::ft": ft_a}
    base_b = add_to_cache(hub, "tiny/base", stub_models["ft3"])  # both branches move
    ft_b = add_to_cache(hub, "tiny/ft", stub_models["ft2"])

    changes = upgrade(path, "soup::ft")
    assert any(c.startswith("source 'soup::ft' has different content") for c in changes), changes
    assert commits(path) == {"base": base_a, "soup::base": base_a, "soup::ft": ft_b}
    upgrade(path, "soup")
    assert commits(path) == {"base": base_a, "soup::base": base_b, "soup::ft": ft_b}
    before = lockf(path).read_bytes()
    with pytest.raises(LockError) as info:
        upgrade(path, "soupp")
    assert "'soupp'" in info.value.message and "soup" in (info.value.hint or "")
    with pytest.raises(LockError):
        upgrade(path, "soup::fr")
    assert lockf(path).read_bytes() == before


def test_a_renamed_source_or_import_keeps_its_pin_and_its_steps_keys(hub, stub_models, tmp_path):
    """Renaming a hub source (same repo and revision), or an import, moves no pin: only
    `lock --upgrade` does (before, the renamed source took the branch's current commit)."""
    ft_a = add_to_cache(hub, "tiny/ft", stub_models["ft1"])
    add_to_cache(hub, "tiny/base", stub_models["base"])
    write_text(tmp_path / "lib.toml", LIB)
    path = write_text(tmp_path / "main.toml", MAIN)
    lock_here(path)
    keys = locked_keys(path)
    add_to_cache(hub, "tiny/ft", stub_models["ft2"])  # main moves

    write_text(tmp_path / "lib.toml", LIB.replace("ft = {", "tuned = {").replace('"ft"', '"tuned"'))
    changes = lock_here(path)
    assert changes == ["source 'soup::ft' was removed", "source 'soup::tuned' was added"], changes
    assert commits(path)["soup::tuned"] == ft_a and locked_keys(path) == keys
    path.write_text(MAIN.replace("soup = {", "mix = {").replace('model = "soup"', 'model = "mix"'))
    lock_here(path)
    assert commits(path)["mix::tuned"] == ft_a
    assert locked_keys(path) == {n.replace("soup::", "mix::"): k for n, k in keys.items()}
    assert upgrade(path, "mix::tuned") and commits(path)["mix::tuned"] != ft_a


def test_a_renamed_step_keeps_its_locked_digest_where_the_store_lacks_it(recipe_file, tmp_path):
    """The lock's digest is found by key (names are in no key): `mergepkg lock` in a home
    without the artifact kept it for the old name alone, and dropped it for the new."""
    from dataclasses import replace

    from mergepkg.lockfile import write_lock

    step = '[steps.{}]\nmethod = "linear"\ninputs = [{{ model = "ft1", weight = 0.5 }}, {{ model = "ft2", weight = 0.5 }}]\n'
    path = recipe_file(step.format("soup"))
    lock_here(path)
    lock = read_lock(lockf(path))
    digest = "sha256:" + "ab" * 32  # as a build elsewhere recorded it
    write_lock(lockf(path), replace(lock, steps={"soup": replace(lock.steps["soup"], digest=digest)}))
    recipe_file(step.format("mix"))
    assert lock_here(path) == ["step 'mix' was added", "step 'soup' was removed"]
    assert {s["name"]: s.get("digest") for s in lock_data(path)["step"]} == {"mix": digest}


def test_an_unused_entry_of_an_imported_file_edited_leaves_the_lock_current(hub, stub_models, tmp_path):
    """Flatten joins every source and step of an imported file; one that no step here reads
    is in no recipe hash, so editing it (a shared file's other merge) keeps `--locked`
    building (before: "main.lock is out of date: the recipe changed", naming nothing).
    An entry the recipe reads still counts."""
    from mergepkg.resolve.resolution import resolve

    add_to_cache(hub, "tiny/base", stub_models["base"])
    add_to_cache(hub, "tiny/ft", stub_models["ft1"])
    other = (
        '\n[sources.extra]\nhf = "tiny/base"\n\n[steps.other]\nmethod = "linear"\n'
        'inputs = [{{ model = "ft", weight = {w} }}, {{ model = "extra", weight = 0.5 }}]\n'
    )
    lib = write_text(tmp_path / "lib.toml", LIB + other.format(w=0.5))
    path = write_text(tmp_path / "main.toml", MAIN)
    lock_here(path)

    def locked() -> None:
        resolve(load_recipe(path), Session(), lock=read_lock(lockf(path)), mode="locked")

    lib.write_text(LIB + other.format(w=0.25))
    locked()
    lib.write_text(LIB + other.format(w=0.25).replace('hf = "tiny/base"', 'hf = "tiny/ft"'))
    locked()
    lib.write_text(LIB.replace("weight = 1.0", "weight = 0.5") + other.format(w=0.25))
    with pytest.raises(LockError, match="step 'soup::soup' changed"):
        locked()
