"""Router rows of an `moe` step: the output tensors no input gives, computed once
before its tensors stream (on `--device`).

Follows mergekit-moe's `get_gate_params` (mergekit/moe/router.py), gate mode by gate mode:

- `hidden`: the base model runs through transformers (`AutoModelForCausalLM`, in the
  step's compute dtype) on each prompt, prefixed with the tokenizer's BOS text and
  tokenized without other special tokens. The hidden state used for layer i's router is
  the *input* of decoder layer i (`hidden_states[i]` of transformers' output: the
  embeddings for layer 0, the output of layer i - 1 after it) at the prompt's *last*
  token, as mergekit's `hidden` mode. An expert's vector is the mean over its prompts,
  minus the mean over its negative prompts, scaled to unit L2 norm per layer.
  Each prompt runs alone, so padding never enters (mergekit pads a batch on the left).
- `cheap_embed`: the base's token embeddings of the prompts (same tokenization), summed
  over tokens and prompts and scaled to unit norm; negative prompts' unit vector is
  subtracted and the result scaled to unit norm again (always: mergekit-moe scales the
  unit vector again, which can move its last bit); the same row in every layer. The
  sums run in mergekit-moe's order, so the rows are its bits.
- `random`: standard normal rows from a generator seeded by (recipe seed, router tensor
  name), like every random method's per-tensor seeds.
- `uniform_random`: rows uniform in [-1/sqrt(hidden), 1/sqrt(hidden)), torch.nn.Linear's
  default initialisation, from the same seeded generator.

Invariants (tests): in the prompt-based modes every row has unit norm; the result does
not depend on torch's thread count (on CPU the forward pass runs on one thread, since
a matrix product's rounding may depend on how threads split it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.engine.seeds import tensor_seed
from mergepkg.errors import BuildError
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import scan_tensors, torch_dtype
from mergepkg.layout.moe import SHARED_GATE
from mergepkg.layout.types import LAYER, StepLayout
from mergepkg.recipe.model import Expert


def routers(layout: StepLayout, folders: dict[str, Path], *, device: str, seed: int) -> dict[str, torch.Tensor]:
    """{router tensor name: (rows, hidden) float32 tensor} for every router of `layout`
    (its tensors without parts)."""
    step, moe = layout.step, layout.step.moe
    assert moe is not None and step.base is not None  # routers are tensors of an moe step, which has a base
    targets = [t for t in layout.tensors if not t.parts]
    if moe.gate_mode in ("random", "uniform_random"):
        out = {}
        for t in targets:
            # drawn on the CPU, then moved: a CUDA generator gives other numbers from the same seed
            gen = torch.Generator().manual_seed(tensor_seed(seed, t.name, 0))
            if moe.gate_mode == "random":
                out[t.name] = torch.randn(t.info.shape, generator=gen).to(device)  # (rows, hidden)
            else:
                scale = math.sqrt(1.0 / t.info.shape[-1])  # as mergekit-moe: 2 * scale * U[0, 1) - scale
                out[t.name] = (torch.rand(t.info.shape, generator=gen) * 2 * scale - scale).to(device)
        return out
    experts = list(moe.experts) + ([moe.shared_expert] if moe.shared_expert else [])
    layers = 1 + max(_layer(t.name) for t in targets)
    folder = folders[step.base]
    if moe.gate_mode == "hidden":
        vectors = hidden_vectors(folder, experts, torch_dtype(step.dtype), device)
    else:
        vectors = cheap_embed_vectors(folder, experts, layers, device)
    # vectors: (layers, experts [+ shared], hidden); the shared expert's row is its gate's
    count = len(moe.experts)
    out = {}
    for t in targets:
        layer = _layer(t.name)
        rows = vectors[layer, count:] if t.name.endswith(SHARED_GATE) else vectors[layer, :count]
        out[t.name] = rows.contiguous()
    return out


def _layer(name: str) -> int:
    m = LAYER.match(name)
    assert m is not None  # every router is a tensor of a layer (layout/moe.py)
    return int(m["index"])


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library never prints; the CLI shows its own progress
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise BuildError(
            f"the base's tokenizer does not load ({e})",
            hint="prompt-based gate modes tokenize the prompts with the base's tokenizer; "
            'use a base with tokenizer files, or params.gate_mode = "random"',
        ) from None


def _encode(tokenizer, prompt: str) -> torch.Tensor:
    """(tokens,) ids of the BOS text + prompt, no other special tokens (as mergekit)."""
    ids = tokenizer((tokenizer.bos_token or "") + prompt, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise BuildError(f"prompt {prompt!r} gives no tokens", hint="use a prompt the base's tokenizer encodes")
    return ids


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


@contextmanager
def _one_thread_on_cpu(device: str):
    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hidden_vectors(folder: Path, experts: Sequence[Expert], dtype, device: str) -> torch.Tensor:
    """(layers, experts, hidden) unit router rows from the base's hidden states."""
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(folder)
    # transformers types `to` through functools.wraps, which loses `self`: a device is right
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()  # type: ignore[arg-type]

    def mean_state(prompts: Sequence[str]) -> torch.Tensor:
        total = None
        for prompt in prompts:
            ids = _encode(tokenizer, prompt).to(device)[None]  # (1, tokens)
            with torch.no_grad():
                states = model(input_ids=ids, output_hidden_states=True, return_dict=True).hidden_states
            # states: layers + 1 of (1, tokens, hidden); [i] is the input of layer i, the last is after the final norm
            last = torch.stack(states[:-1])[:, 0, -1, :].float()  # (layers, hidden)
            total = last if total is None else total + last
        assert total is not None  # in a prompted gate mode every expert has prompts (recipe/moe.py)
        return total / len(prompts)

    vectors = []
    with _one_thread_on_cpu(device):
        for e in experts:
            v = mean_state(e.prompts)
            if e.negative_prompts:
                v = v - mean_state(e.negative_prompts)
            vectors.append(_unit(v))
    return torch.stack(vectors, dim=1)  # (layers, experts, hidden)


