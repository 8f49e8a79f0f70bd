"""Builds on a real Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`):
each node its own raylet and workers with its own MERGEPKG_HOME, so the only disk they
share with the driver is the remote (`file://`). One cluster for the module: a head that
runs no task and three one-CPU nodes.

Compared with a local build: a wide recipe (expert merges and an moe step), a node removed
while it builds a step, two recipes sharing a step, and a recipe error from a worker.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import build_recipe, time_limit

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
NODES = 3
STORE_MEMORY = 100 * 1024**2  # each node's object store: tasks pass small records only
TIMEOUT = 240  # seconds a test may take, at most


class Nodes:
    """The module's cluster: its nodes' homes, and what a test needs to add or remove nodes."""

    def __init__(self, root: Path):
        from ray.cluster_utils import Cluster

        self.root = root
        self.flags: dict[str, Path] = {}  # node id -> a file: while it exists, each tensor's merge there sleeps
        self.count = 0
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,  # the driver's node runs no step: every task goes to a worker node
                "object_store_memory": STORE_MEMORY,
                "include_dashboard": False,
                "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
            },
        )
        for _ in range(NODES):
            self.add()

    def add(self):
        self.count += 1
        home = self.root / f"node{self.count}"
        env = {
            "MERGEPKG_HOME": str(home),
            "MERGEPKG_TEST_SLOW_FILE": str(self.root / f"slow-{self.count}"),
            "HF_HUB_OFFLINE": "1",
        }
        node = self.cluster.add_node(num_cpus=1, object_store_memory=STORE_MEMORY, env_vars=env)
        self.flags[node.node_id] = Path(env["MERGEPKG_TEST_SLOW_FILE"])
        return node

    def slow(self, on: bool = True, *, but: str | None = None) -> None:
        """Every node's merges slow (or at full speed again), except node `but`'s."""
        for node_id, flag in self.flags.items():
            if node_id != but:
                flag.touch() if on else flag.unlink(missing_ok=True)

    def homes(self) -> list[Path]:
        return sorted(self.root.glob("node*"))

    def remove(self, node_id: str) -> None:
        for node in self.cluster.worker_nodes:
            if node.node_id == node_id:
                self.cluster.remove_node(node, allow_graceful=False)
                return
        raise AssertionError(f"no worker node {node_id}")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    import ray

    nodes = Nodes(tmp_path_factory.mktemp("cluster"))
    try:
        nodes.cluster.wait_for_nodes(timeout=120)  # nodes start slowly on a loaded machine
        runtime_env = {
            "worker_process_setup_hook": "cluster_hooks.slow_when_flagged",
            "env_vars": {"PYTHONPATH": str(HERE)},  # where cluster_hooks is, on every node
        }
        ray.init(address=nodes.cluster.address, runtime_env=runtime_env, logging_level="ERROR", log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        nodes.cluster.shutdown()


@pytest.fixture
def remote(tmp_path) -> str:
    folder = tmp_path / "remote"
    folder.mkdir()
    return f"file://{folder}"


@pytest.fixture(autouse=True)
def limited():
    with time_limit(TIMEOUT):
        yield


class Recorder:
    """A reporter keeping where each step ran, and (optionally) acting when one starts."""

    def __init__(self, on_placed=None):
        self.placed: list[tuple[str, str]] = []  # (step, node) as workers started them
        self.built: list[tuple[str, str]] = []
        self.on_placed = on_placed
        self.tensors = self.bytes = 0
        self.warnings: list[str] = []

    def step_placed(self, name, key, node):
        self.placed.append((name, node))
        if self.on_placed is not None:
            self.on_placed(name, node)

    def step_built(self, name, key, node):
        self.built.append((name, node))

    def tensor_done(self, nbytes):
        self.tensors += 1
        self.bytes += nbytes

    def warning(self, message):
        self.warnings.append(message)

    def __getattr__(self, name):  # the rest of the Reporter: nothing to keep
        return lambda *args, **kwargs: None


def on_cluster(paths, remote, reporter=None, settings=None, **kw):
    from mergepkg.cluster.driver import build_on_cluster
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.settings import Settings
    from mergepkg.store.session import Session

    recipes = [load_recipe(p) for p in paths]
    session = Session(Settings(**(settings or {})))
    return build_on_cluster(recipes, session, address="auto", remote=remote, reporter=reporter, **kw)


def write(folder: Path, name: str, models: dict, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items() if k in ("base", "ft1", "ft2", "ft3"))
    path = folder / f"{name}.toml"
    path.write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n[sources]\n{sources}\n{body}')
    return path


def digests(report) -> dict[str, str]:
    return {n: s.digest for n, s in report.lock.steps.items()}


def local_build(tmp_path, monkeypatch, models, name, body, **settings):
    """A plain local build in a home of its own."""
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "local-home"))
    report = build_recipe(write(tmp_path / "local", name, models, body), **settings)
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "driver-home"))
    return report


def local_digests(tmp_path, monkeypatch, models, name, body) -> dict[str, str]:
    """The digests of a plain local build in a home of its own."""
    return digests(local_build(tmp_path, monkeypatch, models, name, body))


WIDE = """
[steps.e1]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.7 }]

