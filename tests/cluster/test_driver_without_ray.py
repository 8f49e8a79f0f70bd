"""The driver's planning and the tasks' functions run in this process, without Ray: each
"node" a home of its own, the remote on `file://`.

Warnings of a split step's parts reach the driver and are denied there as a whole
step's are; a locked recipe whose hub sources the driver does not fetch is laid out from
its Hugging Face cache (split, sized, its MP2xx told), or, where that cache lacks them,
built whole with a warning and its MP2xx checked on the node; a build whose steps all
come from the remote reports only the outputs it pulled, under the remote's name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import build_recipe, cli

from mergepkg.builder.substitute import Remotes
from mergepkg.cluster.driver import _plan, build_on_cluster
from mergepkg.cluster.jobs import DEFAULT_MEMORY, Engine, StepJob
from mergepkg.cluster.parts import run_assemble, run_part, staging
from mergepkg.cluster.plan import Graph, Split, make_graph, make_jobs
from mergepkg.cluster.worker import run_step
from mergepkg.engine.split import Part
from mergepkg.pitfalls.pitfall import WarningsDenied
from mergepkg.recipe.parse import load_recipe
from mergepkg.remote.config import add_remote
from mergepkg.remote.sync import open_remote, push_artifact
from mergepkg.settings import Settings
from mergepkg.store.session import Session

SHARD = 20_000  # the tiny models in about ten shards
THREE = Split(3)


class Told:
    """A reporter keeping what the driver tells."""

    def __init__(self):
        self.warnings: list[str] = []
        self.pitfalls: list = []

    def warning(self, message):
        self.warnings.append(message)

    def pitfall(self, pitfall):
        self.pitfalls.append(pitfall)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def planned(path: Path, url: str, *, deny: bool = False, split: Split | None = THREE, told=None) -> Graph:
    """The graph and jobs of `path`, as the driver plans them."""
    session = Session(Settings(max_shard_bytes=SHARD))
    p = _plan(load_recipe(path), None, session, None, "update", told or Told(), deny)
    graph = make_graph([p], session, Remotes(session.settings, [("shared", url)], p.warnings.warning), 0)
    make_jobs(graph, url, Engine.of(session.settings), deny, split, settings=session.settings)
    return graph


@pytest.fixture
def remote(tmp_path) -> str:
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def node(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("MERGEPKG_HOME", str(home))


# -- a split step's warnings -------------------------------------------------------------


@pytest.fixture
def nan_recipe(tmp_path, models):
    """A linear step over ft1 and a copy of ft2 with a NaN in one tensor (MP302)."""
    from safetensors.torch import load_file, save_file

    nan = tmp_path / "nan"
    shutil.copytree(models["ft2"], nan)
    tensors = load_file(nan / "model.safetensors")
    name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[package]\nname = "bad"\nversion = "0.1.0"\n\n[sources]\nft1 = {{ path = "{models["ft1"]}" }}\n'
        f'ft2 = {{ path = "{nan}" }}\n\n[steps.bad]\nmethod = "linear"\n'
        'inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
    )
    return path


def parts_of(graph: Graph) -> tuple[StepJob, list[Part]]:
    (key,) = graph.parts
    return graph.jobs[key], graph.parts[key]


def test_a_split_steps_value_warnings_reach_its_answer(nan_recipe, remote, tmp_path, monkeypatch):
    node(monkeypatch, tmp_path / "driver")
    job, parts = parts_of(planned(nan_recipe, remote))
    answers = []
    for part in parts:
        node(monkeypatch, tmp_path / f"node{part.index}")
        answers.append(run_part(job, part, None))
    assert all(a.error is None for a in answers)
    assert [p.code for a in answers for p in a.pitfalls] == ["MP302"]  # one tensor, in one part
    node(monkeypatch, tmp_path / "assembler")
    done = run_assemble(job, parts, None, *answers)
    assert done.error is None and [p.code for p in done.pitfalls] == ["MP302"]


def test_deny_warnings_fails_the_part_that_finds_one_and_stages_nothing(nan_recipe, remote, tmp_path, monkeypatch):
    node(monkeypatch, tmp_path / "driver")
    job, parts = parts_of(planned(nan_recipe, remote, deny=True))
    answers = []
    for part in parts:
        node(monkeypatch, tmp_path / f"node{part.index}")
        answers.append(run_part(job, part, None))
    (failed,) = [a for a in answers if a.error is not None]
    assert isinstance(failed.error, WarningsDenied) and "MP302" in failed.error.message
    assert failed.error.file == str(nan_recipe)  # placed at the step
    target = open_remote(remote)
    assert not list(Path(staging(target, parts[failed.index])).glob("*"))
    done = run_assemble(job, parts, None, *answers)
    assert isinstance(done.error, WarningsDenied) and [p.code for p in done.pitfalls] == ["MP302"]
    assert not target.has(job.key)


# -- hub sources the lock pins, not fetched on the driver -----------------------------------

HUB = """[package]
name = "hub"
version = "0.1.0"
allow = ["MP103"]

