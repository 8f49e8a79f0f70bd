"""`mergepkg tune`: the search, then the result on the held-out split.

A trial is one independent unit: the recipe with the sampler's numbers substituted
(`substitute.py`), the scored step built into the store (upstream steps keep their
keys and are reused; a key already stored builds nothing) and evaluated on the
validation tasks. Trials run one after another here (`Local`), or a generation at once
on a Ray cluster (`parallel.py`); either way they are logged and told to the sampler in
the order asked (`log.py`), so a killed search resumes where it stopped.

`search` reads only the validation tasks. `finish` then writes the best trial as a
normal recipe (`best.toml`, built, so it has its lock `best.lock`) and scores it,
and the recipe as written, on the test tasks, which nothing before read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mergepkg.builder.build import build
from mergepkg.engine.progress import Reporter
from mergepkg.errors import RecipeError
from mergepkg.eval.harness import HarnessTask, load_harness_task
from mergepkg.eval.run import evaluate_model, task_labels
from mergepkg.eval.tasks import Task, load_task
from mergepkg.lockfile import lock_path
from mergepkg.recipe.parse import load_recipe, parse_recipe
from mergepkg.store.evals import EvalCache, Result
from mergepkg.store.session import Session
from mergepkg.tune.log import Trial, TrialLog, held
from mergepkg.tune.report import svg
from mergepkg.tune.sampler import Sampler
from mergepkg.tune.spec import TaskEntry, TuneSpec
from mergepkg.tune.substitute import Base, check_space, current, read_base, relocated_text, trial_recipe, values

AnyTask = Task | HarnessTask
BENCHMARK_WARNING = (
    "the objective includes {name!r}, scored on a public benchmark's test split: a search that "
    "maximises it overfits that test set, and its score no longer estimates held-out performance "
    "(as mergekit-evolve warns); search on a validation split and report the test split once"
)


@dataclass
class Searched:
    spec: TuneSpec
    base: Base
    trials: list[Trial]
    resumed: int  # trials read back from the log
    stopped: str  # "trials" (budget spent) or "seconds"
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: (t.objective, -t.number))


@dataclass(frozen=True)
class Asked:
    """A trial the sampler asked for: its number, point of the unit cube and recipe values."""

    number: int
    unit: list[float]
    values: dict


class Runner(Protocol):
    """Runs asked trials; yields them finished, in the order asked."""

    def batch(self, sampler: Sampler) -> int:
        """How many trials to ask at once."""

    def run(self, base: Base, asked: list[Asked]) -> Iterator[Trial]:
        """Build and score `asked`, yielding each finished trial in the order asked."""


class Local:
    """Trials one after another on this machine, one asked at a time."""

    def __init__(self, spec: TuneSpec, session: Session, validation: list[AnyTask], reporter: Reporter | None):
        self.spec, self.session, self.validation, self.reporter = spec, session, validation, reporter

    def batch(self, sampler: Sampler) -> int:
        return 1

    def run(self, base: Base, asked: list[Asked]) -> Iterator[Trial]:
        for a in asked:
            yield run_trial(self.spec, base, self.session, a.number, a.unit, a.values, self.validation, self.reporter)


@dataclass(frozen=True)
class Finished:
    best: Trial
    recipe: Path  # best.toml
    lock: Path  # best.lock
    test: dict[str, float]  # the best trial's held-out scores, and their combination as "objective"
    written_validation: dict[str, float]  # the recipe as written, on validation
    written_test: dict[str, float]  # and on test
    plot: Path  # search.svg


def tasks(
    entries: tuple[TaskEntry, ...],
    session: Session,
    spec: TuneSpec | None = None,
    part: str = "validation",
) -> list[AnyTask]:
    """The objective's tasks, loaded (task files' lines, lm-eval configs, data hashed); an
    error is placed at its entry in `spec`'s tune file (`tune.objective.validation[1]`)."""
    out: list[AnyTask] = []
    for i, e in enumerate(entries):
        try:
            out.append(_task(e, session))
        except RecipeError as error:
            if spec is None:
                raise
            raise spec.locate(error, f"tune.objective.{part}[{i}]") from None
    return out


