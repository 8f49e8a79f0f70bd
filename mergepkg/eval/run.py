"""`mergepkg eval`: exact-match accuracy on prompt/answer tasks and perplexity on text.

Exact match, precisely: the prompt is tokenized as the tokenizer does by default;
pure greedy decoding (the model's `generation_config.json` ignored but for its end and
start tokens: no repetition penalty, no banned n-grams, no minimum length) runs for
2 * len(answer tokens) + 4 new tokens; the new tokens are decoded without special
tokens, cut at the first newline and stripped, and must equal the stripped answer.
Results are cached (`store/evals.py`) by model key and task key (`Task.key`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from mergepkg._lazy import torch
from mergepkg.errors import RecipeError, SourceError
from mergepkg.eval.harness import HarnessTask, run_harness
from mergepkg.eval.tasks import TEXT_HINT, Task, examples, text
from mergepkg.store.evals import EvalCache, Result

BATCH = 32
AnyTask = Task | HarnessTask


def perplexity(nll: float, count: int) -> float:
    """exp(mean loss) over `count` (> 0) scored tokens; a mean loss past float's range
    (~709) is an infinite perplexity, not an OverflowError: tune scores such a model -inf,
    the worst."""
    try:
        return math.exp(nll / count)
    except OverflowError:
        return math.inf


def _path_options(path: Path) -> list[str]:
    """A task file's names, shortest first: its stem, its file name, then with ever more of
    its folders (`a/t`, `a/t.jsonl`, `x/a/t`, ...)."""
    parts = path.resolve().parts
    out: list[str] = []
    for depth in range(1, len(parts) + 1):
        tail = parts[-depth:]
        out += [Path(*tail[:-1], path.stem).as_posix(), Path(*tail).as_posix()]
    return out


def _harness_options(task: HarnessTask) -> list[str]:
    """An lm-eval task's names: its own, then with the settings that set it apart."""
    settings = [
        f"{k}={v}"
        for k, v in (
            ("include", task.include.name if task.include else None),
            ("num_fewshot", task.num_fewshot),
            ("limit", task.limit),
            ("seed", task.seed or None),
            ("metric", task.metric),
        )
        if v is not None
    ]
    return [task.name, f"{task.name} ({', '.join(settings)})"] if settings else [task.name]


def task_labels(tasks: list[Task] | list[AnyTask], reserved: frozenset[str] = frozenset()) -> list[str]:
    """Each task's name in tables, JSON and tune's scores: its own (a file's stem, an
    lm-eval task's name), made longer only where two tasks would share one: files by as
    much of their paths as tells them apart (`a/t` and `b/t`; `t.jsonl` and `t.txt`),
    lm-eval tasks by their settings; one task given twice is numbered (`t #2`). So two
    tasks never share a result. A `reserved` name (tune's "objective") is never given."""
    options = [_harness_options(t) if isinstance(t, HarnessTask) else _path_options(t.path) for t in tasks]
    level = [0] * len(tasks)
    while True:
        labels = [o[lv] for o, lv in zip(options, level)]
        kinds: dict[str, set[tuple[str, ...]]] = {}  # the different tasks under each label
        for label, o in zip(labels, options):
            kinds.setdefault(label, set()).add(tuple(o))
        longer = [
            i
            for i, label in enumerate(labels)
            if (len(kinds[label]) > 1 or label in reserved) and level[i] < len(options[i]) - 1
        ]
        if not longer:
            break
        for i in longer:
            level[i] += 1
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        taken = label in reserved or seen[label] > 1
        out.append(f"{label} #{seen[label]}" if taken else label)
    return out


def greedy_config(model: Any, tokenizer: Any) -> Any:
    """Pure greedy decoding: the model's end and start tokens, the tokenizer's padding, and
    nothing else of its generation config (merges copy a source's, and an Instruct model's
    repetition_penalty would change what exact match measures)."""
    from transformers import GenerationConfig

    own = model.generation_config
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        bos_token_id=own.bos_token_id,
        eos_token_id=own.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@contextmanager
