"""What a layout is: the models a step reads and the tensors it writes, described
before any tensor data is read (configs and headers only).

A `StepLayout` lists every output tensor (`OutputTensor`): its name, saved dtype and
shape, the input tensors (`Part`s) it is merged from, the method parameters resolved
for it and, for vocabulary tensors, the `RowMap` that moves rows onto the output's
vocabulary. `ModelInfo` is what is known of a model (a source, a stored step, or a
step not yet built, described by its own layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.io.tensors import CODE_OF, NAME_OF, TensorInfo
from mergepkg.layout.vocab import Vocab
from mergepkg.methods.spec import MethodSpec
from mergepkg.recipe.model import Step

# `model.layers.N.` (Llama, Mistral, Qwen, Gemma, NeoX), `transformer.h.N.` (GPT-2, Falcon), `blocks.N.`
LAYER = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks)\.)(?P<index>\d+)\.(?P<rest>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
FLOAT_CODES = tuple(NAME_OF)  # the dtypes merged; the others (integers, bools) are copied
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")  # a config's width, by family


def architecture(config: dict):
    """What a config says the model is: its `architectures`, else its `model_type`."""
    return config.get("architectures") or config.get("model_type")


def hidden_size(config: dict) -> int | None:
    """A config's hidden size (a multimodal config's text model's), or None when it names none."""
    for cfg in (config, config.get("text_config") or {}):
        for key in HIDDEN_KEYS:
            if isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool):
                return cfg[key]
    return None


@dataclass(frozen=True)
class Template:
    """A chat template known without reading files: `text`, or None for a model without one."""

    text: str | None


@dataclass(frozen=True)
class ModelInfo:
    """What the engine knows of a model before reading it: config and tensor headers."""

    config: dict
    tensors: dict[str, TensorInfo]
    vocab: Vocab | Path | None = field(
        default=None, compare=False
    )  # a vocabulary, the folder to read one from, or none
    # the model's chat template when it is known already (a step's layout); None: read it from
    # the tokenizer files `vocab` names (layout/chat.py)
    template: Template | None = field(default=None, compare=False)

    @property
    def num_layers(self) -> int:
        for key in LAYER_COUNT_KEYS:
            if isinstance(self.config.get(key), int):
                return self.config[key]
        indices = {int(m["index"]) for n in self.tensors if (m := LAYER.match(n))}
        return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class Part:
    model: str  # recipe model name
    tensor: str  # tensor name inside that model


@dataclass(frozen=True)
class RowMap:
    """How the inputs of one vocabulary tensor become `rows` aligned rows (`align.py`
    makes them; the engine applies them as it reads)."""

    rows: int
    own: tuple[tuple[int, ...], ...]  # per part (base first): its row for each output row; -1: the fallback
    fallbacks: tuple[
        tuple[int, tuple], ...
    ]  # (output row, ("row", part, row) | ("mean", ((part, row), ...)) | ("zero",))
    pad_from: int | None = None  # rows from here on (pad_to_multiple_of): each model's mean of the rows above


@dataclass(frozen=True)
class OutputTensor:
    name: str
    info: TensorInfo  # dtype (saved) and shape
    base: Part | None
    inputs: tuple[Part, ...]  # non-base, in recipe order
    params: dict[str, Any] = field(default_factory=dict)  # shared: scalar; per input: list
    row_map: RowMap | None = None  # the parts' vocabulary rows, moved onto the output's vocabulary (align.py)

    @property
    def parts(self) -> tuple[Part, ...]:
        return ((self.base,) if self.base else ()) + self.inputs


@dataclass(frozen=True)
class TokenIds:
    """How the special token ids of an output's configs (config.json, generation_config.json,
    copied from `config_from`) change when its vocabulary moves (`align.py` decides,
    `align.move_token_ids` applies): an id keeps its token where the output's vocabulary
    has it; an id whose token it lacks (or past its `rows`) takes the output tokenizer's own
    token of that role, or null, so no id is past `vocab_size`."""

    moved: dict[int, int] = field(default_factory=dict)  # old id -> the id of its token in the output
    gone: frozenset[int] = frozenset()  # old ids whose token the output's vocabulary lacks
    roles: dict[str, int | None] = field(default_factory=dict)  # config key -> the output tokenizer's id
    rows: int | None = None  # the output's vocab_size

    def __bool__(self) -> bool:
        """Whether any id can change (else the files are copied as they are): one that moves,
        one whose token is gone, or one past the output's rows, which only the files tell."""
        return bool(self.moved or self.gone or self.rows is not None)


@dataclass(frozen=True)
class StepLayout:
    step: Step
    method: MethodSpec
    tensors: tuple[OutputTensor, ...]
    config: dict  # config.json of the output
    config_from: str  # the model whose side files (generation config) are copied
    tokenizer_from: str
    bytes_in: int  # tensor bytes read
    vocab: Vocab | Path | None = (
        None  # the output's vocabulary (as ModelInfo.vocab); a Vocab with `made`: written, not copied
    )
    token_ids: TokenIds = field(default_factory=TokenIds)  # special token ids of config_from's configs (align.py)
    chat_template: str | None = None  # the output's chat template (layout/chat.py); None: it has none

    @property
    def info(self) -> ModelInfo:
        tensors = {t.name: t.info for t in self.tensors}
        return ModelInfo(self.config, tensors, self.vocab, Template(self.chat_template))

    @property
    def bytes_out(self) -> int:
        return sum(t.info.nbytes for t in self.tensors)


HEADS = ("lm_head.weight", "embed_out.weight")  # output heads (GPT-NeoX's is `embed_out`)


def is_pre(name: str) -> bool:
    """Whether a tensor outside the layers comes before them (embeddings), not after (norm,
    head). By name components: GPT-2 checkpoints saved without `transformer.` have `wte.weight`."""
    parts = name.split(".")
    return name not in HEADS and (any("embed" in p for p in parts) or "wte" in parts or "wpe" in parts)


def ordered(names) -> list[str]:
    """Embeddings, then layers in numeric order, then the rest (norm, head)."""

    def order(name: str):
        m = LAYER.match(name)
        if m:
            return (1, int(m["index"]), m["rest"])
        return (0 if is_pre(name) else 2, 0, name)

    return sorted(names, key=order)


def saved_dtype(out_dtype: str | None, stored: str) -> str:
    """The dtype code a tensor is saved in: the step's `out_dtype` for floating-point
    tensors, else the dtype it is stored in (the base's, or the first input's)."""
    return CODE_OF[out_dtype] if out_dtype and stored in FLOAT_CODES else stored
