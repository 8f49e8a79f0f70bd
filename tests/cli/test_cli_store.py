"""The store from the command line: `plan`, `graph`, `cache list|info|path|gc`, `--out`
hard links and outputs replaced on rebuild, and steps of other recipes.

Every command runs in-process through `main(argv)`; stdout and stderr come from capsys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from filelock import FileLock
from helpers import THREE, load_tensors, plan_steps
from hfcache import add_to_cache

from mergepkg._toml import tomllib
from mergepkg.builder.outputs import MARKER
from mergepkg.cli.app import main
from mergepkg.cli.common import size
from mergepkg.store.local import MANIFEST

EDIT_B = ('model = "ft3", weight = 0.5', 'model = "ft3", weight = 0.25')
EDGES = {("base", "a"), ("ft1", "a"), ("ft2", "a"), ("a", "b"), ("ft3", "b"), ("ft2", "z"), ("ft3", "z")}
METHODS = {"a": "task_arithmetic", "b": "linear", "z": "linear"}


# -- helpers -------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    """In-process `mergepkg ARGS`: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def ok(capsys, *args) -> tuple[str, str]:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out, err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "error:" in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, f"{f!r} not in:\n{err}"


def lockf(recipe: Path) -> Path:
    return recipe.with_suffix(".lock")


def locked_keys(recipe: Path) -> dict[str, str]:
    return {s["name"]: s["key"] for s in tomllib.loads(lockf(recipe).read_text())["step"]}


def store_keys(home: Path) -> set[str]:
    root = home / "store"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def build(capsys, recipe: Path, out: Path, *extra) -> str:
    _, err = ok(capsys, "build", recipe, "--out", out, "-q", *extra)
    return err


def counts(err: str) -> tuple[int, int]:
    m = re.search(r"done: (\d+) built, (\d+) reused", err)
    assert m, err
    return int(m[1]), int(m[2])


