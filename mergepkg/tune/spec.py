"""The search description: a tune file (`[tune]`, `[tune.space]`, `[tune.objective]`).

```toml
[tune]
recipe = "demo.toml"          # relative to this file
step = "ties"                 # the step whose parameters are searched
trials = 48                   # budget: trials, and optionally seconds
sampler = "cmaes"             # or "random"
seed = 0

[tune.space]                  # recipe key paths of `step`: [low, high], or one pair per gradient point
"steps.ties.inputs[0].weight" = [0.0, 1.5]
"steps.ties.params.t" = [[0, 1], [0, 1], [0, 1]]

[tune.objective]
combine = "mean"              # or "min"
validation = ["demo/tasks/upper_val.jsonl", { harness = "demo_upper", include = "tasks/" }]
test = ["demo/tasks/upper.jsonl"]
```

Every error points at the tune file's line. The recipe itself is untouched, so its
key, lock and build stay what they are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from mergepkg._toml import tomllib
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import RecipeError, did_you_mean
from mergepkg.recipe.locate import locate

SAMPLERS = ("cmaes", "random")
COMBINE = ("mean", "min")
_TUNE_KEYS = {"recipe", "step", "evaluate", "trials", "seconds", "sampler", "seed", "digits", "space", "objective"}
_OBJECTIVE_KEYS = {"combine", "validation", "test"}
_HARNESS_KEYS = {"harness", "include", "num_fewshot", "limit", "seed", "metric"}
_HARNESS_HINTS = {
    "include": 'a folder of lm-eval task YAMLs, relative to the tune file: include = "tasks/"',
    "metric": 'lm-eval\'s result key: metric = "exact_match,none"',
}


@dataclass(frozen=True)
class Dimension:
    """One searched number: a parameter (`point` None) or one point of a gradient."""

    path: str  # the recipe key path, e.g. `steps.ties.inputs[0].weight`
    low: float
    high: float
    point: int | None = None
    points: int = 1  # how many points the gradient has (1: a number)

    @property
    def label(self) -> str:
        return self.path if self.point is None else f"{self.path}[{self.point}]"


@dataclass(frozen=True)
class TaskEntry:
    """An objective's task: a task file (exact match or perplexity) or an lm-eval task."""

    file: Path | None = None
    harness: str | None = None
    include: Path | None = None  # a folder of lm-eval task YAMLs
    num_fewshot: int | None = None
    limit: int | None = None
    seed: int = 0
    metric: str | None = None  # lm-eval's result key, e.g. "exact_match,none"


@dataclass(frozen=True)
class TuneSpec:
    path: Path  # the tune file
    text: str
    recipe: Path
    step: str
    evaluate: str  # the step scored (default: `step`)
    space: tuple[Dimension, ...]
    validation: tuple[TaskEntry, ...]
    test: tuple[TaskEntry, ...]
    combine: str
    trials: int
    seconds: float | None
    sampler: str
    seed: int
    digits: int  # values are rounded to this many decimals (equal values share a key)

    @property
    def folder(self) -> Path:
        """Where the trial log, best.toml, its lock and the plot go: beside the tune file."""
        return self.path.with_suffix("") if self.path.suffix == ".toml" else self.path.with_name(self.path.name + ".d")

    def fingerprint(self, recipe_text: str) -> str:
        """What defines the search (not its budget): a log of another search is not resumed."""
        what = {
            "recipe": sha256_hex(recipe_text.encode()),
            "step": self.step,
            "evaluate": self.evaluate,
            "space": [[d.path, d.low, d.high, d.point] for d in self.space],
            "validation": [self._portable(t) for t in self.validation],
            "combine": self.combine,
            "sampler": self.sampler,
            "seed": self.seed,
            "digits": self.digits,
        }
        return sha256_hex(canonical_json(what))

    def _portable(self, task: TaskEntry) -> list:
        """A task as the tune file names it: paths relative to it, so a moved tree resumes."""
        here = self.path.parent
        rel = [os.path.relpath(p, here) if p else None for p in (task.file, task.include)]
        return [*rel, task.harness, task.num_fewshot, task.limit, task.seed, task.metric]

    def error(self, message: str, key: str | None = None, hint: str | None = None) -> RecipeError:
        return RecipeError(message, file=self.path, line=_line(self.text, key), key=key, hint=hint)

    def locate(self, error: RecipeError, key: str) -> RecipeError:
        """`error` (an objective's task refused when loaded) placed at `key` of this file."""
        return error.at(file=self.path, line=_line(self.text, key), key=key)


