"""Small model folders for the pitfall tests, made with numpy in milliseconds: Llama
tensor names and config keys, a few entries per tensor, seeded values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HEAD = '[package]\nname = "pitfalls"\nversion = "0.1.0"\n'


def tensor_shapes(hidden: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Embeddings, per layer an attention matrix, an MLP matrix and a norm; final norm, head."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (hidden, hidden)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (2 * hidden, hidden)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def stub_model(
    folder: Path,
    *,
    seed: int,
    like: Path | None = None,
    delta: float = 0.001,
    arch: str = "LlamaForCausalLM",
    hidden: int = 8,
    layers: int = 2,
    vocab: int = 16,
    poison: dict[str, float] | None = None,
) -> Path:
    """A model: random (std 0.02 matrices, norms of ones), or `like` plus `delta` times
    N(0, 1) noise (a fine-tune); `poison` sets tensor -> one value at its first entry."""
    rng = np.random.default_rng(seed)
    if like is not None:
        from safetensors.numpy import load_file

        tensors = {
            k: v + delta * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in load_file(like / "model.safetensors").items()
        }
    else:
        tensors = {
            name: (np.ones(shape) if len(shape) == 1 else 0.02 * rng.standard_normal(shape)).astype(np.float32)
            for name, shape in tensor_shapes(hidden, layers, vocab).items()
        }
    for name, value in (poison or {}).items():
        tensors[name] = tensors[name].copy()
        tensors[name].reshape(-1)[0] = value
    folder.mkdir(parents=True, exist_ok=True)
    model_type = "mistral" if arch.startswith("Mistral") else "llama"
    config = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": int(tensors["model.norm.weight"].shape[0]),
        "num_hidden_layers": layers,
        "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def recipe(folder: Path, models: dict[str, Path], body: str, *, allow: str = "") -> Path:
    """A recipe in `folder` over `models`, with `body` (steps), `allow` the line's list."""
    head = HEAD + (f"allow = [{allow}]\n" if allow else "") + "\n[sources]\n"
    head += "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items())
    path = folder / "recipe.toml"
    path.write_text(head + "\n" + body.strip() + "\n")
    return path


def stub_tokenizer(folder: Path, tokens: int, added: tuple[str, ...] = ()) -> Path:
    """A `tokenizer.json` beside a stub model: `tokens` word-level tokens, then `added`
    special tokens at the ids after them (past the rows of a model with `tokens` rows)."""
    vocab = {f"t{i}": i for i in range(tokens)}
    entries = [
        {"id": tokens + k, "content": t, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for k, t in enumerate(added)
    ]
    data = {
        "version": "1.0",
        "added_tokens": entries,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder
