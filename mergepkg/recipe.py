"""The recipe model: frozen dataclasses that `parse.py` builds from TOML.

Words follow the glossary: a *recipe* has *sources* (models from outside) and
*steps* (merges). A step reads *models*: sources or other steps, named by a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

Scalar = Union[float, int, bool]
Gradient = tuple  # tuple[float, ...]: interpolated linearly across a slice's layers


@dataclass(frozen=True)
class Condition:
    """One `{ filter = "...", value = ... }` entry; `filter=None` matches every tensor."""

    filter: str | None
    value: Scalar | Gradient


# A parameter setting: a scalar, a gradient, or conditions (first match wins).
Setting = Union[Scalar, Gradient, tuple]  # the last: tuple[Condition, ...]
Params = Mapping[str, Setting]


@dataclass(frozen=True)
class Source:
    name: str
    hf: str | None = None  # "org/name" on the Hugging Face Hub
    revision: str = "main"
    path: Path | None = None  # a local model folder, absolute
    recipe: Path | None = None  # another recipe file, absolute ...
    step: str | None = None  # ... and the step of it this source is

    @property
    def label(self) -> str:
        if self.recipe:
            return f"{self.recipe}:{self.step}"
        return f"{self.hf}@{self.revision}" if self.hf else str(self.path)


@dataclass(frozen=True)
class Origin:
    """Where a step imported from another recipe file was written, for error messages."""

    path: Path
    text: str = field(repr=False)
    name: str  # its name in that file
    seed: int  # that recipe's seed: an imported step builds as its own recipe builds it


@dataclass(frozen=True)
class InputRef:
    """A model a step merges, with its per-input parameters."""

    model: str
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    model: str
    layers: tuple[int, int]  # [start, end)
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    """One block of output layers, merged from the same number of layers of each source."""

    sources: tuple[SliceSource, ...]
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSource:
    """One `tokenizer.tokens` entry: where a token's embedding rows come from, as in
    mergekit: `model`'s row of `from_token` (default: the token itself) or of row
    `from_id`; `model=None` is a row of zeros. Without `force` it fills only the inputs
    that lack the token; with it, every input's row (see docs/tokenizers.md)."""

    token: str
    model: str | None
    from_token: str | None = None
    from_id: int | None = None
    force: bool = False


@dataclass(frozen=True)
class Step:
    name: str
    method: str
    base: str | None = None
    inputs: tuple[InputRef, ...] = ()
    slices: tuple[Slice, ...] = ()  # empty: whole models, layer for layer
    params: Params = field(default_factory=dict)
    dtype: str = "float32"  # compute dtype
    out_dtype: str | None = None  # saved dtype; None: the base's (or first input's)
    tokenizer: str | None = None  # "base", "union" or an input's name; None: base, else first input
    origin: Origin | None = field(default=None, compare=False)  # set on steps imported from other files
    tokens: tuple[TokenSource, ...] = ()  # tokenizer.tokens, in recipe order
    pad_to_multiple_of: int | None = None  # tokenizer.pad_to_multiple_of: embedding rows rounded up to a multiple

    @property
    def tokenizer_union(self) -> bool:
        """Whether the output's vocabulary is the union of the inputs' (a model named
        "union" among the step's models keeps the name's old meaning)."""
        return self.tokenizer == "union" and "union" not in self.models

    @property
    def tokenizer_model(self) -> str:
        """The model whose tokenizer files the output gets (for a union: the one it starts from)."""
        choice = self.tokenizer or "base"
        if (choice == "base" and (self.base or "base" not in self.models)) or self.tokenizer_union:
            return self.base or self.models[0]
        return choice  # an input's name (also an input named "base" of a step without base)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the step reads, base first, each once, in recipe order."""
        names = [self.base] if self.base else []
        names += [i.model for i in self.inputs]
        names += [s.model for sl in self.slices for s in sl.sources]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    path: Path  # the recipe file, absolute
    sources: Mapping[str, Source]
    steps: Mapping[str, Step]
    outputs: tuple[str, ...]  # names of the steps the build delivers
    seed: int = 0
    text: str = field(default="", repr=False, compare=False)  # for locating errors

    def line_of(self, key: str) -> int | None:
        from mergepkg.locate import locate

        return locate(self.text, key)