def _only(model: Any, config: Any) -> Iterator[None]:
    """`config` as the model's generation config while it generates: transformers fills what
    a passed config leaves unset from the model's own, so the model's must be this one."""
    kept, model.generation_config = model.generation_config, config
    try:
        yield
    finally:
        model.generation_config = kept


def _perplexity(model, tokenizer, task: Task, device: str) -> Result:
    """The perplexity of the task's text in windows of the model's context. A text of one
    token has no next token to score: refused, as no score is not a perfect one."""
    ids = tokenizer(text(task), return_tensors="pt").input_ids[0]
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
    if count == 0:
        message = "the text is under two tokens to this model's tokenizer: no next token to score"
        raise RecipeError(message, file=task.path, hint=TEXT_HINT)
    return Result(task.name, task.metric, perplexity(nll, count), count)


def run_task(model, tokenizer, task: Task, device: str) -> Result:
    if task.metric == "perplexity":
        return _perplexity(model, tokenizer, task, device)
    rows = examples(task)
    tokenizer.padding_side = "left"  # batched greedy decoding: prompts end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    greedy = greedy_config(model, tokenizer)
    correct = 0
    with _only(model, greedy):
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            enc = tokenizer([p for p, _ in batch], return_tensors="pt", padding=True).to(device)
            budgets = [2 * len(tokenizer(a, add_special_tokens=False).input_ids) + 4 for _, a in batch]
            greedy.max_new_tokens = max(budgets)
            with torch.no_grad():
                gen = model.generate(**enc, generation_config=greedy)
            for (_, answer), budget, row in zip(batch, budgets, gen[:, enc.input_ids.shape[1] :]):
                # each example gets exactly its own budget, as if decoded alone
                text = tokenizer.decode(row[:budget], skip_special_tokens=True).split("\n", 1)[0].strip()
                correct += text == answer.strip()
    return Result(task.name, task.metric, correct / len(rows), len(rows))


def evaluate_model(
    folder: Path,
    model_key: str,
    tasks: list[Task] | list[AnyTask],
    cache: EvalCache,
    *,
    device: str = "cpu",
    names: list[str] | None = None,
) -> list[Result]:
    """Results of every task on the model in `folder`, in the order of `tasks`, from the
    cache where possible; each under its name in `names` (default `task_labels(tasks)`),
    also when the cache holds it under another (a renamed copy of a task file). The cache
    keeps each task's own name. lm-eval tasks (`HarnessTask`) run through the harness,
    cached by their evaluation key, before the model is loaded for the others."""
    found = {t.key: hit for t in tasks if (hit := _cached(cache, model_key, t.key)) is not None}
    todo = {t.key: t for t in tasks if t.key not in found}  # the same task given twice runs once

    def done(task: AnyTask, result: Result) -> None:
        found[task.key] = result
        cache.put(model_key, task.key, result)
        if task.key != task.sha256:  # a result of the task's older protocol, if any: superseded
            cache.drop(model_key, task.sha256)

    for task in todo.values():
        if isinstance(task, HarnessTask):
            done(task, run_harness(folder, task, device))
    own = [t for t in todo.values() if isinstance(t, Task)]
    if own:
        model, tokenizer = _load(folder, device)
        for task in own:
            done(task, run_task(model, tokenizer, task, device))
    return [replace(found[t.key], task=n) for t, n in zip(tasks, names or task_labels(tasks))]


def _cached(cache: EvalCache, model_key: str, task_key: str) -> Result | None:
    """The cached result, if one to use: a perplexity over no token (1.0, `n` 0), which
    earlier versions cached for a text of one token, is not; evaluated again, it is refused."""
    hit = cache.get(model_key, task_key)
    return None if hit is not None and hit.metric == "perplexity" and hit.n == 0 else hit


def _load(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress is on stderr already

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:  # no tokenizer files, or ones transformers cannot read
        raise SourceError(
            f"cannot load the model's tokenizer: {' '.join(str(e).split())[:300]}",
            file=folder,
            hint="evaluating needs the tokenizer files beside the weights (tokenizer.json, tokenizer_config.json)",
        ) from None
    # transformers types `to` through functools.wraps, which loses `self`: a device is right
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(device).eval()  # type: ignore[arg-type]
    return model, tokenizer
