"""Tiny seeded Llama-shaped models for tests: a base and fine-tune-like variants
(base plus small seeded deltas), saved as real Hugging Face model folders."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = (
    ["<unk>", "<s>", "</s>"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [str(d) for d in range(10)]
    + [" ", "+", "=", "?", "."]
)


def tiny_config(layers: int = 4, hidden: int = 32, vocab: int | None = None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab or len(VOCAB),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)


def make_model(
    folder: Path,
    *,
    seed: int,
    base: Path | None = None,
    delta: float = 0.02,
    layers: int = 4,
    hidden: int = 32,
    dtype=torch.float32,
    shard_size: str | None = None,
    bin_format: bool = False,
) -> Path:
    """A random tiny Llama (seed) or, with `base`, base + delta * N(0, 1) noise (seed)."""
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    if base is not None:
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * delta)
    else:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(layers=layers, hidden=hidden))
    model = model.to(dtype)
    kwargs = {"safe_serialization": not bin_format}
    if shard_size:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(folder, **kwargs)
    save_tokenizer(folder)
    return folder