def recipe_in(
    folder: Path, models: dict[str, Path], body: str, name: str = "recipe.toml", *, package: str = "", sources: str = ""
) -> Path:
    """A recipe file in `folder` whose [sources] name every fixture model (plus `sources`)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f'[package]\nname = "{Path(name).stem}"\nversion = "0.1.0"\n{package}\n[sources]\n{sources}'
    text += "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items()) + "\n" + body
    path = folder / name
    path.write_text(text)
    return path


def tensor_bytes(folder: Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_tensors(folder).values())


# -- plan ------------------------------------------------------------------------------
def test_plan_shows_keys_methods_and_what_a_build_would_do(write_recipe, models, tmp_path, capsys):
    path = write_recipe(THREE)
    out, err = ok(capsys, "plan", path)
    before = plan_steps(out)
    assert set(before) == {"a", "b", "z"}
    assert all(s["state"].startswith("build") for s in before.values())
    assert {n: s["method"] for n, s in before.items()} == METHODS
    assert "0 stored, 3 to build" in err
    assert not lockf(path).exists()  # plan writes no lock
    # bytes: every model is the same size; a reads base, ft1, ft2; b and z read two models
    m = tensor_bytes(models["base"])
    assert (before["a"]["reads"], before["a"]["writes"]) == (size(3 * m), size(m))
    assert (before["b"]["reads"], before["b"]["writes"]) == (size(2 * m), size(m))
    assert (before["z"]["reads"], before["z"]["writes"]) == (size(2 * m), size(m))
    assert f"(reads {size(7 * m)}, writes {size(3 * m)})" in err
    # sources appear as leaves of the tree, unused fixture models do not
    assert re.search(r"^[\s│├└─]*ft3 \S+", out, re.M) and "wide" not in out and "deep" not in out

    outdir = tmp_path / "o"
    build(capsys, path, outdir)
    keys = locked_keys(path)
    assert {n: s["key"] for n, s in before.items()} == {n: k[:12] for n, k in keys.items()}
    assert tensor_bytes(outdir / "b") == m  # "writes" was the real output size
    out, err = ok(capsys, "plan", path)
    after = plan_steps(out)
    assert {n: s["state"] for n, s in after.items()} == {"a": "stored", "b": "stored", "z": "stored"}
    assert {n: s["key"] for n, s in after.items()} == {n: k[:12] for n, k in keys.items()}
    assert "3 stored, 0 to build" in err

    # after an edit of b, only b is to build, with a new key
    path.write_text(path.read_text().replace(*EDIT_B))
    out, err = ok(capsys, "plan", path)
    edited = plan_steps(out)
    assert {n: s["state"] for n, s in edited.items() if s["state"] == "stored"} == {"a": "stored", "z": "stored"}
    assert edited["b"]["state"].startswith("build") and edited["b"]["key"] != keys["b"][:12]
    assert (edited["b"]["reads"], edited["b"]["writes"]) == (size(2 * m), size(m))
    assert "2 stored, 1 to build" in err
    build(capsys, path, outdir)
    assert locked_keys(path)["b"][:12] == edited["b"]["key"]


def test_plan_after_an_upstream_edit_marks_the_step_and_its_dependents(write_recipe, tmp_path, capsys):
    path = write_recipe(THREE)
    build(capsys, path, tmp_path / "o")
    path.write_text(path.read_text().replace('model = "ft1", weight = 1.0', 'model = "ft1", weight = 0.8'))
    out, _ = ok(capsys, "plan", path)
    states = {n: s["state"].split()[0] for n, s in plan_steps(out).items()}
    assert states == {"a": "build", "b": "build", "z": "stored"}


def test_plan_shows_an_edited_artifact_as_to_build(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    build(capsys, path, tmp_path / "o")
    key = locked_keys(path)["z"]
    shard = mergepkg_home / "store" / key / "model.safetensors"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # touched by hand
    out, _ = ok(capsys, "plan", path)
    assert plan_steps(out)["z"]["state"].startswith("build")


def test_plan_uses_the_locked_commit_of_a_moved_branch(tmp_path, models, monkeypatch, capsys):
    """After a build pinned tiny/ft@main to commit A and main moved to B, `build` reuses
    the step (A is locked); `plan` must say so too, with the locked key."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_cache(cache, "tiny/base", models["base"])
    add_to_cache(cache, "tiny/ft", models["ft1"])
    path = tmp_path / "hub.toml"
    path.write_text(
        '[package]\nname = "hub"\nversion = "0.1.0"\n[sources]\nbase = { hf = "tiny/base" }\n'
        'ft = { hf = "tiny/ft" }\n[steps.m]\nmethod = "task_arithmetic"\nbase = "base"\n'
        'inputs = [{ model = "ft", weight = 1.0 }]\n'
    )
    build(capsys, path, tmp_path / "o")
    key = locked_keys(path)["m"]
    add_to_cache(cache, "tiny/ft", models["ft2"])  # main moves
    assert counts(build(capsys, path, tmp_path / "o")) == (0, 1)  # the build keeps A
    out, err = ok(capsys, "plan", path)
    m = plan_steps(out)["m"]
    assert (m["key"], m["state"]) == (key[:12], "stored")
    assert "1 stored, 0 to build" in err


# -- graph -----------------------------------------------------------------------------
def parse_mermaid(text: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, str]]:
    lines = text.strip().splitlines()
    assert lines[0] == "graph LR"
    names, methods, edges = {}, {}, set()
    for line in lines[1:]:
        if m := re.fullmatch(r'\s*(n\d+)\(\["([^"]+)"\]\)', line):  # a source: stadium shape
            names[m[1]] = m[2]
        elif m := re.fullmatch(r'\s*(n\d+)\["([^"<]+)<br/>([^"]+)"\]', line):  # a step: name and method
            names[m[1]] = m[2]
            methods[m[2]] = m[3]
        elif m := re.fullmatch(r"\s*(n\d+) --> (n\d+)", line):
            edges.add((m[1], m[2]))
        else:
            raise AssertionError(f"unexpected mermaid line: {line!r}")
    return names, {(names[a], names[b]) for a, b in edges}, methods


def parse_dot(text: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, str], dict[str, str]]:
    lines = text.strip().splitlines()
    assert lines[0].startswith("digraph") and lines[0].endswith("{") and lines[-1] == "}"
    names, methods, shapes, edges = {}, {}, {}, set()
    for line in lines[1:-1]:
        if m := re.fullmatch(r'\s*(n\d+) \[label="([^"\\]+)(?:\\n([^"]+))?", shape=(\w+)\];', line):
            names[m[1]] = m[2]
            shapes[m[2]] = m[4]
            if m[3]:
                methods[m[2]] = m[3]
        elif m := re.fullmatch(r"\s*(n\d+) -> (n\d+);", line):
            edges.add((m[1], m[2]))
        elif not re.fullmatch(r"\s*rankdir=LR;", line):
            raise AssertionError(f"unexpected dot line: {line!r}")
    return names, {(names[a], names[b]) for a, b in edges}, methods, shapes


