"""Tasks: files of prompts and answers (exact match), or of text (perplexity).

`*.jsonl` holds `{"prompt": ..., "answer": ...}` per line; any other file is text.
A task is identified by its content (sha256), so an edited task is a new task; its
results are cached under `key`, which adds the version of the protocol that scores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergepkg.canonical import sha256_hex
from mergepkg.errors import RecipeError
from mergepkg.store.hashcache import HashCache

# Exact match's protocol, in its results' cache key: 2 decodes purely greedily, whatever the
# model's generation_config.json says (1 let its repetition_penalty and the like apply).
EXACT_MATCH_VERSION = 2


@dataclass(frozen=True)
class Task:
    name: str  # file stem
    path: Path
    sha256: str

    @property
    def metric(self) -> str:
        return "exact_match" if self.path.suffix == ".jsonl" else "perplexity"

    @property
    def key(self) -> str:
        """What its results are cached under (`store/evals.py`): the content, and for exact
        match the protocol's version, so a result of an older protocol is not reused.
        Perplexity's protocol has not changed: its key is the content's sha256 as ever."""
        if self.metric == "perplexity":
            return self.sha256
        return sha256_hex(f"exact_match/{EXACT_MATCH_VERSION}\0{self.sha256}".encode())


def load_task(path: Path, hashes: HashCache) -> Task:
    if not path.is_file():
        raise RecipeError("task file not found", file=path, hint="pass a .jsonl (prompt/answer) or a text file")
    task = Task(path.stem, path, hashes.sha256(path)[1])
    if task.metric == "exact_match":
        examples(task)  # every line checked now, before any model is built or loaded
    return task


def examples(task: Task) -> list[tuple[str, str]]:
    out = []
    try:
        text = task.path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text: {e.reason} at byte {e.start}", file=task.path) from None
    for i, line in enumerate(text.splitlines(), 1):
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
