"""The recipe model: frozen dataclasses that `parse.py` builds from TOML.

Words follow the glossary: a *recipe* has *sources* (models from outside) and
*steps* (merges). A step reads *models*: sources or other steps, named by a string.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from mergepkg.errors import MergepkgError
from mergepkg.recipe.locate import key_name, locate

Scalar = float | int | bool
Gradient = tuple  # tuple[float, ...]: interpolated linearly across a slice's layers


@dataclass(frozen=True)
class Condition:
    """One `{ filter = "...", value = ... }` entry; `filter=None` matches every tensor."""

    filter: str | None
    value: Scalar | Gradient


# A parameter setting: a scalar, a gradient, or conditions (first match wins).
Setting = Scalar | Gradient | tuple  # the last: tuple[Condition, ...]
Params = Mapping[str, Setting]

# The method of the implicit step a `base+adapter` reference makes: the base with a PEFT LoRA
# adapter applied (recipe/adapters.py). No recipe can name it: it is not a merge method.
LORA = "lora"


@dataclass(frozen=True)
class Source:
    name: str
    hf: str | None = None  # "org/name" on the Hugging Face Hub
    revision: str = "main"
    path: Path | None = None  # a local model folder, absolute
    # `path` as written was absolute: the lock and the recipe hash keep it so (the same on
    # every checkout), where a relative one is kept relative to the recipe file
    absolute: bool = False
    recipe: Path | None = None  # another recipe file, absolute ...
    step: str | None = None  # ... and the step of it this source is
    dependency: str | None = None  # or a [dependencies] package (canonical name), with `step`

    @property
    def label(self) -> str:
        if self.dependency:
            return f"{self.dependency}:{self.step}"
        if self.recipe:
            return f"{self.recipe}:{self.step}"
        return f"{self.hf}@{self.revision}" if self.hf else str(self.path)

    def lock_path(self, root: Path) -> str | None:
        """How the lock and the recipe hash name this source's folder: an absolute path as
        the recipe writes it (the same wherever the recipe is checked out, or its output
        folder moved), a relative one relative to the recipe's folder `root` (the same
        wherever the recipe and its models move together). None for other sources."""
        if self.path is None:
            return None
        return str(self.path) if self.absolute else os.path.relpath(self.path, root)


@dataclass(frozen=True)
class Dependency:
    """A registry recipe this recipe uses steps of: `name = "^1.2"` in `[dependencies]`."""

    name: str  # canonical package name (registry/index.py)
    range: str  # a version range (registry/semver.py)
    registry: str | None = None  # a configured registry's name; None: the first that has it


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
class Expert:
    """One expert of an `moe` step: a model whose MLP becomes an expert, and the prompts
    that build its router rows (see docs/moe.md)."""

    model: str
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    allow_base_expert: bool = False  # the opt-in for an expert that is the base itself


@dataclass(frozen=True)
class MoE:
    """What an `moe` step adds to a step: its experts and routing settings."""

    experts: tuple[Expert, ...]
    experts_per_token: int = 2
    gate_mode: str = "hidden"  # "hidden", "cheap_embed", "random" or "uniform_random"
    shared_expert: Expert | None = None  # Qwen2-MoE's always-on expert

    @property
    def models(self) -> tuple[str, ...]:
        shared = (self.shared_expert.model,) if self.shared_expert else ()
        return tuple(e.model for e in self.experts) + shared

    def renamed(self, rename: Callable[[str], str]) -> MoE:
        def one(e: Expert) -> Expert:
            return replace(e, model=rename(e.model))

        return replace(
            self,
            experts=tuple(one(e) for e in self.experts),
            shared_expert=one(self.shared_expert) if self.shared_expert else None,
        )


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
    moe: MoE | None = None  # set on `moe` steps, which have no inputs or slices
    origin: Origin | None = field(default=None, compare=False)  # set on steps imported from other files
    tokens: tuple[TokenSource, ...] = ()  # tokenizer.tokens, in recipe order
    pad_to_multiple_of: int | None = None  # tokenizer.pad_to_multiple_of: embedding rows rounded up to a multiple
    # "auto", a built-in template's name, a model's name or Jinja text (recipe/chat.py); None: the
    # output's tokenizer files keep the template they have
    chat_template: str | None = None
    # the model whose config.json and side files (generation config) the output takes, and, by
    # default, its tokenizer: mergekit's `base_model` for a method without a base. None: the
    # base, else the first model
    config: str | None = None

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
    def adapter(self) -> str | None:
        """The LoRA adapter source an implicit `base+adapter` step applies to its base; None
        for every other step."""
        return self.inputs[0].model if self.method == LORA else None

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the step reads, base first (then `config`'s model), each once, in recipe order."""
        names = [self.base] if self.base else []
        names += [self.config] if self.config else []
        names += [i.model for i in self.inputs]
        names += [s.model for sl in self.slices for s in sl.sources]
        names += self.moe.models if self.moe else []
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Publish:
    """`[publish]`: where `mergepkg push` sends an output (builder/push.py); in no key or lock."""

    repo: str | None = None  # ORG/NAME on the Hub
    private: bool | None = None  # None: the Hub's default (public) when the repo is created
    step: str | None = None  # None: the recipe's only output
    commit_message: str | None = None