def test_graph_mermaid_and_dot_have_every_node_and_edge(write_recipe, capsys):
    path = write_recipe(THREE)
    nodes = {"base", "ft1", "ft2", "ft3", "a", "b", "z"}
    out, _ = ok(capsys, "graph", path)
    names, edges, methods = parse_mermaid(out)
    assert set(names.values()) == nodes and len(names) == len(nodes)
    assert edges == EDGES and methods == METHODS
    out2, _ = ok(capsys, "graph", path, "-f", "mermaid")
    assert out2 == out
    out, _ = ok(capsys, "graph", path, "--format", "dot")
    names, edges, methods, shapes = parse_dot(out)
    assert set(names.values()) == nodes and len(names) == len(nodes)
    assert edges == EDGES and methods == METHODS
    assert {n for n, s in shapes.items() if s == "ellipse"} == {"base", "ft1", "ft2", "ft3"}
    assert {n for n, s in shapes.items() if s == "box"} == {"a", "b", "z"}
    code, _, err = cli(capsys, "graph", path, "-f", "png")
    assert code == 2 and "mermaid" in err


# -- cache list / info / path ------------------------------------------------------------
def test_cache_list_info_and_path(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    build(capsys, path, tmp_path / "o")
    keys = locked_keys(path)
    lock = {s["name"]: s for s in tomllib.loads(lockf(path).read_text())["step"]}
    out, err = ok(capsys, "cache", "list")
    for name, key in keys.items():
        (line,) = [ln for ln in out.splitlines() if key[:16] in ln]
        assert METHODS[name] in line and "KB" in line
    assert "3 artifacts" in err and str(mergepkg_home / "store") in err
    for name, key in keys.items():
        out, _ = ok(capsys, "cache", "info", key[:10])
        info = json.loads(out)
        assert info["key"] == key and info["digest"] == lock[name]["digest"]
        assert info["entry"]["method"] == METHODS[name]
        folder = mergepkg_home / "store" / key
        assert set(info["files"]) == {p.name for p in folder.iterdir() if p.name != MANIFEST}
        assert all(info["files"][f]["size"] == (folder / f).stat().st_size for f in info["files"])
        assert json.loads(ok(capsys, "cache", "info", key)[0]) == info  # the full key works too
        out, _ = ok(capsys, "cache", "path", key[:10])
        assert out.strip() == str(folder) and (folder / "model.safetensors").is_file()


def test_cache_list_of_an_empty_store(capsys):
    _out, err = ok(capsys, "cache", "list")
    assert "0 artifacts" in err


def test_cache_unknown_or_ambiguous_prefix_is_a_clean_error(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    build(capsys, path, tmp_path / "o")
    key = locked_keys(path)["a"]
    unknown = next(p for p in ("0000", "ffff", "1234") if not any(k.startswith(p) for k in locked_keys(path).values()))
    for cmd in ("info", "path"):
        for prefix in (unknown, "xyz", "../store"):
            code, out, err = cli(capsys, "cache", cmd, prefix)
            assert_clean_error(code, err, "no artifacts match", "cache list")
            assert out == ""
    # a second artifact sharing the first 8 characters of a's key
    twin = key[:8] + ("0" if key[8] != "0" else "1") * 56
    shutil.copytree(mergepkg_home / "store" / key, mergepkg_home / "store" / twin)
    manifest = json.loads((mergepkg_home / "store" / twin / MANIFEST).read_text())
    (mergepkg_home / "store" / twin / MANIFEST).write_text(json.dumps({**manifest, "key": twin}))
    for cmd in ("info", "path"):
        code, out, err = cli(capsys, "cache", cmd, key[:8])
        assert_clean_error(code, err, "2 artifacts match", "more of the key")
        assert out == ""
        ok(capsys, "cache", cmd, key[:9])  # one more character is unique again


# -- cache gc ----------------------------------------------------------------------------
def test_gc_removes_what_no_lock_references_and_dry_run_removes_nothing(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    outdir = tmp_path / "o"
    build(capsys, path, outdir)
    old = locked_keys(path)
    out, err = ok(capsys, "cache", "gc")
    assert out == "" and "removed 0 artifacts" in err
    assert store_keys(mergepkg_home) == set(old.values())
    path.write_text(path.read_text().replace(*EDIT_B))
    build(capsys, path, outdir)
    new = locked_keys(path)
    assert new["b"] != old["b"] and store_keys(mergepkg_home) == set(old.values()) | set(new.values())

    out, err = ok(capsys, "cache", "gc", "--dry-run")
    assert out.splitlines() == [ln for ln in out.splitlines() if ln.startswith("would remove ")]
    assert len(out.splitlines()) == 1 and old["b"][:16] in out and "linear" in out
    assert "would remove 1 artifacts" in err
    assert store_keys(mergepkg_home) == set(old.values()) | set(new.values())  # nothing went

    out, err = ok(capsys, "cache", "gc")
    assert out.strip().startswith(f"removed {old['b'][:16]}") and "removed 1 artifacts" in err
    assert store_keys(mergepkg_home) == set(new.values())
    # the outputs are hard links or copies: collecting the store breaks nothing, and the
    # next build reuses every step
    assert tensor_bytes(outdir / "b") > 0
    err = build(capsys, path, outdir)
    assert counts(err) == (0, 3)
    assert ok(capsys, "cache", "gc", "--dry-run")[0] == ""


def test_gc_keeps_the_artifacts_of_every_built_recipe(models, tmp_path, mergepkg_home, capsys):
    one = recipe_in(tmp_path / "one", models, THREE)
    two = recipe_in(
        tmp_path / "two", models, '[steps.s]\nmethod = "slerp"\nbase = "base"\ninputs = ["ft2"]\nparams = { t = 0.3 }\n'
    )
    build(capsys, one, tmp_path / "o1")
    build(capsys, two, tmp_path / "o2")
    kept = set(locked_keys(one).values()) | set(locked_keys(two).values())
    assert len(kept) == 4 and store_keys(mergepkg_home) == kept
    _, err = ok(capsys, "cache", "gc")
    assert "removed 0 artifacts" in err and "kept what 2 lockfiles reference" in err
    assert store_keys(mergepkg_home) == kept
    # a recipe whose lock is gone no longer protects its artifacts
    lockf(two).unlink()
    _out, err = ok(capsys, "cache", "gc")
    assert store_keys(mergepkg_home) == set(locked_keys(one).values())
    assert "removed 1 artifacts" in err


def test_gc_keeps_two_recipes_of_one_folder(models, tmp_path, mergepkg_home, capsys):
    one = recipe_in(tmp_path, models, THREE, name="one.toml")
    two = recipe_in(
        tmp_path,
        models,
        '[steps.s]\nmethod = "slerp"\nbase = "base"\ninputs = ["ft2"]\nparams = { t = 0.3 }\n',
        name="two.toml",
    )
    build(capsys, one, tmp_path / "o1")
    build(capsys, two, tmp_path / "o2")
    assert lockf(one).is_file() and lockf(two).is_file()
    err = build(capsys, one, tmp_path / "o1", "--locked")
    assert counts(err) == (0, 3)
    ok(capsys, "cache", "gc")
    assert store_keys(mergepkg_home) == set(locked_keys(one).values()) | set(locked_keys(two).values())


def test_gc_removes_leftovers_of_killed_builds_but_not_builds_in_progress(
    write_recipe, tmp_path, mergepkg_home, capsys
):
    path = write_recipe(THREE)
    build(capsys, path, tmp_path / "o")
    stored = store_keys(mergepkg_home)
    tmp = mergepkg_home / "tmp"
    dead = tmp / ("a" * 64 + ".x1y2z3")  # a build that was killed
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"\0" * 100)
    trash = tmp / ("b" * 64 + ".discard.q9")  # a discard that was killed
    (trash / "artifact").mkdir(parents=True)
    busy = tmp / ("c" * 64 + ".w7")  # being built right now, by someone holding the key's lock
    busy.mkdir()
    (mergepkg_home / "locks").mkdir(exist_ok=True)
    holder = FileLock(mergepkg_home / "locks" / ("c" * 64 + ".lock"))
    with holder:
        out, err = ok(capsys, "cache", "gc", "--dry-run")
        assert f"would remove {dead}" in out and f"would remove {trash}" in out and str(busy) not in out
        assert "2 temp folders" in err
        assert dead.is_dir() and trash.is_dir()
        out, err = ok(capsys, "cache", "gc")
        assert f"removed {dead}" in out and "2 temp folders" in err
        assert not dead.exists() and not trash.exists() and busy.is_dir()
    assert store_keys(mergepkg_home) == stored
    ok(capsys, "cache", "gc")
    assert not busy.exists()


# -- --out -------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


def test_out_files_are_hard_links_or_copies_never_symlinks(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    outdir = tmp_path / "o"
    out, _ = ok(capsys, "build", path, "--out", outdir, "-q")
    assert out.split() == [str(outdir / "b"), str(outdir / "z")]
    keys = locked_keys(path)
    assert sorted(p.name for p in outdir.iterdir()) == sorted([MARKER, "b", "z"])
    for name in ("b", "z"):
        store = mergepkg_home / "store" / keys[name]
        names = {p.name for p in (outdir / name).iterdir()}
        # + the model card, the recipe and its lock, and (z is over sources only) a mergekit config
        written = {"README.md", "mergepkg.toml", "mergepkg.lock"} | ({"mergekit_config.yml"} if name == "z" else set())
        assert names == ({p.name for p in store.iterdir()} - {MANIFEST}) | written
        for f in (outdir / name).iterdir():
            assert not f.is_symlink() and f.is_file()
            if f.name in written:
                continue
            s = store / f.name
            assert os.path.samefile(f, s) or f.read_bytes() == s.read_bytes()
            assert f.stat().st_ino == s.stat().st_ino  # same filesystem here: hard links
    assert not any(p.is_symlink() for p in _files(outdir))
    marker = json.loads((outdir / MARKER).read_text())
    assert marker["outputs"] == {"b": keys["b"], "z": keys["z"]}


def test_rebuild_with_out_replaces_the_previous_output(write_recipe, tmp_path, mergepkg_home, capsys):
    path = write_recipe(THREE)
    outdir = tmp_path / "o"
    build(capsys, path, outdir)
    old = locked_keys(path)
    old_b = load_tensors(outdir / "b")
    path.write_text(path.read_text().replace(*EDIT_B))
    out, err = ok(capsys, "build", path, "--out", outdir, "-q")
    assert counts(err) == (1, 2)
    new = locked_keys(path)
    b = outdir / "b"
    assert (b / "model.safetensors").stat().st_ino == (
        mergepkg_home / "store" / new["b"] / "model.safetensors"
    ).stat().st_ino
    assert (b / "model.safetensors").stat().st_ino != (
        mergepkg_home / "store" / old["b"] / "model.safetensors"
    ).stat().st_ino
    assert load_tensors(b).keys() == old_b.keys() and any(not (load_tensors(b)[k] == old_b[k]).all() for k in old_b)
    assert json.loads((outdir / MARKER).read_text())["outputs"]["b"] == new["b"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mergepkg-build-")]
    # the old artifact in the store is untouched by the replacement
    assert tensor_bytes(mergepkg_home / "store" / old["b"]) > 0
    # a single-output recipe into the same folder replaces it too
    single = write_recipe(
        '[steps.only]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n', name="single.toml"
    )
    out, _ = ok(capsys, "build", single, "--out", outdir, "-q")
    assert out.strip() == str(outdir)
    assert (
        (outdir / "model.safetensors").is_file()
        and not (outdir / "b").exists()
        and not any(p.is_symlink() for p in _files(outdir))
    )


def test_out_refuses_a_folder_mergepkg_did_not_write(write_recipe, tmp_path, capsys):
    path = write_recipe(THREE)
    outdir = tmp_path / "mine"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "build", path, "--out", outdir, "-q")
    assert_clean_error(code, err, "not written by mergepkg")
    assert (outdir / "notes.txt").read_text() == "keep me"


# -- steps of other recipes ------------------------------------------------------------------
OTHER = """
[steps.merged]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 0.7 }, { model = "ft2", weight = 0.3 }]

[steps.unused]
method = "linear"
inputs = [{ model = "ft3", weight = 1.0 }]
"""
USES_OTHER = """
[steps.top]
method = "linear"
inputs = [{ model = "up", weight = 0.5 }, { model = "ft3", weight = 0.5 }]
"""


def test_step_of_another_recipe_is_planned_and_reused_with_its_own_key(models, tmp_path, mergepkg_home, capsys):
    other = recipe_in(tmp_path, models, OTHER, name="other.toml")
    main_ = recipe_in(
        tmp_path, models, USES_OTHER, name="main.toml", sources='up = { recipe = "other.toml", step = "merged" }\n'
    )
    out, _ = ok(capsys, "plan", main_)
    steps = plan_steps(out)
    assert set(steps) == {"up::merged", "top"}  # only what top needs, not other's `unused`
    assert steps["up::merged"]["method"] == "task_arithmetic" and steps["up::merged"]["state"].startswith("build")

    build(capsys, other, tmp_path / "o-other")
    alone = locked_keys(other)["merged"]
    out, _ = ok(capsys, "plan", main_)
    steps = plan_steps(out)
    assert steps["up::merged"]["key"] == alone[:12] and steps["up::merged"]["state"] == "stored"
    assert steps["top"]["state"].startswith("build")
    err = build(capsys, main_, tmp_path / "o-main")
    assert counts(err) == (1, 1)
    assert locked_keys(main_)["up::merged"] == alone
    assert {"up::base", "up::ft1", "up::ft2"} <= {s["name"] for s in tomllib.loads(lockf(main_).read_text())["source"]}
    out, _ = ok(capsys, "graph", main_)
    _names, edges, _ = parse_mermaid(out)
    assert ("up::merged", "top") in edges and ("up::ft1", "up::merged") in edges and ("ft3", "top") in edges


def test_imported_random_step_keeps_its_own_recipes_seed(models, tmp_path, capsys):
    """A random step of another recipe must have the key it has when that recipe builds it
    (that recipe's seed), or it is never reused and its bytes differ."""
    body = (
        OTHER.replace('method = "task_arithmetic"', 'method = "dare_ties"')
        .replace("weight = 0.7 }", "weight = 0.7, density = 0.5 }")
        .replace("weight = 0.3 }", "weight = 0.3, density = 0.5 }")
    )
    other = recipe_in(tmp_path, models, body, name="other.toml", package="seed = 7\n")
    main_ = recipe_in(
        tmp_path, models, USES_OTHER, name="main.toml", sources='up = { recipe = "other.toml", step = "merged" }\n'
    )
    build(capsys, other, tmp_path / "o-other")
    out, _ = ok(capsys, "plan", main_)
    assert plan_steps(out)["up::merged"]["key"] == locked_keys(other)["merged"][:12]


def test_unknown_step_of_another_recipe_is_located_with_did_you_mean(models, tmp_path, capsys):
    recipe_in(tmp_path, models, OTHER, name="other.toml")
    main_ = recipe_in(
        tmp_path, models, USES_OTHER, name="main.toml", sources='up = { recipe = "other.toml", step = "mreged" }\n'
    )
    line = main_.read_text().splitlines().index('up = { recipe = "other.toml", step = "mreged" }') + 1
    for cmd in ("plan", "build", "graph"):
        args = (cmd, main_, "--out", tmp_path / "o", "-q") if cmd == "build" else (cmd, main_)
        code, out, err = cli(capsys, *args)
        assert_clean_error(code, err, f"error: {main_}:{line}: sources.up.step: ", "'mreged'", "did you mean 'merged'?")
        assert out == ""
    assert not (tmp_path / "o").exists()


def test_cache_list_and_gc_show_an_export_by_its_format(tmp_path, mergepkg_home, capsys):
    """An export's entry names its format and type, not a method."""
    import hashlib

    from mergepkg.store.local import Store

    folder = tmp_path / "made"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF")
    entry = {"export": "gguf", "type": "q8_0", "step": "0" * 64, "converter": "x"}
    key = hashlib.sha256(json.dumps(entry).encode()).hexdigest()
    Store(mergepkg_home).commit(
        key, folder, entry, {}, seconds=0.1, sha256={"model.gguf": hashlib.sha256(b"GGUF").hexdigest()}
    )
    out, _ = ok(capsys, "cache", "list")
    assert "gguf q8_0" in out
    out, _ = ok(capsys, "cache", "gc", "--dry-run")
    assert "gguf q8_0" in out
