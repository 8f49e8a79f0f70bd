"""`mergepkg tune` on the demo with a tiny budget: resume, honest splits, best.toml."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import gc_refusals

from mergepkg import api
from mergepkg.cli.app import main
from mergepkg.eval import run
from mergepkg.lockfile import read_lock
from mergepkg.store.session import Session
from mergepkg.tune import search as search_mod
from mergepkg.tune.search import finish, search
from mergepkg.tune.spec import load_tune

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
TASKS = DEMO.parent / "demo" / "tasks"
VAL = DEMO.parent / "demo-tune" / "tasks"  # scripts/demo_validation.py


@pytest.fixture
def spec_file(tmp_path) -> Path:
    """The demo's ties step over two weights; 12 prompts per split keep each trial short."""
    for name in ("upper_val", "inc_val", "upper", "inc"):
        lines = ((VAL if "val" in name else TASKS) / f"{name}.jsonl").read_text().splitlines()[:12]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "demo.tune.toml"
    path.write_text(
        f'[tune]\nrecipe = "{DEMO}"\nstep = "ties"\ntrials = 4\nseed = 3\n'
        '[tune.space]\n"steps.ties.inputs[0].weight" = [0.2, 1.2]\n"steps.ties.inputs[1].weight" = [0.2, 1.2]\n'
        '[tune.objective]\nvalidation = ["upper_val.jsonl", "inc_val.jsonl"]\ntest = ["upper.jsonl", "inc.jsonl"]\n'
    )
    return path


def test_resume_after_an_exception_redoes_no_finished_trial(spec_file, monkeypatch):
    spec, session = load_tune(spec_file), Session()

    def stop(trial, resumed):
        if trial.number == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(spec, session, on_trial=stop)
    log = spec.folder / "trials.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 2  # header and trials 0, 1
    with open(log, "a") as f:
        f.write('{"number": 2, "values": {"steps.ties')  # a kill in the middle of a line
    ran = []
    real = search_mod.run_trial
    monkeypatch.setattr(search_mod, "run_trial", lambda *a, **k: ran.append(a[3]) or real(*a, **k))
    seen = []
    done = search(spec, session, on_trial=lambda t, resumed: seen.append((t.number, resumed)))
    assert ran == [2, 3] and seen == [(0, True), (1, True), (2, False), (3, False)]
    fresh = search(spec, session, restart=True)
    assert [t.values for t in fresh.trials] == [t.values for t in done.trials]  # replay is exact
    assert all(t.stored for t in fresh.trials)  # every key was in the store: nothing built


def test_search_never_reads_the_test_split_and_best_toml_is_locked(spec_file, monkeypatch):
    read: list[str] = []
    real = run.examples
    monkeypatch.setattr(run, "examples", lambda task: read.append(task.path.name) or real(task))
    spec, session = load_tune(spec_file), Session()
    searched = search(spec, session)
    assert set(read) == {"upper_val.jsonl", "inc_val.jsonl"}
    finished = finish(searched, session)
    assert {"upper.jsonl", "inc.jsonl"} <= set(read)
    lock = read_lock(finished.lock)
    assert lock is not None and lock.steps["ties"].key == finished.best.key
    again = api.build(finished.recipe, mode="locked")
    assert again.built == [] and again.artifacts["ties"].digest == lock.steps["ties"].digest


def test_cli_prints_the_table_and_writes_the_plot(spec_file, capsys):
    assert main(["tune", str(spec_file), "--trials", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["trials"]) == 2 and set(data["test"]) == {"upper", "inc", "objective"}
    assert (spec_file.parent / "demo.tune" / "search.svg").read_text().startswith("<svg")


def test_cache_gc_waits_while_a_trial_is_evaluated(spec_file, monkeypatch):
    """The trial's model is read after its build: gc must not remove it then."""
    spec, session = load_tune(spec_file), Session()
    refused = gc_refusals(monkeypatch, search_mod, "validation_scores")
    search(spec, session)
    assert refused and set(refused) == {"a build is running in this store"}


def test_finish_holds_the_store_until_both_models_are_evaluated(spec_file, monkeypatch):
    """The recipe as written has no lock: `cache gc` during finish would remove its step
    between its build and its evaluation."""
    spec, session = load_tune(spec_file), Session()
    searched = search(replace(spec, trials=1), session)
    refused = gc_refusals(monkeypatch, search_mod, "_scores")
    finish(searched, session)
    assert refused == ["a build is running in this store"] * 3


def test_validation_tasks_sharing_a_stem_are_scored_apart(spec_file):
    """upper/t.jsonl and inc/t.jsonl: two scores in the objective, not one counted twice."""
    folder = spec_file.parent
    for skill in ("upper", "inc"):
        (folder / skill).mkdir()
        (folder / f"{skill}_val.jsonl").rename(folder / skill / "t.jsonl")
    text = spec_file.read_text().replace('["upper_val.jsonl", "inc_val.jsonl"]', '["upper/t.jsonl", "inc/t.jsonl"]')
    spec_file.write_text(text.replace("trials = 4", "trials = 1"))
    spec, session = load_tune(spec_file), Session()
    [trial] = search(spec, session).trials
    assert set(trial.scores) == {"upper/t", "inc/t"}
    assert trial.objective == pytest.approx(sum(trial.scores.values()) / 2)
    assert trial.scores["upper/t"] != trial.scores["inc/t"]