def _task(e: TaskEntry, session: Session) -> AnyTask:
    if e.file is not None:
        return load_task(e.file, session.hashes)
    assert e.harness is not None
    return load_harness_task(
        e.harness,
        session.hashes,
        include=e.include,
        num_fewshot=e.num_fewshot,
        limit=e.limit,
        seed=e.seed,
        metric=e.metric,
    )


def combined(kind: str, results: list[Result]) -> float:
    """Higher is better: accuracies and harness metrics as they are, perplexity as -ln(ppl).
    An infinite perplexity scores -inf, and a score that is no number (NaN) makes the whole
    -inf, the worst: the sampler moves away from it and every comparison stays ordered."""
    scores = [-math.log(r.value) if r.metric == "perplexity" else r.value for r in results]
    if any(math.isnan(s) for s in scores):  # min() would pass over a NaN
        return -math.inf
    return min(scores) if kind == "min" else sum(scores) / len(scores)


def search(
    spec: TuneSpec,
    session: Session,
    *,
    reporter: Reporter | None = None,
    on_trial: Callable[[Trial, bool], None] | None = None,
    restart: bool = False,
    runner: Runner | None = None,
) -> Searched:
    """Run (or resume) the search within its budget; `on_trial(trial, resumed)` as each ends.
    `reporter` hears the trials' builds (pass None to keep their pitfall warnings quiet).
    `runner` runs the trials the sampler asks (default: `Local`, one after another here;
    `tune/parallel.py`: a generation at once on a Ray cluster); either way they are told
    to the sampler and logged in the order asked, so a seed gives the same trials."""
    base = read_base(spec)
    check_space(spec, base)
    validation = tasks(spec.validation, session, spec, "validation")
    # the test split checked now (task files' lines, lm-eval names and metrics), not scored:
    # an error in it would otherwise stop the search only once it is done
    tasks(spec.test, session, spec, "test")
    warnings = [
        BENCHMARK_WARNING.format(name=t.name) for t in validation if isinstance(t, HarnessTask) and t.test_split
    ]
    out = Searched(spec, base, [], 0, "trials", warnings)
    with held(spec.folder, spec.path):
        _trials(out, runner or Local(spec, session, validation, reporter), on_trial, restart)
    return out


def _trials(out: Searched, run: Runner, on_trial: Callable[[Trial, bool], None] | None, restart: bool) -> None:
    """The search's trials into `out`: the log's read back and told to the sampler, then
    new ones run (`run`) and logged, until the budget is spent."""
    spec, base = out.spec, out.base
    log = TrialLog(spec.folder / "trials.jsonl", spec.fingerprint(base.text))
    done = [] if restart else log.read()
    log.start(done)
    start = [
        0.5 if v is None else min(max((v - d.low) / (d.high - d.low), 0.0), 1.0)
        for d, v in zip(spec.space, current(base, spec.space))
    ]
    sampler = Sampler(spec.sampler, len(spec.space), spec.seed, start)
    out.resumed = min(len(done), spec.trials)
    began, spent = time.monotonic(), sum(t.build_s + t.eval_s for t in done)
    number = 0
    while number < spec.trials:
        if number >= len(done) and spec.seconds is not None and spent + time.monotonic() - began >= spec.seconds:
            out.stopped = "seconds"
            break
        every = 1 if number < len(done) else run.batch(sampler)  # a generation ends where it would have
        size = min(every - number % every, spec.trials - number)
        units = [sampler.ask() for _ in range(size)]
        asked = [Asked(number + i, u, values(spec.space, u, spec.digits)) for i, u in enumerate(units)]
        if number < len(done):
            trial = done[number]
            if trial.values != asked[0].values:
                raise RecipeError(
                    f"trial {number} of the log is not what the sampler asks now",
                    file=log.path,
                    hint="the sampler's library changed; pass --restart",
                )
            finished = iter([trial])
        else:
            finished = run.run(base, asked)
        for trial in finished:  # in the order asked
            if trial.number >= len(done):
                log.append(trial)
            sampler.tell(trial.objective)
            out.trials.append(trial)
            if on_trial:
                on_trial(trial, trial.number < len(done))
        number += size


