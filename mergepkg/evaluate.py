"""`mergepkg eval`: exact-match accuracy on prompt/answer tasks and perplexity on text.

Tasks are files: `*.jsonl` with `{"prompt": ..., "answer": ...}` per line (greedy
decoding, exact match), anything else is text (perplexity). Results are cached in
`$MERGEPKG_HOME/evals/<model key>/<task sha256>.json`: a model is identified by its
store key (a step) or its pin (a folder or hub source), a task by its content.

Exact match, precisely: the prompt is tokenized as the tokenizer does by default;
greedy decoding runs for 2 * len(answer tokens) + 4 new tokens; the new tokens are
decoded without special tokens, cut at the first newline and stripped, and must equal
the stripped answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from mergepkg.errors import RecipeError
from mergepkg.files import write_atomic
from mergepkg.hashcache import HashCache
from mergepkg.settings import Settings

BATCH = 32


@dataclass(frozen=True)
class Task:
    name: str  # file stem
    path: Path
    sha256: str

    @property
    def metric(self) -> str:
        return "exact_match" if self.path.suffix == ".jsonl" else "perplexity"


@dataclass(frozen=True)
class Result:
    task: str
    metric: str
    value: float
    n: int  # examples (exact match) or tokens (perplexity)


def load_task(path: Path, hashes: HashCache) -> Task:
    if not path.is_file():
        raise RecipeError("task file not found", file=path, hint="pass a .jsonl (prompt/answer) or a text file")
    return Task(path.stem, path, hashes.sha256(path)[1])


def _examples(task: Task) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(task.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append((str(row["prompt"]), str(row["answer"])))
        except (ValueError, KeyError, TypeError):
            raise RecipeError('expected a JSON object with "prompt" and "answer"', file=task.path, line=i) from None
    if not out:
        raise RecipeError("no examples", file=task.path)
    return out


class EvalCache:
    def __init__(self, settings: Settings):
        self.root = settings.home / "evals"

    def _path(self, model_key: str, task: Task) -> Path:
        return self.root / model_key.removeprefix("sha256:") / f"{task.sha256}.json"

    def get(self, model_key: str, task: Task) -> Result | None:
        try:
            return Result(**json.loads(self._path(model_key, task).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def put(self, model_key: str, task: Task, result: Result) -> None:
        write_atomic(self._path(model_key, task), json.dumps(asdict(result)))

    def rows(self, model_key: str) -> list[dict]:
        """Every cached result of a model, for its model card."""
        folder = self.root / model_key.removeprefix("sha256:")
        if not folder.is_dir():
            return []
        return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["task"])


def run_task(model, tokenizer, task: Task, device: str) -> Result:
    from mergepkg._lazy import torch

    if task.metric == "perplexity":
        ids = tokenizer(task.path.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
        window = getattr(model.config, "max_position_embeddings", 2048)
        nll, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(ids) - 1, window):
                chunk = ids[start : start + window + 1].to(device)
                if len(chunk) < 2:
                    break
                logits = model(chunk[None, :-1]).logits[0].float()
                nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
                count += len(chunk) - 1
        return Result(task.name, task.metric, math.exp(nll / max(count, 1)), count)
    examples = _examples(task)
    tokenizer.padding_side = "left"  # batched greedy decoding: prompts end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    correct = 0
    for start in range(0, len(examples), BATCH):
        batch = examples[start : start + BATCH]
        enc = tokenizer([p for p, _ in batch], return_tensors="pt", padding=True).to(device)
        budgets = [2 * len(tokenizer(a, add_special_tokens=False).input_ids) + 4 for _, a in batch]
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max(budgets),
                                 pad_token_id=tokenizer.pad_token_id)
        for (_, answer), budget, row in zip(batch, budgets, gen[:, enc.input_ids.shape[1]:]):
            # each example gets exactly its own budget, as if decoded alone
            text = tokenizer.decode(row[:budget], skip_special_tokens=True).split("\n", 1)[0].strip()
            correct += text == answer.strip()
    return Result(task.name, task.metric, correct / len(examples), len(examples))


def evaluate(folder: Path, model_key: str, tasks: list[Task], cache: EvalCache, *, device: str = "cpu",
             on_result=None) -> list[Result]:
    """Results of every task on the model in `folder`, from the cache where possible."""
    results, todo = {}, []
    for task in tasks:
        hit = cache.get(model_key, task)
        if hit is not None:
            results[task.name] = hit
        else:
            todo.append(task)
    if todo:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress is on stderr already

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(device).eval()
        for task in todo:
            result = run_task(model, tokenizer, task, device)
            cache.put(model_key, task, result)
            results[task.name] = result
            if on_result:
                on_result(task, result)
    return [results[t.name] for t in tasks]