def cheap_embed_vectors(folder: Path, experts: Sequence[Expert], layers: int, device: str) -> torch.Tensor:
    """(layers, experts, hidden) unit router rows from the base's token embeddings."""
    tokenizer = _tokenizer(folder)
    infos = scan_tensors(folder)
    name = next((n for n in infos if n.endswith("embed_tokens.weight")), None)
    if name is None:
        raise BuildError(
            "the base has no embed_tokens tensor for gate_mode 'cheap_embed'",
            hint='use params.gate_mode = "hidden" or "random"',
        )
    with ModelReader(folder, infos) as reader:
        embed = reader.get(name).to(device=device, dtype=torch.float32)  # (vocab, hidden)

    def embedded(prompts: Sequence[str]) -> torch.Tensor:
        # as mergekit-moe sums them (a padded batch, summed over tokens, then over prompts),
        # so that the float sums round alike: padding rows are zeros, which add nothing
        ids = [_encode(tokenizer, prompt).to(device) for prompt in prompts]
        rows = torch.zeros(
            len(ids), max(len(i) for i in ids), embed.shape[1], device=device
        )  # (prompts, tokens, hidden)
        for b, i in enumerate(ids):
            rows[b, : len(i)] = embed[i]
        return _unit(rows.sum(dim=1).sum(dim=0))  # (hidden,)

    vectors = []
    for e in experts:
        v = embedded(e.prompts)
        if e.negative_prompts:
            v = v - embedded(e.negative_prompts)
        vectors.append(_unit(v))  # a unit vector scaled to unit norm again, as mergekit-moe does: same bits
    return torch.stack(vectors)[None].expand(layers, -1, -1)  # (layers, experts, hidden)