def run_trial(
    spec: TuneSpec,
    base: Base,
    session: Session,
    number: int,
    unit: list[float],
    chosen: dict,
    validation: list[AnyTask],
    reporter: Reporter | None,
) -> Trial:
    """Build the trial's step (what is stored is reused) and score it on `validation`."""
    t0 = time.monotonic()
    with session.store.in_use():  # `cache gc` waits until the trial's model is evaluated, not only built
        report = build(trial_recipe(base, chosen), session, targets=(spec.evaluate,), reporter=reporter, remote="never")
        artifact = report.artifacts[spec.evaluate]
        t1 = time.monotonic()
        scores, objective = validation_scores(spec.combine, artifact.folder, artifact.key, validation, session)
        t2 = time.monotonic()
    return Trial(
        number=number,
        values=chosen,
        unit=unit,
        key=artifact.key,
        scores=scores,
        objective=objective,
        build_s=round(t1 - t0, 3),
        eval_s=round(t2 - t1, 3),
        stored=spec.evaluate not in report.built,
        finished=time.time(),
        digest=artifact.digest,
    )


def _results(folder: Path, key: str, todo: list[AnyTask], session: Session) -> list[Result]:
    """Each task's result, named as no other task of `todo` is (`a/t`, `b/t`) and never
    "objective", the combination's name beside them."""
    names = task_labels(todo, reserved=frozenset({"objective"}))
    cache = EvalCache(session.settings.home)
    return evaluate_model(folder, key, todo, cache, device=session.settings.device, names=names)


def validation_scores(
    combine: str, folder: Path, key: str, validation: list[AnyTask], session: Session
) -> tuple[dict[str, float], float]:
    """Each validation task's score of the model in `folder` (cached by key and task), and
    their combination: the trial's objective."""
    results = _results(folder, key, validation, session)
    return {r.task: r.value for r in results}, combined(combine, results)


def _scores(spec: TuneSpec, folder: Path, key: str, todo: list[AnyTask], session: Session) -> dict[str, float]:
    results = _results(folder, key, todo, session)
    return {r.task: r.value for r in results} | {"objective": combined(spec.combine, results)}


def finish(searched: Searched, session: Session, *, reporter: Reporter | None = None) -> Finished:
    """Write, build and lock `best.toml`; score it and the recipe as written on the test
    split. Its tasks are loaded first: a task file changed since the search is refused
    before best.toml is written, not between it and its lock. One run at a time (`held`)."""
    spec = searched.spec
    validation = tasks(spec.validation, session, spec, "validation")
    test = tasks(spec.test, session, spec, "test")  # scored here, after the search, and only here
    with held(spec.folder, spec.path):
        return _finish(searched, session, validation, test, reporter)


def _finish(
    searched: Searched, session: Session, validation: list[AnyTask], test: list[AnyTask], reporter: Reporter | None
) -> Finished:
    spec, best = searched.spec, searched.best
    folder = spec.folder
    header = (
        f"Written by `mergepkg tune {spec.path.name}`: {spec.recipe.name} with trial {best.number}'s values\n"
        f"(validation objective {best.objective:.4f}); the trial log is trials.jsonl."
    )
    best_path = folder / "best.toml"
    best_path.write_text(relocated_text(searched.base, best.values, folder, header), encoding="utf-8")
    # `cache gc` waits until both models are evaluated, not only built: the recipe as
    # written has no lock of its own to keep its step
    with session.store.in_use():
        built = build(load_recipe(best_path), session, reporter=reporter, remote="never")
        artifact = built.artifacts[spec.evaluate]
        written = build(
            parse_recipe(searched.base.text, spec.recipe), session, targets=(spec.evaluate,), reporter=reporter
        )
        original = written.artifacts[spec.evaluate]
        scores = _scores(spec, artifact.folder, artifact.key, test, session)
        written_validation = _scores(spec, original.folder, original.key, validation, session)
        written_test = _scores(spec, original.folder, original.key, test, session)
    lines = [f"best: trial {best.number}, validation {best.objective:.4f}, test {scores['objective']:.4f}"]
    plot = folder / "search.svg"
    title = f"mergepkg tune {spec.path.name}: validation {spec.combine} against trial"
    plot.write_text(svg(searched.trials, title, lines + [f"{p} = {v}" for p, v in best.values.items()]))
    return Finished(
        best=best,
        recipe=best_path,
        lock=lock_path(built.resolution.recipe),
        test=scores,
        written_validation=written_validation,
        written_test=written_test,
        plot=plot,
    )
