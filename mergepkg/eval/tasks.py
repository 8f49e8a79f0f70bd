"""Tasks: files of prompts and answers (exact match), or of text (perplexity).

`*.jsonl` holds `{"prompt": ..., "answer": ...}` per line; any other file is text.
A task is identified by its content (sha256), so an edited task is a new task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import RecipeError
from mergepkg.store.hashcache import HashCache


@dataclass(frozen=True)
class Task:
    name: str  # file stem
    path: Path
    sha256: str

    @property
    def metric(self) -> str:
        return "exact_match" if self.path.suffix == ".jsonl" else "perplexity"


def load_task(path: Path, hashes: HashCache) -> Task:
    if not path.is_file():
        raise RecipeError("task file not found", file=path, hint="pass a .jsonl (prompt/answer) or a text file")
    return Task(path.stem, path, hashes.sha256(path)[1])


def examples(task: Task) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(task.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append((str(row["prompt"]), str(row["answer"])))
        except (ValueError, KeyError, TypeError, RecursionError):
            raise RecipeError('expected a JSON object with "prompt" and "answer"', file=task.path, line=i) from None
    if not out:
        raise RecipeError("no examples", file=task.path)
    return out