@dataclass(frozen=True)
class Export:
    """`[exports.NAME]`: a built step converted to another file format (mergepkg/export/),
    cached under its own key and pinned in the lock like a step."""

    name: str
    step: str  # the step whose output is converted
    format: str  # "gguf"
    type: str  # the file's tensor type: "f32", "bf16", "q8_0", "q4_k_m", ... (recipe/exports.py)


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
    dependencies: Mapping[str, Dependency] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    # `[package] allow`: warning codes the recipe silences (recipe/allow.py); in no key or lock
    allow: tuple[str, ...] = ()
    # `[package] remote`: the remote holding the recipe's built steps (docs/remote.md); in no key or lock
    remote: str | None = None
    publish: Publish = Publish()  # `[publish]` (docs/recipes.md#publish); in no key or lock
    exports: Mapping[str, Export] = field(default_factory=dict)  # `[exports.NAME]` (docs/export.md)
    # the file as the user named it (`../r.toml`), for messages: errors and warnings say it as parse errors do
    shown: Path | None = field(default=None, compare=False)

    @property
    def display(self) -> Path:
        """The recipe file as messages name it: as the user typed it, else absolute."""
        return self.shown if self.shown is not None else self.path

    @property
    def adapters(self) -> frozenset[str]:
        """The sources used as LoRA adapters (after a `+`): adapter folders, not models."""
        return frozenset(a for s in self.steps.values() if (a := s.adapter) is not None)

    def line_of(self, key: str) -> int | None:
        return locate(self.text, key)

    def locate(self, error: E, key: str) -> E:
        """`error` placed at `key` of this recipe, unless it already says where it is."""
        return _placed(error, self.display, self.text, key)

    def written(self, step: str) -> Written:
        """Where step `step` is written: this file, or for an imported step its own file."""
        origin = self.steps[step].origin
        if origin is not None:
            return Written(origin.path, origin.text, origin.name)
        return Written(self.display, self.text, step)


E = TypeVar("E", bound=MergepkgError)


@dataclass(frozen=True)
class Written:
    """Where a step is written, for its errors: the file, its text and the step's name
    there (an imported step keeps its own file and name)."""

    path: Path
    text: str = field(repr=False)
    name: str

    @property
    def key(self) -> str:
        """The step's key path: `steps.NAME`."""
        return f"steps.{key_name(self.name)}"

    def error(self, cls: type[E], key: str, message: str, hint: str | None = None) -> E:
        """A `cls` error at `key` (a key path in this file)."""
        return cls(message, file=str(self.path), line=locate(self.text, key), key=key, hint=hint)

    def locate(self, error: E, key: str | None = None) -> E:
        """`error` placed at `key` (default: the step itself), unless it already says where."""
        return _placed(error, self.path, self.text, key or self.key)


def _placed(error: E, path: Path, text: str, key: str) -> E:
    return error.at(file=path, line=locate(text, key), key=key) if error.key is None else error
