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
ROW_HINT = 'one object a line, both strings: {"prompt": "2+2=", "answer": "4"}'
TEXT_HINT = "a perplexity task is a text file of at least two tokens: the loss is of each token after the first"


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
    """The task file at `path`, checked now, before any model is built or loaded: every
    line of a prompt/answer file, a text file's encoding and that it has text to score."""
    if not path.is_file():
        raise RecipeError("task file not found", file=path, hint="pass a .jsonl (prompt/answer) or a text file")
    task = Task(path.stem, path, hashes.sha256(path)[1])
    if task.metric == "exact_match":
        examples(task)
    else:
        text(task)
    return task


def _read(task: Task) -> str:
    """The file as UTF-8 text, refused at load when it is not (not a traceback when scored)."""
    try:
        return task.path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text: {e.reason} at byte {e.start}", file=task.path) from None


def text(task: Task) -> str:
    """A perplexity task's text. One with nothing in it is refused: no token is scored,
    and a perplexity over no token would read as a perfect 1.0."""
    out = _read(task)
    if not out.strip():
        raise RecipeError("no text to score", file=task.path, hint=TEXT_HINT)
    return out


def examples(task: Task) -> list[tuple[str, str]]:
    """A prompt/answer task's rows; a line that is not one is refused at its number."""
    out = []
    for i, line in enumerate(_read(task).splitlines(), 1):
        if line.strip():
            out.append(_example(line, task.path, i))
    if not out:
        raise RecipeError("no examples", file=task.path)
    return out


def _example(line: str, path: Path, number: int) -> tuple[str, str]:
    """One line's prompt and answer, each a string as written: `null` is no answer and a
    number no prompt (str() made them the texts "None" and "3")."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        row = None
    if not isinstance(row, dict) or not {"prompt", "answer"} <= row.keys():
        raise RecipeError('expected a JSON object with "prompt" and "answer"', file=path, line=number, hint=ROW_HINT)
    for k in ("prompt", "answer"):
        if not isinstance(row[k], str):
            raise RecipeError(
                f'"{k}" is {json.dumps(row[k])[:40]}, not a string', file=path, line=number, hint=ROW_HINT
            )
    return row["prompt"], row["answer"]