[steps.e2]
method = "dare_ties"
base = "base"
inputs = [{ model = "ft2", weight = 1.0, density = 0.6 }, { model = "ft3", weight = 0.8, density = 0.5 }]

[steps.e3]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 0.6 }, { model = "ft3", weight = 0.4 }]

[steps.mix]
method = "moe"
base = "base"
params = { gate_mode = "random" }
experts = [{ model = "e1" }, { model = "e2" }, { model = "e3" }]
"""


def test_a_wide_recipe_builds_as_it_does_here(nodes, models, remote, tmp_path, monkeypatch):
    want = local_digests(tmp_path, monkeypatch, models, "wide", WIDE)
    rec = Recorder()
    build = on_cluster([write(tmp_path / "c", "wide", models, WIDE)], remote, rec, outs=[tmp_path / "out"])
    (report,) = build.reports
    assert digests(report) == want
    assert sorted(report.built) == ["e1", "e2", "e3", "mix"]
    assert {n for n, _ in rec.built} == {"e1", "e2", "e3", "mix"}
    assert len({node for _, node in rec.built}) >= 2  # the experts ran side by side on several nodes
    assert rec.tensors > 0 and rec.bytes > 0  # the cluster's progress reached the driver
    assert (tmp_path / "out" / "config.json").is_file()
    # no disk shared but the remote: each step is in the store of the node that built it,
    # the driver's home holds the output only (pulled), and the remote every step
    keys = {n: report.lock.steps[n].key for n in want}
    node_keys = {p.name for h in nodes.homes() for p in (h / "store").glob("*")}
    assert set(keys.values()) <= node_keys
    assert {p.name for p in (tmp_path / "driver-home" / "store").iterdir()} == {keys["mix"]}
    remote_records = {p.stem for p in Path(remote.removeprefix("file://"), "records").glob("*.json")}
    assert set(keys.values()) <= remote_records
    # built again: everything is stored here or on the remote, no task runs
    again = on_cluster([write(tmp_path / "c", "wide", models, WIDE)], remote, Recorder())
    assert again.tasks == {} and digests(again.reports[0]) == want


SHARED = """
[steps.shared]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 0.9, density = 0.4 }, { model = "ft3", weight = 0.9, density = 0.4 }]

