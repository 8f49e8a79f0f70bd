"""`tune --ray` on a real Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head that
runs no task and two one-CPU nodes, each with its own MERGEPKG_HOME, sharing only a
`file://` remote with the driver. A search over a tiny recipe (an upstream step, then the
searched `ties`) scored by perplexity on a small text is compared with the same search run
here, one trial after another, in a home of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import time_limit

pytestmark = pytest.mark.slow

NODES = 2
STORE_MEMORY = 100 * 1024**2  # each node's object store: tasks pass small records only
TIMEOUT = 300  # seconds a test may take, at most
TRIALS = 12  # two generations: CMA-ES's population is 6 for two dimensions

RECIPE = """[package]
name = "tiny-tune"
version = "0.1.0"
seed = 1

[sources]
base = {{ path = "{base}" }}
ft1 = {{ path = "{ft1}" }}
ft2 = {{ path = "{ft2}" }}
ft3 = {{ path = "{ft3}" }}

[steps.pre]
method = "linear"
inputs = [{{ model = "ft1", weight = 0.5 }}, {{ model = "ft2", weight = 0.5 }}]

[steps.ties]
method = "ties"
base = "base"
inputs = [{{ model = "pre", weight = 1.0, density = 0.5 }}, {{ model = "ft3", weight = 1.0, density = 0.5 }}]
"""
TEXT = "the quick brown fox jumps over the lazy dog\nhello world, merges of tiny models\n"


@pytest.fixture(autouse=True)
def limited():
    with time_limit(TIMEOUT):
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The module's cluster; yields its address. Each node's home is under the fixture's folder."""
    import ray
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("tune-cluster")
    head = {"num_cpus": 0, "object_store_memory": STORE_MEMORY, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        for i in range(NODES):
            env = {"MERGEPKG_HOME": str(root / f"node{i}"), "HF_HUB_OFFLINE": "1"}
            c.add_node(num_cpus=1, object_store_memory=STORE_MEMORY, env_vars=env)
        c.wait_for_nodes(timeout=120)  # nodes start slowly on a loaded machine
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        yield c.address
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def problem(tmp_path_factory, models) -> Path:
    """A folder with the recipe and the validation and test texts every node can read."""
    root = tmp_path_factory.mktemp("tune-problem")
    (root / "recipe.toml").write_text(RECIPE.format(**{k: models[k] for k in ("base", "ft1", "ft2", "ft3")}))
    (root / "val.txt").write_text(TEXT)
    (root / "test.txt").write_text(TEXT.upper())
    return root


def tune_file(folder: Path, problem: Path, trials: int = TRIALS, seed: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.tune.toml"
    path.write_text(
        f'[tune]\nrecipe = "{problem / "recipe.toml"}"\nstep = "ties"\ntrials = {trials}\nseed = {seed}\n'
        '[tune.space]\n"steps.ties.inputs[0].weight" = [0.2, 1.2]\n"steps.ties.inputs[1].weight" = [0.2, 1.2]\n'
        f'[tune.objective]\nvalidation = ["{problem / "val.txt"}"]\ntest = ["{problem / "test.txt"}"]\n'
    )
    return path


def local_search(root: Path, problem: Path, **how):
    """The same search on this machine, one trial after another, in a home of its own."""
    from mergepkg.settings import Settings
    from mergepkg.store.session import Session
    from mergepkg.tune.search import search
    from mergepkg.tune.spec import load_tune

    spec = load_tune(tune_file(root / "search", problem, **how))
    return search(spec, Session(Settings(home=root / "home"))).trials


@pytest.fixture(scope="module")
def reference(tmp_path_factory, problem):
    return local_search(tmp_path_factory.mktemp("tune-local"), problem)


@pytest.fixture
def remote(tmp_path) -> str:
    from mergepkg.remote.config import add_remote
    from mergepkg.settings import Settings

    folder = tmp_path / "remote"
    folder.mkdir()
    add_remote(Settings(), "shared", f"file://{folder}")  # in the driver's home (the test's)
    return f"file://{folder}"


def same(trials) -> list[tuple]:
    return [(t.number, t.values, t.key, t.scores, t.objective) for t in trials]


def test_a_search_on_the_cluster_gives_the_local_trials(cluster, problem, reference, remote, tmp_path, capsys):
    import json

    from helpers import cli

    from mergepkg import api
    from mergepkg.remote.sync import open_remote

    searched, finished = api.tune(tune_file(tmp_path / "search", problem), ray=cluster)
    assert same(searched.trials) == same(reference)
    assert len({t.node for t in searched.trials}) == NODES  # side by side on both nodes
    assert all(not t.stored for t in searched.trials if t.number < 6)  # generation 1: each its own key
    shared = open_remote(remote)
    best = searched.best
    record = shared.record(best.key)
    assert record is not None and record.digest == best.digest  # the best's artifact is on the remote
    assert finished.best.key == best.key and finished.recipe.exists()
    capsys.readouterr()
    again = tune_file(tmp_path / "again", problem)  # another log, the same remote: every key is stored
    code, stdout, stderr = cli(capsys, "tune", str(again), "--ray", cluster, "-r", "shared", "--json")
    assert code == 0, stderr
    trials = json.loads(stdout)["trials"]
    assert [(t["values"], t["key"], t["scores"]) for t in trials] == [(t.values, t.key, t.scores) for t in reference]
    assert all(t["stored"] for t in trials) and stderr.count(" stored ") >= TRIALS


def test_a_recipe_error_comes_back_in_the_answer(problem, models, tmp_path):
    """On a node (called here, outside Ray): a source the node lacks is answered, not raised,
    so Ray does not retry it; the driver raises it (`Cluster._check`)."""
    from mergepkg.cluster.jobs import Engine
    from mergepkg.errors import MergepkgError
    from mergepkg.recipe.parse import parse_recipe
    from mergepkg.tune.parallel import TrialJob, run_on_node

    shutil.copytree(models["ft3"], tmp_path / "gone")
    text = (problem / "recipe.toml").read_text().replace(str(models["ft3"]), str(tmp_path / "gone"))
    recipe = parse_recipe(text, problem / "recipe.toml")
    shutil.rmtree(tmp_path / "gone")  # there when the driver parsed it, not on the node
    job = TrialJob(0, recipe, ("ties",), {}, f"file://{tmp_path}", Engine(), None)
    done = run_on_node(job)
    assert isinstance(done.error, MergepkgError) and "gone" in str(done.error) and done.pushed == {}


def test_an_interrupted_search_resumes_on_the_cluster(cluster, problem, remote, tmp_path):
    from mergepkg.store.session import Session
    from mergepkg.tune.parallel import on_cluster
    from mergepkg.tune.search import search
    from mergepkg.tune.spec import load_tune

    want = local_search(tmp_path / "local", problem, trials=8, seed=6)  # other points than the first test's
    spec = load_tune(tune_file(tmp_path / "search", problem, trials=8, seed=6))

    def stop(trial, resumed):
        if trial.number == 2:  # in the middle of the first generation: 3, 4, 5 are cancelled
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), on_cluster(spec, Session(), cluster, None) as runner:
        search(spec, Session(), on_trial=stop, runner=runner)
    log = spec.folder / "trials.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 3
    seen = []
    with on_cluster(spec, Session(), cluster, None) as runner:
        done = search(spec, Session(), on_trial=lambda t, resumed: seen.append((t.number, resumed)), runner=runner)
    assert seen == [(n, n < 3) for n in range(8)]
    assert same(done.trials) == same(want)
    assert sum(not t.stored for t in done.trials) >= 5  # built on the cluster (the cancelled ones maybe not)
