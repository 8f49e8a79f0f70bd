"""What the parts of the converter share: the step being built, the document it comes from,
errors located at that document's lines and notes kept on the step."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.importers.mergekit.documents import Doc
from mergepkg.recipe.tables import TableReader

LORA_HINT = (
    "merge the adapter into its model first (peft's merge_and_unload), save that folder and name the folder instead"
)


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
    notes: dict[str, list[str]] = field(default_factory=dict)  # note -> key paths it applies to
    refs: dict[str, str] = field(default_factory=dict)  # step names it reads -> key path

    @property
    def models(self) -> list[str]:
        """The base, the inputs and the slice sources, each once, in order."""
        names = [self.base] if self.base else []
        names += [i["model"] for i in self.inputs]
        names += [s["model"] for sl in self.slices for s in sl["sources"]]
        return list(dict.fromkeys(names))


class Context(TableReader):
    """The document being read (`doc`) and the step being built (`step`): errors are located
    at the document's YAML lines, notes are kept on the step."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text, path)
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

    def only_keys(self, table: Iterable[Any], allowed: Collection[str], key: str) -> None:
        """As TableReader.only_keys, with a LoRA adapter (`lora`) refused as such."""
        keys = list(table)
        if next((k for k in keys if k not in allowed), None) == "lora":
            raise self.error(f"{key}.lora", "LoRA adapters are not supported", LORA_HINT)
        super().only_keys(keys, allowed, key)

    def unknown_key_hint(self, key: str, allowed: Collection[str]) -> str:
        close = did_you_mean(key, allowed)
        if close and close.startswith("did you mean"):
            return close
        return (
            "mergekit 0.1.5 ignores unknown keys; mergepkg import refuses them so that nothing is lost "
            "silently. Known here: " + ", ".join(allowed)
        )
