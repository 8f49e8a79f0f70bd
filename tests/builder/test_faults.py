"""Faults, end to end through the real `mergepkg` script in subprocesses: a build killed
at any moment, several builders of one recipe at once, artifacts edited or truncated
behind the store's back, `cache gc` while a build runs, concurrent writers of the lock
and of roots.json, and bit-for-bit reproducibility across processes, homes, thread
counts and the order a recipe's [steps.*] tables are written in.

Every check looks at the files a user would see: `store/<key>` folders and their
manifests, `--out`, the lock file, and stderr's `built NAME` / `done:` lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mergepkg.builder.outputs import MARKER
from mergepkg.io.digest import model_digest
from mergepkg.lockfile import lock_path, read_lock, recipe_hash
from mergepkg.recipe.parse import load_recipe
from mergepkg.store.local import MANIFEST, Store

pytestmark = pytest.mark.slow  # kills and races real builds in subprocesses

MERGEPKG = str(Path(sys.executable).parent / "mergepkg")
STAGING = ".mergepkg-build-"  # place_outputs' temp folder beside --out


# -- helpers -------------------------------------------------------------------------
def env_for(home: Path) -> dict[str, str]:
    # OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning when they wait. It
    # changes no result, but on a busy 2-core machine a `--threads 2` build otherwise runs
    # 5-7x slower (measured: 28 s instead of 4 s).
    return {
        **os.environ,
        "MERGEPKG_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }


def run(home: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MERGEPKG, *map(str, args)], capture_output=True, text=True, env=env_for(home), timeout=timeout
    )


def start(home: Path, *args, log: Path) -> subprocess.Popen:
    """The real script in the background; stdout and stderr go to files (no pipe can fill)."""
    with open(log.with_suffix(".out"), "w") as o, open(log.with_suffix(".err"), "w") as e:
        return subprocess.Popen([MERGEPKG, *map(str, args)], stdout=o, stderr=e, env=env_for(home))


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def built_lines(err: str) -> list[str]:
    """Step names from `built NAME KEY` lines."""
    return [line.split()[1] for line in err.splitlines() if line.startswith("built ")]


def done_counts(err: str) -> tuple[int, int]:
    (line,) = [x for x in err.splitlines() if x.startswith("done:")]
    words = line.split()
    return int(words[1]), int(words[3])  # "done: N built, M reused from the store"


def write_recipe_file(folder: Path, sources: dict[str, Path], body: str, name: str = "pkg") -> Path:
    """A recipe alone in `folder` (its lock file is written beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    head = f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n[sources]\n'
    head += "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in sources.items()) + "\n"
    path = folder / "recipe.toml"
    path.write_text(head + textwrap.dedent(body))
    return path


def lock_file(recipe: Path) -> Path:
    return lock_path(load_recipe(recipe))


def lock_steps(recipe: Path) -> dict[str, tuple[str, str | None]]:
    lock = read_lock(lock_file(recipe))
    assert lock is not None, f"no lock beside {recipe}"
    return {n: (s.key, s.digest) for n, s in lock.steps.items()}


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, file_sha(p)) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def store_entries(home: Path) -> list[str]:
    root = home / "store"
    return sorted(os.listdir(root)) if root.is_dir() else []


def check_store(home: Path, digests_by_key: dict[str, str]) -> list[str]:
    """Every folder in store/ is a complete artifact of a known key whose files are as
    built and whose tensors re-read to its digest; returns the keys found."""
    store = Store(home)
    keys = store_entries(home)
    for key in keys:
        art = store.get(key)
        assert art is not None, f"store/{key} has no complete manifest: {os.listdir(home / 'store' / key)}"
        manifest = json.loads((home / "store" / key / MANIFEST).read_text())
        assert manifest["key"] == key
        assert art.intact(), f"store/{key}: files differ from its manifest"
        assert sorted(os.listdir(art.folder)) == sorted([*manifest["files"], MANIFEST])
        assert key in digests_by_key, f"store/{key} is not a key of this recipe"
        assert art.digest == digests_by_key[key]
        assert model_digest(art.folder) == art.digest
    return keys


def corrupt_middle(path: Path, count: int = 16) -> None:
    """Flip `count` bytes in the middle of a safetensors file's tensor data, keeping its
    size and restoring its mtime (and atime) to the nanosecond."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    mid = start + (len(data) - start) // 2
    for i in range(mid, mid + count):
        data[i] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode, so any hard link sees it too
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def first_shard(folder: Path) -> Path:
    return sorted(folder.glob("*.safetensors"))[0]


# -- models and recipes --------------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """Models large enough that each step writes several shards and takes a while (6 layers, hidden 256)."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("big")
    base = make_model(root / "base", seed=10, hidden=256, layers=6)
    return {
        "base": base,
        "ft1": make_model(root / "ft1", seed=11, base=base),
        "ft2": make_model(root / "ft2", seed=12, base=base),
    }


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, Path]:
    """2 layers, hidden 256: tensors past torch's parallel grain size, so thread counts matter."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("medium")
    base = make_model(root / "base", seed=20, hidden=256, layers=2)
    return {"base": base, **{f"ft{i}": make_model(root / f"ft{i}", seed=20 + i, base=base) for i in (1, 2, 3)}}


# ties -> dare_ties -> passthrough (stack); only `stack` is an output.
CHAIN = """
[steps.trim]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.7, density = 0.6 }]

