"""Train the demo models of recipes/demo.toml from scratch: a base and two fine-tunes.

    python scripts/train_demo.py                # writes recipes/demo/{models,tasks}
    python scripts/train_demo.py --out /tmp/x   # somewhere else (the test compares the two)
    python scripts/train_demo.py --tokenizer-only  # rewrite the tokenizer files, not the weights

The skills, each a character-level string task with held-out prompts:

    upper   "upper hello=" -> "HELLO"   (uppercase a word of 3-8 letters)
    inc     "inc 4819="    -> "5920"    (add one to every digit, 9 wraps to 0)

The base is pre-trained mostly on copying ("copy hello=" -> "hello", letters and digits),
with a little of each skill mixed in, so it knows the format and part of each mapping.
Each fine-tune continues from the base on one skill only, briefly and with a small
learning rate, so it stays close to the base: the regime where merging works.

Everything is seeded and runs on one CPU thread, so the output files are the same
bytes on every run with the same torch build (a few minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch

LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB = SPECIALS + list(LOWER) + list(LOWER.upper()) + list(DIGITS) + [" ", "=", "\n"]
BOS, EOS, PAD = 1, 2, 3

PRETRAIN_MIX = {"copy": 8, "upper": 2, "inc": 1}  # relative weights of the base's data
PRETRAIN_STEPS, PRETRAIN_LR = 500, 1e-3
FINETUNE_STEPS, FINETUNE_LR = 150, 5e-5
BATCH, WARMUP = 64, 20
HELD_OUT = 200  # eval prompts per skill; never seen in training (checked)


# --- data ----------------------------------------------------------------------------


def _string(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8)))


def example(task: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of a task."""
    if task == "copy":
        s = _string(rng, rng.choice([LOWER, DIGITS]))
        return f"copy {s}=", s
    if task == "upper":
        s = _string(rng, LOWER)
        return f"upper {s}=", s.upper()
    if task == "inc":
        s = _string(rng, DIGITS)
        return f"inc {s}=", "".join(DIGITS[(int(c) + 1) % 10] for c in s)
    raise ValueError(task)


def held_out(task: str) -> list[tuple[str, str]]:
    rng, seen, out = random.Random(f"eval-{task}"), set(), []
    while len(out) < HELD_OUT:
        ex = example(task, rng)
        if ex[0] not in seen:
            seen.add(ex[0])
            out.append(ex)
    return out


def batch(rng: random.Random, mix: dict[str, int], exclude: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) of `<s>prompt answer\\n` and a mask (B, T) of the answer tokens."""
    tasks, weights = list(mix), list(mix.values())
    rows = []
    while len(rows) < BATCH:
        prompt, answer = example(rng.choices(tasks, weights)[0], rng)
        if prompt in exclude:  # held-out prompts stay held out
            continue
        rows.append(([BOS, *encode(prompt)], encode(answer + "\n")))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((BATCH, width), PAD)
    mask = torch.zeros((BATCH, width))
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, len(p) : len(p) + len(a)] = 1  # loss on the answer only: the prompt is given
    return ids, mask


def encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


# --- model and training --------------------------------------------------------------


def new_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def train(model, mix: dict[str, int], steps: int, lr: float, seed: int, exclude: set[str], label: str) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    for step in range(steps):
        for group in opt.param_groups:
            # linear warm-up, then cosine decay to zero
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))
        ids, mask = batch(rng, mix, exclude)
        logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"{label}: step {step + 1}/{steps} loss {loss.item():.4f}", file=sys.stderr, flush=True)
    model.eval()


# --- files ---------------------------------------------------------------------------


def save_tokenizer(folder: Path) -> None:
    """`tokenizer.json` for transformers and the same vocabulary as a SentencePiece
    `tokenizer.model`, the form llama.cpp's converter takes as it is (docs/export.md):
    one token per character, the same ids in both."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok.decoder = decoders.Fuse()  # characters join without spaces
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_prefix_space"] = False  # llama.cpp: no space before the text (SentencePiece's default adds one)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def sentencepiece_model() -> bytes:
    """VOCAB as a SentencePiece model: character pieces, no normalization, no space
    added in front; a space is written as U+2581, as SentencePiece does."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = spm.ModelProto()
    model.trainer_spec.model_type = spm.TrainerSpec.CHAR
    model.trainer_spec.vocab_size = len(VOCAB)
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, BOS, EOS
    model.trainer_spec.pad_id = PAD
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    kinds = spm.ModelProto.SentencePiece
    for token in VOCAB:
        piece = model.pieces.add()
        piece.piece = token.replace(" ", "\u2581")
        piece.score = 0.0
        piece.type = kinds.UNKNOWN if token == "<unk>" else kinds.CONTROL if token in SPECIALS else kinds.NORMAL
    return model.SerializeToString()


def save(model, folder: Path) -> None:
    model.save_pretrained(folder)
    save_tokenizer(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)  # carries no information here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "recipes" / "demo")
    parser.add_argument("--tokenizer-only", action="store_true", help="rewrite the models' tokenizer files only")
    args = parser.parse_args()
    out = args.out
    if args.tokenizer_only:
        for name in ("base", "upper", "inc"):
            save_tokenizer(out / "models" / name)
        return
    torch.set_num_threads(1)  # one thread: the same float sums, so the same bytes, every run
    torch.use_deterministic_algorithms(True)

    evals = {task: held_out(task) for task in ("upper", "inc")}
    exclude = {prompt for rows in evals.values() for prompt, _ in rows}
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for task, rows in evals.items():
        with open(out / "tasks" / f"{task}.jsonl", "w") as f:
            f.writelines(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows)

    base = new_model()
    train(base, PRETRAIN_MIX, PRETRAIN_STEPS, PRETRAIN_LR, seed=1, exclude=exclude, label="base")
    save(base, out / "models" / "base")
    for seed, task in enumerate(("upper", "inc"), start=2):
        tuned = new_model()
        tuned.load_state_dict(base.state_dict())
        train(tuned, {task: 1}, FINETUNE_STEPS, FINETUNE_LR, seed=seed, exclude=exclude, label=task)
        save(tuned, out / "models" / task)
    print(f"wrote {out}/models/{{base,upper,inc}} and {out}/tasks/{{upper,inc}}.jsonl", file=sys.stderr)


if __name__ == "__main__":
    main()
