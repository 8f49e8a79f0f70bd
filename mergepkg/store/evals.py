"""Evaluation results, cached by what was evaluated on what.

`$MERGEPKG_HOME/evals/<model key>/<task key>.json`: a model is identified by its
store key (a step) or its pin (a folder or hub source), a task by its content (and the
version of its protocol, `eval/tasks.Task.key`); so a result is computed once, and model
cards show every result a model has.

Each row is written with `format` 2: exact match's results have been keyed by its
protocol's version since then. An exact-match row without it was written by an earlier
mergepkg, under the task file's own sha256, and scored by exact match's first protocol
(decoding that let `generation_config.json` apply), which the current one superseded:
never reused by `eval`, since no current key names it, and left out of `rows` (model
cards, pushed ones too). Perplexity's protocol has not changed: its rows all count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mergepkg.files import write_atomic

# The rows' format: 2 from exact match's protocol 2 (eval/tasks.EXACT_MATCH_VERSION) on.
# Exact match's next protocol moves this too, so that `rows` leaves out the rows it supersedes.
FORMAT = 2


@dataclass(frozen=True)
class Result:
    task: str  # the task's name in tables (eval/run.task_labels): a file's stem, made longer where two share it
    metric: str  # "exact_match" or "perplexity"
    value: float
    n: int  # examples (exact match) or tokens (perplexity)


class EvalCache:
    def __init__(self, home: Path):
        self.root = home / "evals"

    def _path(self, model_key: str, task_key: str) -> Path:
        return self.root / model_key.removeprefix("sha256:") / f"{task_key}.json"

    def get(self, model_key: str, task_key: str) -> Result | None:
        try:
            return _result(json.loads(self._path(model_key, task_key).read_text()))
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return None

    def put(self, model_key: str, task_key: str, result: Result) -> None:
        write_atomic(self._path(model_key, task_key), json.dumps({**asdict(result), "format": FORMAT}))

    def drop(self, model_key: str, task_key: str) -> None:
        """Forget a result (one an evaluation under a newer protocol superseded)."""
        self._path(model_key, task_key).unlink(missing_ok=True)

    def rows(self, model_key: str) -> list[dict]:
        """Every current cached result of a model, for its model card: not one a later
        protocol superseded (`current`), nor one that is not a result (a torn or foreign file)."""
        folder = self.root / model_key.removeprefix("sha256:")
        if not folder.is_dir():
            return []
        rows = []
        for path in sorted(folder.glob("*.json")):
            try:
                row = json.loads(path.read_text())
                result = _result(row)
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            if current(row):
                rows.append(asdict(result))
        return sorted(rows, key=lambda r: r["task"])


def _result(row: dict) -> Result:
    """A stored row as a Result (its `format` is the file's, not the result's)."""
    return Result(**{k: v for k, v in row.items() if k != "format"})


def current(row: dict) -> bool:
    """Whether a cached row's score is one the current protocols give: an exact-match row
    written before `FORMAT` 2 was scored by exact match's first protocol."""
    written = row.get("format", 1)
    return row.get("metric") != "exact_match" or (isinstance(written, int) and written >= FORMAT)