[steps.drop]
method = "dare_ties"
base = "base"
inputs = [{ model = "trim", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.7 }]

[steps.stack]
method = "passthrough"
slices = [
  { sources = [{ model = "drop", layers = [0, 4] }] },
  { sources = [{ model = "ft1", layers = [2, 6] }] },
]
"""
CHAIN_STEPS = ("trim", "drop", "stack")
SHARDS = "5MB"  # several shards per artifact: more files for a kill to land between


@pytest.fixture(scope="module")
def reference(big, tmp_path_factory) -> dict:
    """A clean build of CHAIN in its own fresh home: keys, digests and how long it took."""
    root = tmp_path_factory.mktemp("reference")
    recipe = write_recipe_file(root / "r", big, CHAIN)
    t0 = time.monotonic()
    r = ok(run(root / "home", "build", recipe, "--out", root / "out", "-q", "--shard-size", SHARDS))
    seconds = time.monotonic() - t0
    assert sorted(built_lines(r.stderr)) == sorted(CHAIN_STEPS)
    steps = lock_steps(recipe)
    assert model_digest(root / "out") == steps["stack"][1]
    return {"steps": steps, "by_key": {k: d for k, d in steps.values()}, "seconds": seconds}


# -- 1. SIGKILL at any moment ----------------------------------------------------------
def _check_out_after_kill(out: Path, home: Path, old: dict, ref: dict) -> str:
    """--out is absent, the previous output byte for byte, or the new output complete."""
    if not out.exists():
        return "absent"
    if tree_snapshot(out) == old:
        return "previous"
    marker = json.loads((out / MARKER).read_text())
    stack_key, stack_digest = ref["steps"]["stack"]
    assert marker["outputs"] == {"stack": stack_key}, f"--out is neither the old nor the new output: {marker}"
    art = Store(home).get(stack_key)
    assert art is not None, "--out holds the new output but the store lost its artifact"
    placed = set(os.listdir(out))
    assert {*art.manifest["files"], MARKER} <= placed, f"--out misses files: {placed}"
    for name in art.manifest["files"]:
        assert (out / name).stat().st_size == art.manifest["files"][name]["size"], name
    assert model_digest(out) == stack_digest
    return "new"


def _progress(kdir: Path) -> tuple[int, list[int], bool]:
    """(artifacts in store/, shard files in each build folder in tmp/, --out being placed)."""
    home, shards = kdir / "home", []
    try:
        building = [d for d in os.listdir(home / "tmp") if ".discard." not in d]
    except FileNotFoundError:
        building = []
    for d in building:
        with contextlib.suppress(FileNotFoundError):
            shards.append(sum(n.endswith(".safetensors") for n in os.listdir(home / "tmp" / d)))
    return len(store_entries(home)), shards, any(n.startswith(STAGING) for n in os.listdir(kdir))


# Kill points by progress, not by the clock (a loaded machine makes a build take 3 s or
# 15 s): each predicate sees _progress() and fires the SIGKILL the moment it is true.
KILL_POINTS = [
    ("startup (0.2 s)", 0.2),
    ("step 1: between shards", lambda st, sh, pl: st == 0 and any(c >= 2 for c in sh)),
    ("step 1 just committed", lambda st, sh, pl: st >= 1),
    ("step 2: between shards", lambda st, sh, pl: st == 1 and any(c >= 2 for c in sh)),
    ("step 2 just committed", lambda st, sh, pl: st >= 2),
    ("step 3: writing", lambda st, sh, pl: st == 2 and any(c >= 1 for c in sh)),
    ("placing --out", lambda st, sh, pl: pl),
]


def _build_killed_when(when, kdir: Path, label: str, recipe: Path) -> bool:
    """Build `recipe` into kdir's home and out, SIGKILLed the moment `when` holds (a
    predicate of _progress, or seconds since the start): whether the kill landed before
    the build finished."""
    home, out = kdir / "home", kdir / "out"
    proc = start(home, "build", recipe, "--out", out, "-q", "--shard-size", SHARDS, log=kdir / "log")
    t0 = time.monotonic()
    while proc.poll() is None:
        if when(*_progress(kdir)) if callable(when) else time.monotonic() - t0 >= when:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
        assert time.monotonic() - t0 < 240, "build never finished"
    rc = proc.wait()
    assert rc in (0, -signal.SIGKILL), f"{label}: exit {rc}: {(kdir / 'log.err').read_text()}"
    return rc == -signal.SIGKILL


def test_sigkill_at_any_moment_leaves_store_and_out_consistent(big, models, reference, tmp_path):
    ref = reference
    # the previous output: a complete mergepkg output of another recipe, copied to --out first
    old_recipe = write_recipe_file(
        tmp_path / "old",
        {"ft1": models["ft1"], "ft2": models["ft2"]},
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 },'
        ' { model = "ft2", weight = 1.0 }]\n',
        name="old",
    )
    ok(run(tmp_path / "old-home", "build", old_recipe, "--out", tmp_path / "old-out", "-q"))
    old = tree_snapshot(tmp_path / "old-out")

    outcomes = []
    for i, (label, when) in enumerate(KILL_POINTS):
        for attempt in range(3):  # a short window the poller missed on a loaded machine: again, afresh
            kdir = tmp_path / f"k{i}.{attempt}"
            recipe = write_recipe_file(kdir, big, CHAIN)
            home, out = kdir / "home", kdir / "out"
            shutil.copytree(tmp_path / "old-out", out)
            if killed := _build_killed_when(when, kdir, label, recipe):
                break

        # right after the kill: the store holds complete artifacts only, --out is whole
        stored = check_store(home, ref["by_key"])
        out_state = _check_out_after_kill(out, home, old, ref)
        if lock_file(recipe).exists():
            for name, (key, digest) in lock_steps(recipe).items():
                assert key == ref["steps"][name][0] and digest in (None, ref["steps"][name][1])
        leftovers = sorted(os.listdir(home / "tmp")) if (home / "tmp").is_dir() else []
        staging = [n for n in os.listdir(kdir) if n.startswith(STAGING)]

        # the next build finishes the job: builds exactly what is missing, same digests
        r = ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", SHARDS))
        missing = {n for n, (k, _) in ref["steps"].items() if k not in stored}
        assert set(built_lines(r.stderr)) == missing, f"{label}: {r.stderr}"
        assert done_counts(r.stderr) == (len(missing), len(CHAIN_STEPS) - len(missing))
        assert lock_steps(recipe) == ref["steps"]
        assert model_digest(out) == ref["steps"]["stack"][1]
        assert json.loads((out / MARKER).read_text())["outputs"] == {"stack": ref["steps"]["stack"][0]}
        assert sorted(check_store(home, ref["by_key"])) == sorted(ref["by_key"])

        # leftovers of the killed build: `cache gc` removes them and keeps the locked artifacts
        g = ok(run(home, "cache", "gc"))
        assert not (home / "tmp").is_dir() or os.listdir(home / "tmp") == [], g.stdout
        assert sorted(check_store(home, ref["by_key"])) == sorted(ref["by_key"])
        outcomes.append(
            (label, "killed" if killed else "finished", len(stored), out_state, len(leftovers), len(staging))
        )

    report = "\n".join(
        f"  {o[0]:<24} {o[1]:<8} stored={o[2]} out={o[3]:<8} tmp-leftovers={o[4]} staging={o[5]}" for o in outcomes
    )
    print(f"\nclean build {ref['seconds']:.2f}s\n{report}")
    assert sum(o[1] == "killed" for o in outcomes) >= 6, report  # the kills really interrupted builds
    assert {0, 1, 2} <= {o[2] for o in outcomes}, report  # before, between and after committed steps


KILLS = 20  # per run, at seeded random moments (the seed is in the report, to replay one)


def test_sigkill_at_random_moments_and_the_next_build_gives_the_clean_digests(big, reference, tmp_path):
    """Builds of CHAIN killed at random moments, seeded: after each, the store holds
    complete artifacts only, the next build leaves no temp folder behind and gives the
    clean build's keys and digests."""
    rng = random.Random(20261203)
    # The span starts at the reference build's time, which was the session's first build (cold
    # caches) and can take half as long again as the builds below. Each build that finishes
    # before its kill pulls the span halfway to its own time, so the kills keep landing
    # mid-build however fast or loaded the machine is.
    span = reference["seconds"]
    report = []
    for i in range(KILLS):
        at = rng.uniform(0.02, 1.05) * span  # from startup to just past the end of a build
        kdir = tmp_path / f"r{i}"
        recipe = write_recipe_file(kdir, big, CHAIN)
        home, out = kdir / "home", kdir / "out"
        proc = start(home, "build", recipe, "--out", out, "-q", "--shard-size", SHARDS, log=kdir / "log")
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=at)
            span = (span + time.monotonic() - t0) / 2
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
        assert rc in (0, -signal.SIGKILL), f"kill {i} at {at:.2f}s: exit {rc}: {(kdir / 'log.err').read_text()}"
        stored = check_store(home, reference["by_key"])
        left = sorted(os.listdir(home / "tmp")) if (home / "tmp").is_dir() else []
        ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", SHARDS))
        assert lock_steps(recipe) == reference["steps"], f"kill {i} at {at:.2f}s"
        assert model_digest(out) == reference["steps"]["stack"][1]
        assert not (home / "tmp").is_dir() or os.listdir(home / "tmp") == [], f"kill {i}: tmp kept {left}"
        report.append(
            f"  kill {i:2} at {at:5.2f}s: {'killed' if rc else 'finished'}, {len(stored)} stored, "
            f"{len(left)} temp folders left, cleaned by the next build"
        )
    print("\n" + "\n".join(report))
    assert sum("killed" in r for r in report) >= KILLS // 2, "\n".join(report)