[steps.top]
method = "linear"
inputs = [{ model = "shared", weight = 0.5 }, { model = "%s", weight = 0.5 }]
"""


def test_two_recipes_share_a_step_built_once(nodes, models, remote, tmp_path, monkeypatch):
    a_body, b_body = SHARED % "ft2", SHARED % "ft1"
    want_a = local_digests(tmp_path, monkeypatch, models, "a", a_body)
    rec = Recorder()
    build = on_cluster(
        [write(tmp_path / "c", "a", models, a_body), write(tmp_path / "c", "b", models, b_body)], remote, rec
    )
    a, b = build.reports
    assert digests(a) == want_a
    assert a.lock.steps["shared"].key == b.lock.steps["shared"].key
    assert [n for n, _ in rec.built].count("shared") == 1 and len(build.tasks) == 3
    assert "shared" in a.built and "shared" in b.built


def test_the_command_line_builds_recipes_on_the_cluster(nodes, models, remote, tmp_path, monkeypatch, capsys):
    from helpers import cli

    a_body, b_body = SHARED % "ft2", SHARED % "ft3"
    want_b = local_digests(tmp_path, monkeypatch, models, "b", b_body)
    a, b = write(tmp_path / "c", "a", models, a_body), write(tmp_path / "c", "b", models, b_body)
    assert cli(capsys, "remote", "add", "shared", remote)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = cli(capsys, "build", "--ray", a, b, "-q")  # `--ray RECIPE`: auto, and the recipe
    assert code == 0, stderr
    assert stderr.count("done: 2 built") == 2  # `shared` counts for both: built once, on the cluster
    assert stdout.split() == [str(tmp_path / "out" / "a"), str(tmp_path / "out" / "b")]
    from mergepkg.lockfile import read_lock

    assert {n: s.digest for n, s in read_lock(b.with_suffix(".lock")).steps.items()} == want_b


def test_a_step_split_over_three_workers_is_the_local_build_byte_for_byte(nodes, models, remote, tmp_path, monkeypatch):
    from mergepkg.cluster.plan import Split

    body = SLOW.replace("0.7", "0.75")
    shards = {"max_shard_bytes": 40_000}  # several shards, so several parts
    local = local_build(tmp_path, monkeypatch, models, "split", body, **shards)
    rec = Recorder()
    build = on_cluster([write(tmp_path / "c", "split", models, body)], remote, rec, settings=shards, split=Split(3))
    (report,) = build.reports
    assert digests(report) == digests(local)
    assert len(rec.placed) == 3 and len({node for _, node in rec.placed}) >= 2  # three parts, side by side
    ours, theirs = report.artifacts["slow"].folder, local.artifacts["slow"].folder
    names = sorted(p.name for p in theirs.iterdir() if p.name != "mergepkg-manifest.json")
    assert len([n for n in names if n.endswith(".safetensors")]) >= 3
    assert sorted(p.name for p in ours.iterdir() if p.name != "mergepkg-manifest.json") == names
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    assert not Path(remote.removeprefix("file://"), "staging").exists() or not any(
        Path(remote.removeprefix("file://"), "staging").rglob("*.safetensors")
    )
    # assembled on the remote: the record lists the local build's files, and no node's store
    # holds the step (the parts staged their shards, the assembly renamed them there)
    from mergepkg.remote.sync import open_remote, record_for

    key = report.lock.steps["slow"].key
    record = open_remote(remote).record(key)
    assert record is not None and record.files == record_for(local.artifacts["slow"]).files
    assert not [h for h in nodes.homes() if (h / "store" / key).exists()]


SLOW = """
[steps.slow]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 0.7, density = 0.3 }, { model = "ft2", weight = 0.6, density = 0.8 }]
"""


def test_a_node_lost_mid_step_is_retried_elsewhere(nodes, models, remote, tmp_path, monkeypatch):
    want = local_digests(tmp_path, monkeypatch, models, "slow", SLOW)
    lost: list[str] = []

    def remove(name, node):
        if not lost:  # the first node to start the step goes, mid-step (each tensor sleeps)
            lost.append(node)
            nodes.slow(False, but=node)  # the retry runs at full speed; the lost node stays slow till it dies
            nodes.remove(node)

    nodes.slow()
    try:
        rec = Recorder(remove)
        build = on_cluster([write(tmp_path / "c", "slow", models, SLOW)], remote, rec)
    finally:
        nodes.slow(False)
        nodes.add()  # back to three nodes
    assert digests(build.reports[0]) == want
    assert lost and build.tasks[build.reports[0].lock.steps["slow"].key].node != lost[0]
    assert len(rec.placed) == 2  # started on the lost node, then once elsewhere


def test_a_recipe_error_fails_the_build_once_located(nodes, models, remote, tmp_path):
    from safetensors.torch import load_file, save_file

    from mergepkg.pitfalls.pitfall import WarningsDenied

    nan = tmp_path / "nan"
    shutil.copytree(models["ft2"], nan)
    tensors = load_file(nan / "model.safetensors")
    name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    body = (
        '[steps.bad]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
    )
    path = write(tmp_path / "c", "bad", {**models, "ft2": nan}, body)
    rec = Recorder()
    with pytest.raises(WarningsDenied) as e:
        on_cluster([path], remote, rec, deny_warnings=True)
    assert "MP3" in str(e.value) and e.value.file == str(path)
    assert len(rec.placed) == 1  # not retried
    assert not list(Path(remote.removeprefix("file://")).glob("records/*.json"))  # nothing pushed


if sys.platform != "linux":  # Ray's local cluster and SIGALRM, as CI runs them
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="Linux only")]
