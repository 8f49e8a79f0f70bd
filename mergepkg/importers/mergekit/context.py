"""What the parts of the converter share: the step being built, the document it comes from,
errors located at that document's lines, and what is kept on the step on the way.

Two kinds of remarks are kept: a *note* records that the recipe says something the
config said in another way (e.g. `out_dtype = dtype`); an *ignored* key is one mergekit
0.1.5 accepts and never uses, carried over as a warning that names the key and says it
has no effect — or, with `strict`, refused as an error at that key."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.importers.mergekit.documents import Doc
from mergepkg.recipe.tables import TableReader

IGNORED_HINT = "mergekit 0.1.5 accepts it and does nothing with it; remove it (or import without --strict)"


@dataclass
class Step:
    """One step of the recipe being built, from one document of the config."""

    name: str
    doc: Doc
    method: str = ""
    base: str | None = None
    inputs: list[dict] = field(default_factory=list)  # {"model": name, <params>}
    slices: list[dict] = field(default_factory=list)  # {"sources": [...], "params": {...}}
    params: dict = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer: str | None = None  # the model whose tokenizer the output gets (None: mergepkg's default)
    union: bool = False  # tokenizer source "union" (`tokenizer` then names no model)
    tokens: dict[str, dict] = field(default_factory=dict)  # tokenizer.tokens: token -> { source, force }
    pad_to_multiple_of: int | None = None
    chat_template: str | None = None  # "auto", a built-in name, a model of the step or Jinja text
    config: str | None = None  # base_model of a method without a base: where config and tokenizer come from
    moe: dict | None = None  # an moe step: { experts, shared_expert, params }
    notes: dict[str, list[str]] = field(default_factory=dict)  # note -> key paths it applies to
    ignored: dict[str, str] = field(default_factory=dict)  # key path -> why it has no effect
    refs: dict[str, str] = field(default_factory=dict)  # step names it reads -> key path

    @property
    def models(self) -> list[str]:
        """The base (or `config`'s model), the inputs and the slice sources, each once, in order."""
        names = [self.base] if self.base else []
        names += [self.config] if self.config else []
        names += [i["model"] for i in self.inputs]
        names += [s["model"] for sl in self.slices for s in sl["sources"]]
        if self.moe is not None:
            names += [e["model"] for e in self.moe["experts"]]
            names += [self.moe["shared_expert"]["model"]] if self.moe.get("shared_expert") else []
        return list(dict.fromkeys(names))


class Context(TableReader):
    """The document being read (`doc`) and the step being built (`step`): errors are located
    at the document's YAML lines, notes are kept on the step."""

    def __init__(self, text: str, path: Path, *, strict: bool = False) -> None:
        super().__init__(text, path)
        self.strict = strict
        self.doc: Doc | None = None
        self.step: Step | None = None

    def line_of(self, key: str) -> int | None:
        """The line of `key` or of the nearest key path above it; else where the document starts."""
        doc = self.doc
        if doc is None:
            return None
        k = key
        while k:
            if k in doc.lines:
                return doc.lines[k]
            cut = max(k.rfind("."), k.rfind("["))
            k = k[:cut] if cut > 0 else ""
        return doc.line

    def note(self, message: str, key: str) -> None:
        """Record that something at `key` was dropped or changed (a note and a recipe comment)."""
        assert self.step is not None, "a note outside a step"
        self.step.notes.setdefault(message, []).append(key)

    def ignored(self, key: str, why: str, hint: str | None = None) -> None:
        """`key` is accepted by mergekit and has no effect: a warning, or an error when strict."""
        assert self.step is not None, "an ignored key outside a step"
        if self.strict:
            raise self.error(key, f"has no effect: {why}", hint or IGNORED_HINT)
        self.step.ignored.setdefault(key, why + (f" ({hint})" if hint else ""))

    def only_keys(self, table: Iterable[Any], allowed: Collection[str], key: str) -> None:
        """Keys mergekit's config model does not declare: pydantic drops them, so do we, with a warning."""
        for k in table:
            if k not in allowed:
                self.unknown_key(k, allowed, key)

    def unknown_key(self, k: Any, allowed: Collection[str], key: str) -> None:
        where = f"{key}.{k}" if key else str(k)
        why = "mergekit 0.1.5 does not read this key"
        hint: str | None
        if k == "lora":
            hint = "to apply a LoRA adapter, write the model as `model: base+adapter`"
        else:
            close = did_you_mean(str(k), allowed)
            hint = close if close and close.startswith("did you mean") else None
        self.ignored(where, why, hint)

    def unknown_key_hint(self, key: str, allowed: Collection[str]) -> str:
        close = did_you_mean(key, allowed)
        if close and close.startswith("did you mean"):
            return close
        return "known here: " + ", ".join(allowed)