# `mergepkg ARGS...` that kills itself (SIGKILL) at a point of placing --out: "staged" as
# soon as its staging folder beside --out is made, "exchanged" right after the staged
# output and --out swapped places; "swapping" between the two renames of a file system
# without that swap (moving the previous output into the staging folder, and the new one
# in: --out does not exist at all); "interrupted" there is Ctrl-C instead, and "holding"
# pauses with the output staged.
KILLED_WHILE_PLACING = """
import os, signal, sys, tempfile, time
from mergepkg.cli.app import run

def die():
    os.kill(os.getpid(), signal.SIGKILL)

mode = sys.argv[1]
if mode == "staged":
    made = tempfile.mkdtemp
    def mkdtemp(*args, **kwargs):
        folder = made(*args, **kwargs)
        if os.path.basename(folder).startswith(".mergepkg-build-"):
            die()
        return folder
    tempfile.mkdtemp = mkdtemp
elif mode == "exchanged":
    from mergepkg.builder import outputs
    swap = outputs.exchange
    def exchange(a, b):
        done = swap(a, b)
        die()
    outputs.exchange = exchange
elif mode == "holding":  # pauses with the output staged, before the swap
    from mergepkg.builder import outputs
    described = outputs.describe
    def describe(*args, **kwargs):
        described(*args, **kwargs)
        open(os.environ["HOLDING_MARK"], "w").close()  # another build may now try
        time.sleep(float(os.environ["HOLDING_SECONDS"]))
    outputs.describe = describe
else:
    from mergepkg.builder import outputs
    outputs.exchange = lambda a, b: False  # a file system without renameat2's swap: two renames
    rename = os.rename
    def renamed(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        if os.path.basename(dst) == "previous":
            if mode == "interrupted":
                raise KeyboardInterrupt  # Ctrl-C between the two renames
            die()
    os.rename = renamed
sys.argv = ["mergepkg", *sys.argv[2:]]
run()
"""


