"""tune/log.py and tune/report.py without a search: a damaged trial log, or a trial out of
its turn, is refused at its line (the last line alone may be cut short by a kill); one
run at a time holds a search; a trial that scored no number is the worst, plotted and
reported like any other."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, replace

import pytest

from mergepkg.errors import RecipeError
from mergepkg.store.evals import Result
from mergepkg.tune.log import Trial, TrialLog
from mergepkg.tune.report import svg, text_plot
from mergepkg.tune.search import combined

TRIAL = Trial(0, {"w": 0.5}, [0.1], "sha256:" + "0" * 64, {"t": 0.5}, 0.5, 1.0, 2.0, False, 1e9)


def written(tmp_path, *lines: str) -> TrialLog:
    log = TrialLog(tmp_path / "trials.jsonl", "fp")
    log.path.write_text("".join(line + "\n" for line in lines))
    return log


def line(trial: Trial, **changes) -> str:
    return json.dumps({**asdict(trial), **changes})


def test_the_last_line_cut_short_is_dropped_and_a_damaged_one_before_it_refused(tmp_path):
    head, one, two = json.dumps({"search": "fp"}), line(TRIAL), line(replace(TRIAL, number=1))
    assert written(tmp_path, head, one, two[:30]).read() == [TRIAL]
    assert written(tmp_path, head, one, line(TRIAL, objective="0.7")).read() == [TRIAL]  # last: redone
    for bad in (two[:30], line(TRIAL, objective="0.7"), line(TRIAL, number=True), "[1]"):
        with pytest.raises(RecipeError, match="not a trial") as info:
            written(tmp_path, head, bad, one).read()
        assert info.value.line == 2 and "--restart" in info.value.hint


@pytest.mark.parametrize("first", ["", "{", "[1]", '{"other": 1}'])
def test_a_log_whose_header_is_damaged_is_refused_at_line_one(tmp_path, first):
    with pytest.raises(RecipeError, match="first line is not its header") as info:
        written(tmp_path, first or " ", line(TRIAL)).read()
    assert info.value.line == 1


def test_a_trial_that_scored_no_number_is_the_worst_and_is_plotted(tmp_path):
    nan = Result("t", "perplexity", math.nan, 1)
    assert (
        combined("mean", [nan]) == -math.inf and combined("min", [Result("a", "exact_match", 0.5, 1), nan]) == -math.inf
    )
    trials = [TRIAL, replace(TRIAL, number=1, objective=-math.inf), replace(TRIAL, number=2, objective=0.7)]
    plot = text_plot(trials)
    assert "0.700" in plot[0] and "0.500" in plot[-3]
    assert "<svg" in svg(trials, "t", ["best"])
    log = TrialLog(tmp_path / "t.jsonl", "fp")
    log.start(trials)
    assert [t.objective for t in log.read()] == [0.5, -math.inf, 0.7]  # -inf survives the log


def test_a_trial_out_of_its_turn_is_refused_at_its_line(tmp_path):
    """Two runs at once appended trials 0, 1 twice; resumed, the log blamed the sampler."""
    head, zero, one = json.dumps({"search": "fp"}), line(TRIAL), line(replace(TRIAL, number=1))
    assert len(written(tmp_path, head, zero, one).read()) == 2
    for lines, at in (((zero, one, zero, one), 4), ((one,), 2), ((zero, zero), 3)):
        with pytest.raises(RecipeError, match="was due") as info:
            written(tmp_path, head, *lines).read()
        assert info.value.line == at and "--restart" in info.value.hint


@contextmanager
def held_elsewhere(folder, tune):
    """`held` by another process (as a second `mergepkg tune` would hold it) while inside."""
    import subprocess
    import sys
    import time

    ready = folder.parent / "held"
    code = (
        "import sys, time; from pathlib import Path; from mergepkg.tune.log import held\n"
        f"with held(Path({str(folder)!r}), Path({str(tune)!r})):\n"
        f"    Path({str(ready)!r}).touch(); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the other run did not start"
            time.sleep(0.02)
        yield
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_of_one_search_fails_at_once(tmp_path):
    """No lock was taken: a second run appended the same trial numbers to the log. In one
    process the lock is held again, counting (`api.tune` holds it around `search` and
    `finish`, which hold it too)."""
    from mergepkg.errors import BuildError
    from mergepkg.tune.log import held

    folder, tune = tmp_path / "t", tmp_path / "t.toml"
    with held_elsewhere(folder, tune):
        with pytest.raises(BuildError, match=r"another run of t\.toml") as info, held(folder, tune):
            pass
        assert info.value.file == str(tune) and "one run at a time" in info.value.hint
    with held(folder, tune), held(folder, tune):  # released when the other ended; again in this one
        pass


def test_search_holds_its_folder(tmp_path, monkeypatch):
    """`search` (and `finish`) take the lock: a run meanwhile fails before reading the log."""
    from pathlib import Path

    from mergepkg.errors import BuildError
    from mergepkg.store.session import Session
    from mergepkg.tune import search as search_mod
    from mergepkg.tune.spec import load_tune

    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
    val, test = demo.parent / "demo-tune" / "tasks" / "inc_val.jsonl", demo.parent / "demo" / "tasks" / "inc.jsonl"
    path = tmp_path / "t.toml"
    path.write_text(
        f'[tune]\nrecipe = "{demo}"\nstep = "ties"\ntrials = 1\n[tune.space]\n"steps.ties.inputs[0].weight" = [0, 1]\n'
        f'[tune.objective]\nvalidation = ["{val}"]\ntest = ["{test}"]\n'
    )
    spec = load_tune(path)
    monkeypatch.setattr(search_mod, "run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    with held_elsewhere(spec.folder, spec.path), pytest.raises(BuildError, match="another run"):
        search_mod.search(spec, Session())
    assert not (spec.folder / "trials.jsonl").exists()