def _line(text: str, key: str | None) -> int | None:
    if key is None:
        return None
    if key.startswith("tune.space."):
        quoted = f'"{key.removeprefix("tune.space.")}"'
        at = text.find(quoted)
        return text.count("\n", 0, at) + 1 if at >= 0 else locate(text, "tune.space")
    return locate(text, key)


def load_tune(path: str | Path) -> TuneSpec:
    """Read and check a tune file (the recipe paths are checked by `check_space`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not TOML, as for recipes
    except FileNotFoundError:
        raise RecipeError("tune file not found", file=path) from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text: {e.reason} at byte {e.start}", file=path) from None
    except OSError as e:  # a folder
        raise RecipeError(f"cannot read the tune file: {e.strerror}", file=path) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"not valid TOML: {e}", file=path) from None
    blank = TuneSpec(path, text, path, "", "", (), (), (), "mean", 0, None, "cmaes", 0, 3)
    table = doc.get("tune")
    if not isinstance(table, dict):
        raise blank.error("no [tune] table", hint="see docs/tune.md for the format")
    for k in table:
        if k not in _TUNE_KEYS:
            raise blank.error(f"unknown key {k!r}", f"tune.{k}", did_you_mean(k, _TUNE_KEYS))
    for k in ("recipe", "step"):
        if not isinstance(table.get(k), str):
            raise blank.error(f"`{k}` must be a string", f"tune.{k}" if k in table else "tune")
    objective = table.get("objective")
    if not isinstance(objective, dict):
        raise blank.error("no [tune.objective] table", "tune")
    for k in objective:
        if k not in _OBJECTIVE_KEYS:
            raise blank.error(f"unknown key {k!r}", f"tune.objective.{k}", did_you_mean(k, _OBJECTIVE_KEYS))
    spec = TuneSpec(
        path=path,
        text=text,
        recipe=(path.parent / table["recipe"]),
        step=table["step"],
        evaluate=table["evaluate"] if "evaluate" in table else table["step"],
        space=(),
        validation=(),
        test=(),
        combine=objective.get("combine", "mean"),
        trials=table.get("trials", 32),
        seconds=table.get("seconds"),
        sampler=table.get("sampler", "cmaes"),
        seed=table.get("seed", 0),
        digits=table.get("digits", 3),
    )
    _check_settings(spec)
    tasks = {
        part: tuple(_task(spec, v, f"tune.objective.{part}") for v in _list(spec, objective.get(part), part))
        for part in ("validation", "test")
    }
    space = _space(spec, table.get("space"))
    held_out = {_identity(t) for t in tasks["test"]}
    if any(_identity(t) in held_out for t in tasks["validation"]):
        raise spec.error("a validation task is also a test task", "tune.objective.validation")
    for part, entries in tasks.items():
        seen = [_entry(t) for t in entries]
        twice = next((i for i, t in enumerate(seen) if t in seen[:i]), None)
        if twice is not None:
            raise spec.error(
                f"the task is listed twice in `{part}`",
                f"tune.objective.{part}[{twice}]",
                "list each task once: each has one score",
            )
    return replace(spec, space=space, validation=tasks["validation"], test=tasks["test"])


def _identity(task: TaskEntry) -> tuple:
    return (task.file.resolve(),) if task.file else (task.harness, task.include and task.include.resolve())


def _entry(task: TaskEntry) -> tuple:
    """A task with all its settings: an lm-eval task at two limits is two tasks."""
    return (*_identity(task), task.num_fewshot, task.limit, task.seed, task.metric)


def _check_settings(spec: TuneSpec) -> None:
    if not isinstance(spec.evaluate, str):
        raise spec.error("`evaluate` must be a step name", "tune.evaluate")
    if spec.combine not in COMBINE:
        raise spec.error(f"`combine` must be one of {', '.join(COMBINE)}", "tune.objective.combine")
    if spec.sampler not in SAMPLERS:
        raise spec.error(f"`sampler` must be one of {', '.join(SAMPLERS)}", "tune.sampler")
    for k, v, least in (("trials", spec.trials, 1), ("seed", spec.seed, 0), ("digits", spec.digits, 0)):
        if not _whole(v, least):
            raise spec.error(f"`{k}` must be a whole number, {least} or more", f"tune.{k}")
    if spec.seconds is not None and (not _number(spec.seconds) or not spec.seconds > 0):
        raise spec.error("`seconds` must be a positive number", "tune.seconds")


def _whole(value: Any, least: int = 0) -> bool:
    """An integer of at least `least`, TOML's `true` not one (Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value: Any) -> bool:
    """An integer or a float, TOML's `true` not one (`seconds = true` read as 1 s)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list(spec: TuneSpec, value: Any, part: str) -> list:
    if not isinstance(value, list) or not value:
        raise spec.error(f"`{part}` must be a non-empty list of tasks", f"tune.objective.{part}" if value else "tune")
    return value


def _task(spec: TuneSpec, value: Any, key: str) -> TaskEntry:
    here = spec.path.parent
    if isinstance(value, str):
        if not (here / value).is_file():
            raise spec.error(f"task file not found: {value}", key, "paths are relative to the tune file")
        return TaskEntry(file=here / value)
    if not isinstance(value, dict) or not isinstance(value.get("harness"), str):
        raise spec.error("a task is a file path or { harness = NAME, ... }", key)
    for k in value:
        if k not in _HARNESS_KEYS:
            raise spec.error(f"unknown key {k!r} of an lm-eval task", key, did_you_mean(k, _HARNESS_KEYS))
    for k in ("num_fewshot", "limit", "seed"):
        if k in value and not _whole(value[k]):
            raise spec.error(f"`{k}` must be a whole number, 0 or more", key)
    for k in ("include", "metric"):
        if k in value and not isinstance(value[k], str):
            raise spec.error(f"`{k}` must be a string", key, _HARNESS_HINTS[k])
    include = here / value["include"] if "include" in value else None
    if include is not None and not include.is_dir():
        raise spec.error(f"no folder {value['include']}", key, "`include` is a folder of lm-eval task YAMLs")
    return TaskEntry(
        harness=value["harness"],
        include=include,
        num_fewshot=value.get("num_fewshot"),
        limit=value.get("limit"),
        seed=value.get("seed", 0),
        metric=value.get("metric"),
    )


def representable(low: float, high: float, digits: int) -> tuple[float, float]:
    """The lowest and highest values of [low, high] written with `digits` decimals (low > high
    where there is none): what a trial's values are rounded and held to. Decimal, so the
    bounds as written (0.3, not 0.30000000000000004) decide."""
    step = Decimal(1).scaleb(-digits)
    try:
        with localcontext(prec=60):
            lo = Decimal(repr(low)).quantize(step, rounding=ROUND_CEILING)
            hi = Decimal(repr(high)).quantize(step, rounding=ROUND_FLOOR)
    except InvalidOperation:  # more digits than a float holds: every bound is as written
        return low, high
    return float(lo), float(hi)


def _bounds(spec: TuneSpec, pair: Any, key: str) -> tuple[float, float]:
    ok = isinstance(pair, list) and len(pair) == 2 and all(_number(v) for v in pair)
    if ok and not all(math.isfinite(v) for v in pair):
        raise spec.error("a range's bounds must be finite numbers", key)
    if not ok or not pair[0] < pair[1]:
        raise spec.error("a range is [low, high] with low < high", key, "a gradient is a list of ranges")
    if not math.isfinite(float(pair[1]) - float(pair[0])):  # [-1e308, 1e308]: every value would be nan
        raise spec.error(
            f"the range [{pair[0]}, {pair[1]}] is wider than a float holds", key, "narrow it: its width must be finite"
        )
    lo, hi = representable(float(pair[0]), float(pair[1]), spec.digits)
    if lo > hi:
        raise spec.error(
            f"no number in [{pair[0]}, {pair[1]}] is written with at most `digits` = {spec.digits} decimals",
            key,
            "widen the range or raise `digits` (values are rounded to `digits` decimals)",
        )
    return float(pair[0]), float(pair[1])


def _space(spec: TuneSpec, table: Any) -> tuple[Dimension, ...]:
    if not isinstance(table, dict) or not table:
        raise spec.error("no [tune.space] table, or it is empty", "tune")
    dims: list[Dimension] = []
    prefix = f"steps.{spec.step}."
    for path, value in table.items():
        key = f"tune.space.{path}"
        if not path.startswith(prefix):
            raise spec.error(f"{path!r} is not a parameter of step {spec.step!r}", key, f"paths start with {prefix}")
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            pairs = [_bounds(spec, v, key) for v in value]
            dims += [Dimension(path, lo, hi, i, len(pairs)) for i, (lo, hi) in enumerate(pairs)]
        else:
            lo, hi = _bounds(spec, value, key)
            dims.append(Dimension(path, lo, hi))
    return tuple(dims)