@pytest.mark.parametrize("point", ["staged", "exchanged", "swapping"])
def test_a_build_killed_while_placing_out_leaves_no_hidden_folder_behind(point, models, tmp_path):
    """place_outputs stages in a `.mergepkg-build-*` folder beside --out and moves the
    previous output into it before the swap. Killed there, that folder (possibly holding
    the whole previous output, --out then missing) must not stay behind: the next build
    puts the output back and `cache gc` finds nothing left."""
    recipe = write_recipe_file(tmp_path / "r", models, SMALL)
    home, out = tmp_path / "home", tmp_path / "o" / "out"
    ok(run(home, "build", recipe, "--out", out, "-q"))
    digest = lock_steps(recipe)["top"][1]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_PLACING, point, "build", str(recipe), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        env=env_for(home),
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staging = [n for n in os.listdir(out.parent) if n.startswith(STAGING)]
    assert len(staging) == 1  # what the kill left
    if point == "swapping":
        assert not out.exists() and model_digest(out.parent / staging[0] / "previous") == digest
    else:
        assert model_digest(out) == digest
    ok(run(home, "build", recipe, "--out", out, "-q"))
    ok(run(home, "cache", "gc"))
    assert model_digest(out) == digest
    left = [n for n in os.listdir(out.parent) if n.startswith(STAGING)]
    assert not left, (
        f"staging folders left beside --out after a rebuild and `cache gc`: {left}"
        f" holding {[str(p.relative_to(out.parent)) for n in left for p in (out.parent / n).iterdir()]}"
    )


def test_ctrl_c_between_the_two_renames_puts_the_previous_output_back(models, tmp_path):
    recipe = write_recipe_file(tmp_path / "r", models, SMALL)
    home, out = tmp_path / "home", tmp_path / "o" / "out"
    ok(run(home, "build", recipe, "--out", out, "-q"))
    digest = lock_steps(recipe)["top"][1]
    stopped = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_PLACING, "interrupted", "build", str(recipe), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        env=env_for(home),
        timeout=300,
    )
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr
    assert model_digest(out) == digest
    assert not [n for n in os.listdir(out.parent) if n.startswith(STAGING)]


