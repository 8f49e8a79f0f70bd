"""Evaluation results, cached by what was evaluated on what.

`$MERGEPKG_HOME/evals/<model key>/<task key>.json`: a model is identified by its
store key (a step) or its pin (a folder or hub source), a task by its content (and the
version of its protocol, `eval/tasks.Task.key`); so a result is computed once, and model
cards show every result a model has.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mergepkg.files import write_atomic


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
            return Result(**json.loads(self._path(model_key, task_key).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def put(self, model_key: str, task_key: str, result: Result) -> None:
        write_atomic(self._path(model_key, task_key), json.dumps(asdict(result)))

    def drop(self, model_key: str, task_key: str) -> None:
        """Forget a result (one an evaluation under a newer protocol superseded)."""
        self._path(model_key, task_key).unlink(missing_ok=True)

    def rows(self, model_key: str) -> list[dict]:
        """Every cached result of a model, for its model card."""
        folder = self.root / model_key.removeprefix("sha256:")
        if not folder.is_dir():
            return []
        return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["task"])