[sources]
base = { hf = "tiny/base" }
ft1 = { hf = "tiny/ft1" }
ft2 = { hf = "tiny/ft2" }

[steps.m]
method = "dare_ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.01 }, { model = "ft2", weight = 1.0, density = 0.01 }]
"""


@pytest.fixture
def hub_recipe(tiny_hub, tmp_path, capsys):
    """A locked recipe over hub sources (a random density of 0.01: MP201)."""
    path = tmp_path / "hub.toml"
    path.write_text(HUB)
    assert cli(capsys, "lock", path)[0] == 0
    return path


def test_locked_hub_sources_in_the_drivers_cache_are_laid_out_there(hub_recipe, remote, tmp_path, monkeypatch):
    told = Told()
    graph = planned(hub_recipe, remote, told=told)
    (key,) = graph.build
    assert len(graph.parts[key]) == 3 and graph.jobs[key].laid_out
    tensors, nbytes = graph.totals[key]
    assert tensors > 0 and nbytes > 0 and graph.sizes[key].memory != DEFAULT_MEMORY
    assert {p.code for p in told.pitfalls} == {"MP201"}
    with pytest.raises(WarningsDenied, match="MP201"):
        planned(hub_recipe, remote, deny=True)


def test_hub_sources_the_driver_lacks_are_checked_on_the_node(hub_recipe, remote, tmp_path, monkeypatch):
    cache = Path(Settings().hf_cache or "")
    node(monkeypatch, tmp_path / "driver")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # the driver's cache lacks them
    told = Told()
    graph = planned(hub_recipe, remote, told=told)
    (key,) = graph.build
    job = graph.jobs[key]
    assert key not in graph.parts and key not in graph.totals and not job.laid_out
    assert graph.sizes[key].memory == DEFAULT_MEMORY
    assert told.warnings == [
        "--split not applied to step 'm': its layout is not known on the driver "
        "(it cannot read 'base', 'ft1', 'ft2' here); built whole on one node"
    ]
    assert not told.pitfalls
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the node's cache holds them
    node(monkeypatch, tmp_path / "node1")
    done = run_step(job, None)
    assert done.error is None and {p.code for p in done.pitfalls} == {"MP201"}
    node(monkeypatch, tmp_path / "driver")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    denied = planned(hub_recipe, remote, deny=True, split=None)  # the driver cannot see them: no error yet
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    node(monkeypatch, tmp_path / "node2")
    (key,) = denied.build
    done = run_step(denied.jobs[key], None)
    assert isinstance(done.error, WarningsDenied) and "MP201" in done.error.message
    assert done.error.file == str(hub_recipe) and {p.code for p in done.pitfalls} == {"MP201"}
    assert not (tmp_path / "node2" / "store" / key).exists()


# -- what the driver reports as pulled -------------------------------------------------------

TWO = """
[steps.a]
method = "linear"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[steps.b]
method = "linear"
inputs = [{ model = "a", weight = 0.5 }, { model = "ft3", weight = 0.5 }]
"""


def test_only_the_outputs_pulled_are_reported_under_the_remotes_name(write_recipe, remote, tmp_path, monkeypatch):
    path = write_recipe(TWO)
    node(monkeypatch, tmp_path / "builder")
    local = build_recipe(path)  # the lock, beside the recipe, pins both digests
    target = open_remote(remote)
    for art in local.artifacts.values():
        push_artifact(target, art)
    node(monkeypatch, tmp_path / "driver")
    settings = Settings()
    add_remote(settings, "shared", remote)
    build = build_on_cluster([load_recipe(path)], Session(settings), address="127.0.0.1:1", remote=remote)
    (report,) = build.reports
    assert build.tasks == {}  # nothing to build: Ray is never asked
    assert report.pulled == {"b": "shared"}  # `a` is on the remote, but nothing here pulled it
    assert report.lock.steps["b"].digest == local.lock.steps["b"].digest