def test_builds_from_two_homes_into_one_out_take_turns(models, tmp_path):
    """The lock on placing --out is not in a home: a build from another MERGEPKG_HOME waits
    for it, rather than removing the staging folder of a placement in progress."""
    recipe = write_recipe_file(tmp_path / "r", models, SMALL)
    homes, out = [tmp_path / "a", tmp_path / "b"], tmp_path / "o" / "out"
    for i, home in enumerate(homes):  # both stores hold the steps: the builds below only place
        ok(run(home, "build", recipe, "--out", tmp_path / f"warm{i}", "-q"))
    mark = tmp_path / "staged"
    env = env_for(homes[0]) | {"HOLDING_MARK": str(mark), "HOLDING_SECONDS": "6"}
    holding = subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_PLACING, "holding", "build", str(recipe), "--out", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not mark.exists() and holding.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), holding.communicate()[1]
    other = run(homes[1], "build", recipe, "--out", out, "-q")
    _, err = holding.communicate(timeout=300)
    assert holding.returncode == 0 and "Traceback" not in err, err
    ok(other)
    assert model_digest(out) == lock_steps(recipe)["top"][1]
    assert not [n for n in os.listdir(out.parent) if n.startswith(STAGING)]


# -- 2. two builders at once -------------------------------------------------------------
def test_two_concurrent_builds_build_each_step_once_and_agree(big, reference, tmp_path):
    recipe = write_recipe_file(tmp_path / "r", big, CHAIN)
    home = tmp_path / "home"
    procs = [
        start(
            home, "build", recipe, "--out", tmp_path / f"out{i}", "-q", "--shard-size", SHARDS, log=tmp_path / f"log{i}"
        )
        for i in (0, 1)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    errs = [(tmp_path / f"log{i}.err").read_text() for i in (0, 1)]
    for code, err in zip(codes, errs):
        assert code == 0 and "Traceback" not in err, f"exit {code}:\n{err}"
    built = [n for e in errs for n in built_lines(e)]
    assert sorted(built) == sorted(CHAIN_STEPS), f"each step built exactly once in total:\n{errs}"
    counts = [done_counts(e) for e in errs]
    assert sum(b for b, _ in counts) == len(CHAIN_STEPS) and all(b + r == len(CHAIN_STEPS) for b, r in counts)
    # one manifest per key, written once; the store holds exactly the recipe's artifacts
    assert sorted(check_store(home, reference["by_key"])) == sorted(reference["by_key"])
    assert tree_snapshot(tmp_path / "out0") == tree_snapshot(tmp_path / "out1")
    assert model_digest(tmp_path / "out0") == reference["steps"]["stack"][1]
    assert lock_steps(recipe) == reference["steps"]
    assert not list(tmp_path.joinpath("r").glob("*.tmp"))


# -- 2b. cache gc while a build runs ----------------------------------------------------
def test_gc_during_a_build_does_not_remove_what_the_build_uses(big, reference, tmp_path):
    """A build's finished steps are in no lockfile until the build ends; a `cache gc`
    run meanwhile (another terminal, a cron job) must not take them from under it.
    The build is paused (SIGSTOP) right after step 1 is stored and step 2 has begun;
    gc refuses (a build holds the store) and removes nothing, then the build goes on."""
    recipe = write_recipe_file(tmp_path / "r", big, CHAIN)
    home = tmp_path / "home"
    proc = start(home, "build", recipe, "--out", tmp_path / "out", "-q", "--shard-size", SHARDS, log=tmp_path / "log")
    t0 = time.monotonic()
    while proc.poll() is None:
        stored, building, _ = _progress(tmp_path)
        if stored == 1 and building:  # step 2's build folder exists: step 1's lock is released
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.0005)
        assert time.monotonic() - t0 < 240
    assert proc.poll() is None, "the build finished before it could be paused"
    try:
        gc_run = run(home, "cache", "gc", timeout=120)
    finally:
        proc.send_signal(signal.SIGCONT)
    code = proc.wait(timeout=300)
    err = (tmp_path / "log.err").read_text()
    assert gc_run.returncode == 1 and "a build is running" in gc_run.stderr, gc_run.stderr
    assert gc_run.stdout == ""
    assert code == 0 and "Traceback" not in err, (
        f"gc removed a running build's input ({gc_run.stdout.strip()}); the build failed:\n{err[-1500:]}"
    )
    assert model_digest(tmp_path / "out") == reference["steps"]["stack"][1]
    assert sorted(check_store(home, reference["by_key"])) == sorted(reference["by_key"]), (
        f"gc removed a running build's artifact: {gc_run.stdout}"
    )


