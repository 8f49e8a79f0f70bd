"""tune/log.py and tune/report.py without a search: a damaged trial log is refused at its
line (the last line alone may be cut short by a kill), and a trial that scored no number
is the worst, plotted and reported like any other."""

from __future__ import annotations

import json
import math
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
