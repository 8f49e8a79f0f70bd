"""`mergepkg eval`: exact-match accuracy on prompt/answer tasks and perplexity on text.

Exact match, precisely: the prompt is tokenized as the tokenizer does by default;
greedy decoding runs for 2 * len(answer tokens) + 4 new tokens; the new tokens are
decoded without special tokens, cut at the first newline and stripped, and must equal
the stripped answer. Results are cached (`store/evals.py`) by model key and task sha256.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.errors import SourceError
from mergepkg.eval.harness import HarnessTask, run_harness
from mergepkg.eval.tasks import Task, examples
from mergepkg.store.evals import EvalCache, Result

BATCH = 32


def run_task(model, tokenizer, task: Task, device: str) -> Result:
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
    rows = examples(task)
    tokenizer.padding_side = "left"  # batched greedy decoding: prompts end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    correct = 0
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        enc = tokenizer([p for p, _ in batch], return_tensors="pt", padding=True).to(device)
        budgets = [2 * len(tokenizer(a, add_special_tokens=False).input_ids) + 4 for _, a in batch]
        with torch.no_grad():
            gen = model.generate(
                **enc, do_sample=False, max_new_tokens=max(budgets), pad_token_id=tokenizer.pad_token_id
            )
        for (_, answer), budget, row in zip(batch, budgets, gen[:, enc.input_ids.shape[1] :]):
            # each example gets exactly its own budget, as if decoded alone
            text = tokenizer.decode(row[:budget], skip_special_tokens=True).split("\n", 1)[0].strip()
            correct += text == answer.strip()
    return Result(task.name, task.metric, correct / len(rows), len(rows))


def evaluate_model(
    folder: Path,
    model_key: str,
    tasks: list[Task] | list[Task | HarnessTask],
    cache: EvalCache,
    *,
    device: str = "cpu",
    on_result: Callable[[Task | HarnessTask, Result], None] | None = None,
) -> list[Result]:
    """Results of every task on the model in `folder`, from the cache where possible.
    lm-eval tasks (`HarnessTask`) run through the harness, cached by their evaluation key."""
    results: dict[str, Result] = {}
    todo: list[Task | HarnessTask] = []
    for task in tasks:
        hit = cache.get(model_key, task.sha256)
        if hit is not None:
            results[task.name] = hit
        else:
            todo.append(task)
    for task in [t for t in todo if isinstance(t, HarnessTask)]:
        result = run_harness(folder, task, device)
        cache.put(model_key, task.sha256, result)
        results[task.name] = result
        if on_result:
            on_result(task, result)
    own = [t for t in todo if isinstance(t, Task)]
    if own:
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
        for task in own:
            result = run_task(model, tokenizer, task, device)
            cache.put(model_key, task.sha256, result)
            results[task.name] = result
            if on_result:
                on_result(task, result)
    return [results[t.name] for t in tasks]