# -- 3. artifacts edited behind the store's back ----------------------------------------
SMALL = """
[steps.soup]
method = "linear"
inputs = [{ model = "ft1", weight = 0.6 }, { model = "ft2", weight = 0.4 }]

[steps.mid]
method = "ties"
base = "base"
inputs = [{ model = "soup", weight = 1.0, density = 0.5 }, { model = "ft3", weight = 0.5, density = 0.7 }]

[steps.top]
method = "passthrough"
slices = [
  { sources = [{ model = "mid", layers = [0, 2] }] },
  { sources = [{ model = "ft1", layers = [2, 4] }] },
]
"""


@pytest.fixture(scope="module")
def small_template(models, tmp_path_factory) -> Path:
    """SMALL built once through the CLI, several shards per artifact: recipe, lock and home."""
    root = tmp_path_factory.mktemp("small")
    recipe = write_recipe_file(root / "r", models, SMALL)
    ok(run(root / "home", "build", recipe, "--out", root / "out", "-q", "--shard-size", "40KB"))
    for name, (key, _) in lock_steps(recipe).items():
        assert len(list(Store(root / "home").get(key).folder.glob("*.safetensors"))) > 1, name
    return root


@pytest.fixture
def small_build(small_template, tmp_path):
    """A private copy of the template's recipe and home (mtimes kept, so every artifact is
    intact), and --out placed from it by a build that reuses every step:
    (recipe, home, out, lock steps)."""
    shutil.copytree(small_template / "r", tmp_path / "r")
    shutil.copytree(small_template / "home", tmp_path / "home")
    recipe, home, out = tmp_path / "r" / "recipe.toml", tmp_path / "home", tmp_path / "out"
    r = ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", "40KB"))
    assert done_counts(r.stderr) == (0, 3), r.stderr
    return recipe, home, out, lock_steps(recipe)


