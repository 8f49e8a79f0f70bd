"""Greedy answers to the demo's prompts, from transformers and from llama.cpp
(llama-cpp-python)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TASKS = Path(__file__).parents[1] / "recipes" / "demo" / "tasks"
NEW_TOKENS = 10  # the longest answer is 8 characters, then "\n"
NEWLINE, EOS = 68, 2  # the demo vocabulary's "\n" and "</s>": an answer ends at either


def demo_prompts() -> list[tuple[str, str]]:
    """The 400 held-out (prompt, answer) pairs of the demo's two skills."""
    rows = [
        json.loads(line) for task in ("upper", "inc") for line in (TASKS / f"{task}.jsonl").read_text().splitlines()
    ]
    return [(r["prompt"], r["answer"]) for r in rows]


def transformers_model(folder: Path, weights: torch.dtype = torch.float32):
    """The model computing in float32, its weights rounded to `weights` first (the model a
    bf16 GGUF file holds)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.to(weights).to(torch.float32)


def transformers_answers(
    folder: Path, prompts: list[str], weights: torch.dtype = torch.float32
) -> tuple[list[list[int]], list[list[int]]]:
    """Each prompt's token ids and its greedy answer (up to the newline), by transformers
    in float32 with weights rounded to `weights`: one batch, padded on the left as
    `mergepkg eval` does."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = transformers_model(folder, weights)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    rows = out[:, batch.input_ids.shape[1] :].tolist()
    return [tokenizer(p).input_ids for p in prompts], [_answer(r) for r in rows]


def _answer(tokens: list[int]) -> list[int]:
    """The tokens up to and with the first newline or end of text."""
    for i, t in enumerate(tokens):
        if t in (NEWLINE, EOS):
            return tokens[: i + 1]
    return tokens


def llama_answers(gguf: Path, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Each prompt's token ids as llama.cpp tokenizes it, and its greedy answer (argmax of
    the logits, up to the newline)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    ids, answers = [], []
    for prompt in prompts:
        row = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(row)
        answer: list[int] = []
        while len(answer) < NEW_TOKENS:
            answer.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if answer[-1] in (NEWLINE, EOS):
                break
            llm.eval([answer[-1]])
        ids.append(row)
        answers.append(answer)
    llm.close()
    return ids, answers


def score(answers: list[list[int]], expected: list[str], decode) -> float:
    """Exact match, as `mergepkg eval` counts it: the text up to the first newline."""
    hits = sum(decode(a).split("\n", 1)[0].strip() == e for a, e in zip(answers, expected))
    return hits / len(expected)


def logit_deviation(folder: Path, gguf: Path, texts: list[str]) -> float:
    """The largest difference between llama.cpp's logits and transformers' (float32) at
    any position of any of `texts`."""
    from llama_cpp import Llama

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = transformers_model(folder)
    llm = Llama(model_path=str(gguf), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    worst = 0.0
    for text in texts:
        ids = tokenizer(text).input_ids
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, float(np.abs(np.array(llm.scores[: len(ids)]) - reference).max()))
    llm.close()
    return worst