def verify_rows(stdout: str, steps) -> dict[str, str]:
    """step -> status from `mergepkg verify`'s table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if cells and cells[0] in steps:
            rows[cells[0]] = cells[2]
    return rows


def test_flipped_bytes_with_size_and_mtime_kept_are_caught_by_verify(small_build):
    recipe, home, out, steps = small_build
    store = Store(home)
    key, digest = steps["mid"]
    shard = first_shard(store.get(key).folder)
    corrupt_middle(shard)
    assert store.get(key).intact(), "the cheap check cannot see this edit (the point of the test)"

    r = run(home, "verify", recipe)
    assert "Traceback" not in r.stderr, r.stderr
    assert verify_rows(r.stdout, steps) == {"soup": "ok", "mid": "corrupt", "top": "ok"}, r.stdout
    assert "corrupt" in r.stderr
    assert store.get(key) is None and not (home / "store" / key).exists()

    b = ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", "40KB"))
    assert built_lines(b.stderr) == ["mid"] and done_counts(b.stderr) == (1, 2), b.stderr
    assert lock_steps(recipe) == steps
    art = store.get(key)
    assert art.digest == digest and model_digest(art.folder) == digest and art.intact()
    assert model_digest(out) == steps["top"][1]
    assert verify_rows(ok(run(home, "verify", recipe)).stdout, steps) == dict.fromkeys(steps, "ok")
    assert r.returncode == 1, f"verify found a corrupt artifact but exited {r.returncode}"


@pytest.mark.parametrize("where", ["store", "out"])
def test_truncated_shard_is_rebuilt_by_the_next_build_without_verify(small_build, where):
    """Truncate a shard of `mid` in the store, or of the output `top` through --out (its
    files are hard links to the store's): the next plain build rebuilds that step only."""
    recipe, home, out, steps = small_build
    store = Store(home)
    name = "mid" if where == "store" else "top"
    key, digest = steps[name]
    shard = first_shard(store.get(key).folder if where == "store" else out)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    assert not store.get(key).intact()

    b = ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", "40KB"))
    assert built_lines(b.stderr) == [name] and done_counts(b.stderr) == (1, 2), b.stderr
    assert lock_steps(recipe) == steps
    art = store.get(key)
    assert art.intact() and art.digest == digest and model_digest(art.folder) == digest
    assert model_digest(out) == steps["top"][1]
    assert first_shard(art.folder).stat().st_size == size
    assert verify_rows(ok(run(home, "verify", recipe)).stdout, steps) == dict.fromkeys(steps, "ok")


@pytest.mark.parametrize("keep", [0, 5, "header", "data"])
def test_verify_reports_any_truncation_as_corrupt(small_build, keep):
    """However short a shard was cut, verify says corrupt (exit 1), never a traceback."""
    recipe, home, out, steps = small_build
    store = Store(home)
    key, _ = steps["mid"]
    shard = first_shard(store.get(key).folder)
    header = int.from_bytes(shard.read_bytes()[:8], "little")
    cut = {"header": 8 + header // 2, "data": 8 + header + 100}.get(keep, keep)
    st = os.stat(shard)
    with open(shard, "r+b") as f:
        f.truncate(cut)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(home, "verify", recipe)
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert verify_rows(r.stdout, steps) == {"soup": "ok", "mid": "corrupt", "top": "ok"}, r.stdout
    assert store.get(key) is None
    b = ok(run(home, "build", recipe, "--out", out, "-q", "--shard-size", "40KB"))
    assert built_lines(b.stderr) == ["mid"] and lock_steps(recipe) == steps
    assert r.returncode == 1, f"verify found a corrupt artifact but exited {r.returncode}"


# -- 4. reproducibility ----------------------------------------------------------------
W = "weight = 1.0"
TWO = (
    f'base = "base"\ninputs = [{{ model = "ft1", {W}, density = %s }}, {{ model = "ft2", weight = 0.8, density = %s }}]'
)
EVERY_METHOD = {
    "lin": 'method = "linear"\ninputs = [{ model = "ft1", weight = 0.6 }, { model = "ft2", weight = 0.4 }]',
    "sl": 'method = "slerp"\nbase = "base"\ninputs = ["ft1"]\nparams = { t = [0, 0.3, 1] }',
    "nus": 'method = "nuslerp"\ninputs = [{ model = "ft1", weight = 0.7 }, { model = "ft2", weight = 0.3 }]',
    "ta": f'method = "task_arithmetic"\nbase = "base"\ninputs = [{{ model = "ft1", {W} }}, {{ model = "ft2", weight = 0.5 }}]',
    "ti": 'method = "ties"\n' + TWO % (0.5, 0.6),
    "dt": 'method = "dare_ties"\n' + TWO % (0.5, 0.6),
    "dl": 'method = "dare_linear"\n' + TWO % (0.4, 0.7),
    "bc": 'method = "breadcrumbs"\n' + TWO % (0.8, 0.9),
    "bct": 'method = "breadcrumbs_ties"\n' + TWO % (0.8, 0.7),
    "de": 'method = "della"\n' + TWO % (0.5, 0.6),
    "dell": 'method = "della_linear"\n' + TWO % (0.6, 0.5),
    "ms": 'method = "model_stock"\nbase = "base"\ninputs = ["ft1", "ft2", "ft3"]',
    "ka": 'method = "karcher"\ninputs = ["ft1", "ft2", "ft3"]',
    "sce": 'method = "sce"\nbase = "base"\ninputs = ["ft1", "ft2"]\nparams = { select_topk = 0.5 }',
    "af": 'method = "arcee_fusion"\nbase = "base"\ninputs = ["ft1"]',
    "ns": 'method = "nearswap"\nbase = "base"\ninputs = ["ft1"]\nparams = { t = 0.001 }',
    "pt": 'method = "passthrough"\nslices = [\n  { sources = [{ model = "ft1", layers = [0, 1] }] },\n'
    '  { sources = [{ model = "ft2", layers = [1, 2] }] },\n]',
    # routers from the base's hidden states: a forward pass, where thread counts could matter
    "mo": 'method = "moe"\nbase = "base"\nexperts = [{ model = "ft1", prompts = ["12+3="] },'
    ' { model = "ft2", prompts = ["abc", "xyz"], negative_prompts = ["1+1="] }]',
    # steps of steps: a random method over two steps, then a stack over it and another step
    "chain": 'method = "dare_ties"\nbase = "base"\ninputs = [{ model = "lin", weight = 1.0, density = 0.5 },'
    ' { model = "ms", weight = 0.5, density = 0.7 }]',
    "stack": 'method = "passthrough"\nslices = [\n  { sources = [{ model = "chain", layers = [0, 1] }] },\n'
    '  { sources = [{ model = "de", layers = [1, 2] }] },\n]',
}
METHODS_USED = {
    "linear",
    "slerp",
    "nuslerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "karcher",
    "sce",
    "arcee_fusion",
    "nearswap",
    "passthrough",
    "moe",
}


def every_method_body(order) -> str:
    return "".join(f"[steps.{n}]\n{EVERY_METHOD[n]}\n\n" for n in order)


def test_every_method_reproduces_across_processes_threads_and_step_order(medium, tmp_path):
    """One step per method plus steps of steps, built twice: separate processes and homes,
    `--threads 1` then `--threads 2`, [steps.*] tables in opposite orders. Every key and
    digest must agree, and `verify --rebuild` (default threads) must reproduce the lock.
    All differences are collected so one run shows every step that does not reproduce."""
    from mergepkg.methods import METHODS

    assert set(METHODS) == METHODS_USED
    assert {
        line.split('"')[1] for body in EVERY_METHOD.values() for line in body.splitlines() if line.startswith("method")
    } == METHODS_USED
    names = list(EVERY_METHOD)
    a = write_recipe_file(tmp_path / "a", medium, every_method_body(names))
    b = write_recipe_file(tmp_path / "b", medium, every_method_body(names[::-1]))
    ra = ok(run(tmp_path / "home-a", "build", a, "--out", tmp_path / "out-a", "-q", "--threads", "1"))
    rb = ok(run(tmp_path / "home-b", "build", b, "--out", tmp_path / "out-b", "-q", "--threads", "2"))
    assert sorted(built_lines(ra.stderr)) == sorted(built_lines(rb.stderr)) == sorted(names)
    la, lb = lock_steps(a), lock_steps(b)
    assert sorted(la) == sorted(lb) == sorted(names)
    assert read_lock(lock_file(a)).sources == read_lock(lock_file(b)).sources
    problems = [
        f"{n}: key {'same' if la[n][0] == lb[n][0] else 'DIFFERS'}, digest --threads 1 {la[n][1][:19]}"
        f" vs --threads 2 {lb[n][1][:19]}"
        for n in names
        if la[n] != lb[n]
    ]
    # the digests in each lock are the tensors on disk, in its store and its output
    for home, out, locked in (
        (tmp_path / "home-a", tmp_path / "out-a", la),
        (tmp_path / "home-b", tmp_path / "out-b", lb),
    ):
        for name, (key, digest) in locked.items():
            art = Store(home).get(key)
            assert art.digest == digest and model_digest(art.folder) == digest, name
        for folder in out.iterdir():
            if folder.is_dir():
                assert model_digest(folder) == locked[folder.name][1], folder.name

    v = run(tmp_path / "home-a", "verify", "--rebuild", a)
    assert "Traceback" not in v.stderr, v.stderr
    rows = verify_rows(v.stdout, names)
    if sorted(rows) != sorted(names):
        problems.append(
            f"verify --rebuild of the --threads 1 build (exit {v.returncode}) printed no row for"
            f" {sorted(set(names) - set(rows))}: {(v.stdout + v.stderr).strip()[-800:]}"
        )
    problems += [f"verify --rebuild of the --threads 1 build: {n} {r}" for n, r in rows.items() if r != "ok"]
    if rows and v.returncode != (0 if all(r == "ok" for r in rows.values()) else 1):
        problems.append(f"verify --rebuild exited {v.returncode} with statuses {sorted(set(rows.values()))}")
    assert not problems, "not reproducible:\n" + "\n".join(problems)


def test_step_order_in_the_recipe_does_not_count(models, tmp_path):
    """recipe_hash promises key order does not count. The default outputs (the steps no
    other step uses) follow the order the [steps.*] tables are written in; reordering
    the tables alone must leave the lock up to date (so `build --locked` still passes)."""
    names = ["lin", "sl", "pt"]
    a = write_recipe_file(tmp_path / "a", models, every_method_body(names))
    b = write_recipe_file(tmp_path / "b", models, every_method_body(names[::-1]))
    hashes = recipe_hash(load_recipe(a)), recipe_hash(load_recipe(b))
    first = ok(run(tmp_path / "home", "lock", a))
    assert "new lock" in first.stderr
    a.write_text(b.read_text())  # the same recipe, its tables reordered
    again = ok(run(tmp_path / "home", "lock", a))
    assert "up to date" in again.stderr, f"{again.stderr.strip()} (recipe hashes {hashes[0][:19]}, {hashes[1][:19]})"


# -- concurrent writers of the small shared files ------------------------------------------
WRITER = r"""
import sys
from pathlib import Path
from mergepkg.lockfile import Lock, write_lock
from mergepkg.store.session import Session
from mergepkg.settings import Settings

what, target, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if what == "lock":
    for _ in range(300):
        write_lock(target, Lock("sha256:" + "0" * 64, {}, {}))
else:
    session = Session(Settings(home=target))
    for n in range(40):
        session.store.add_root(Path(f"/recipes/{me}/{n}/mergepkg.lock"))
"""


def _writers(what: str, target: Path, n: int = 4) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, what, str(target), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    # communicate, not wait: a child that fills its stderr pipe would wait for a reader
    outputs = [p.communicate(timeout=120) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outputs)]


def test_concurrent_lock_writers_never_fail(tmp_path):
    """Two builds of one recipe both write its lock file (same content): neither may crash."""
    for r in _writers("lock", tmp_path / "mergepkg.lock"):
        assert r.returncode == 0, r.stderr[-1500:]
    assert read_lock(tmp_path / "mergepkg.lock") is not None


def test_concurrent_builds_of_different_recipes_keep_every_root(tmp_path):
    """Builds of different recipes sharing a home each add their lock to roots.json; a
    lost root lets `cache gc` delete artifacts a lockfile still references."""
    for r in _writers("roots", tmp_path / "home"):
        assert r.returncode == 0, r.stderr[-1500:]
    roots = json.loads((tmp_path / "home" / "roots.json").read_text())
    assert len(roots) == 4 * 40, f"{4 * 40 - len(roots)} of {4 * 40} roots lost"
