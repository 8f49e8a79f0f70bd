"""Model references of a config as recipe names: Hugging Face repos and folders become
`[sources]` entries, another document's `name` (mergekit-multi) becomes its step, and a
LoRA reference (`org/base+org/adapter`, or `{ model: ..., lora: ... }`) becomes the
adapter's source and the recipe's `"base+adapter"` (docs/recipes.md#lora-adapters)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mergepkg.importers.mergekit.context import Context, Step
from mergepkg.recipe.names import is_name
from mergepkg.recipe.tables import show

REF_KEYS = ("model", "lora", "override_architecture")
HF_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


class Refs:
    """The `[sources]` table being built and every source or step name given out (each once)."""

    def __init__(self, ctx: Context, *, recipe_dir: Path, cwd: Path) -> None:
        self.ctx = ctx
        self.recipe_dir, self.cwd = recipe_dir, cwd
        self.sources: dict[str, dict] = {}  # name -> { hf, revision } or { path }
        self.source_ids: dict[tuple, str] = {}
        self.used: set[str] = set()
        self.step_of_doc_name: dict[str, str] = {}  # a document's `name:` -> its step name
        self.roles: dict[str, str] = {}  # source name -> "model" or "adapter" (a source is one or the other)

    def model_ref(self, value: Any, key: str) -> str:
        """The source or step name of a mergekit model reference."""
        ctx = self.ctx
        if isinstance(value, dict):
            ctx.only_keys(value, REF_KEYS, key)
            if value.get("lora") is not None:  # mergekit applies the adapter to the model first
                model = self.model_ref({k: v for k, v in value.items() if k != "lora"}, key)
                return self.applied(model, value["lora"], f"{key}.lora")
            if value.get("override_architecture") is not None:
                raise ctx.error(
                    f"{key}.override_architecture",
                    "override_architecture is not supported",
                    "mergepkg merges models of one architecture as their configs declare it",
                )
            inner = value.get("model")
            if isinstance(inner, dict):
                for k in inner:  # not ctx.only_keys: `lora` is an unknown key here
                    if k not in ("path", "revision"):
                        raise ctx.error(
                            f"{key}.model.{k}", f"unknown key {k!r}", ctx.unknown_key_hint(str(k), ("path", "revision"))
                        )
                path, revision = inner.get("path"), inner.get("revision")
                if not isinstance(path, str) or not path:
                    raise ctx.error(f"{key}.model.path", f"expected a model path, got {show(path)}")
                if revision is not None and not isinstance(revision, str):
                    raise ctx.error(f"{key}.model.revision", f"expected a revision, got {show(revision)}")
                return self.resolve(path, revision, f"{key}.model")
            return self.model_ref(inner, f"{key}.model")
        if not isinstance(value, str) or not value.strip():
            raise ctx.error(key, f"expected a model (org/name, org/name@revision or a folder), got {show(value)}")
        if "+" in value:  # model+adapter, as mergekit's ModelReference reads it
            model, *adapters = value.split("+")
            if len(adapters) > 1:
                raise ctx.error(key, f"invalid model reference {value!r}: more than one '+'", "mergekit reads one")
            return self.applied(self.model_ref(model, key), adapters[0], key)
        if value.count("@") > 1:
            raise ctx.error(key, f"invalid model reference {value!r}: more than one '@'")
        path, _, revision = value.partition("@")
        if not path:
            raise ctx.error(key, f"invalid model reference {value!r}")
        return self.resolve(path, revision or None, key)

    def applied(self, model: str, adapter: Any, key: str) -> str:
        """The recipe's `"model+adapter"` for a LoRA `adapter` reference (`org/name@revision`, a
        folder, or `{ path, revision }`) applied to the model named `model`."""
        ctx = self.ctx
        if isinstance(adapter, dict):
            for k in adapter:
                if k not in ("path", "revision"):
                    raise ctx.error(
                        f"{key}.{k}", f"unknown key {k!r}", ctx.unknown_key_hint(str(k), ("path", "revision"))
                    )
            path, revision = adapter.get("path"), adapter.get("revision")
            if revision is not None and not isinstance(revision, str):
                raise ctx.error(f"{key}.revision", f"expected a revision, got {show(revision)}")
        elif isinstance(adapter, str):
            if adapter.count("@") > 1:
                raise ctx.error(key, f"invalid adapter reference {adapter!r}: more than one '@'")
            path, _, revision = adapter.partition("@")
            revision = revision or None
        else:
            path, revision = None, None
        if not isinstance(path, str) or not path.strip():
            raise ctx.error(
                key, f"expected a LoRA adapter (org/name, org/name@revision or a folder), got {show(adapter)}"
            )
        if path in self.step_of_doc_name:
            raise ctx.error(
                key,
                f"{path!r} names a merge of this file; a LoRA adapter is a Hugging Face repo or a folder",
                "name the adapter's repo or folder after the '+'",
            )
        return f"{model}+{self.resolve(path, revision, key, role='adapter')}"

    def resolve(self, path: str, revision: str | None, key: str, *, role: str = "model") -> str:
        """The name for `path` (@`revision`): a step of this file, or a source added once per model
        (`role` "adapter": a LoRA adapter's source)."""
        ctx, step = self.ctx, self.ctx.step
        assert step is not None, "a model reference outside a step"
        if path in self.step_of_doc_name:  # mergekit-multi: another document's output
            if revision:
                raise ctx.error(key, f"{path!r} names a merge of this file; it has no revision")
            name = self.step_of_doc_name[path]
            if name == step.name:
                raise ctx.error(key, f"merge {path!r} cannot read itself")
            step.refs.setdefault(name, key)
            return name
        local = self.is_local(path)
        if local:
            if revision:
                raise ctx.error(key, f"{path!r} is a local folder; a revision applies to Hugging Face repos only")
            folder = Path(os.path.expanduser(path))
            absolute = folder if folder.is_absolute() else (self.cwd / folder)
            absolute = Path(os.path.normpath(absolute))
            ident: tuple = ("path", str(absolute))
            written = str(absolute) if folder.is_absolute() else _relative(absolute, self.recipe_dir)
            table = {"path": written}
            wanted = absolute.name
        else:
            if ".." in path:
                raise ctx.error(key, f"not a Hugging Face repo id: {path!r}")
            ident = ("hf", path, revision or "main")
            table = {"hf": path, **({"revision": revision} if revision else {})}
            wanted = path.rsplit("/", 1)[-1]
        if ident in self.source_ids:
            name = self.source_ids[ident]
            if self.roles.get(name, role) != role:
                raise ctx.error(
                    key,
                    f"{path!r} is a LoRA adapter in one reference and a model in another",
                    "an adapter is applied to a model (model+adapter); it is not a model itself",
                )
            return name
        name = self.reserve(sanitize(wanted))
        self.source_ids[ident] = name
        self.sources[name] = table
        self.roles[name] = role
        return name

    def is_local(self, path: str) -> bool:
        """As mergekit decides: a path that exists is a folder, anything else a Hugging Face repo;
        a path that cannot be a repo id (absolute, ./, ../, ~, several '/') is a folder that may not exist yet."""
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded) or path.startswith(("./", "../", ".\\", "..\\", "~")) or path in (".", ".."):
            return True
        if (self.cwd / expanded).exists():
            return True
        return not HF_ID.fullmatch(path)

    def reserve(self, wanted: str) -> str:
        """`wanted`, or `wanted-2`, `wanted-3`, ... when it is taken."""
        name, k = wanted, 2
        while name in self.used:
            name = f"{wanted[:120]}-{k}"
            k += 1
        self.used.add(name)
        return name

    def rename(self, old: str, new: str, steps: list[Step]) -> None:
        """Rename a source or step everywhere it is named (in `model+adapter` references too)."""

        def swap(name: Any) -> Any:
            if not isinstance(name, str):
                return name
            return "+".join(new if part == old else part for part in name.split("+"))

        self.sources = {(new if k == old else k): v for k, v in self.sources.items()}
        self.source_ids = {i: (new if n == old else n) for i, n in self.source_ids.items()}
        self.roles = {(new if k == old else k): v for k, v in self.roles.items()}
        for s in steps:
            s.name = new if s.name == old else s.name
            s.base = swap(s.base)
            s.config = swap(s.config)
            s.tokenizer = swap(s.tokenizer)
            for entry in s.tokens.values():
                src = entry["source"]
                if isinstance(src, dict):
                    if "model" in src:
                        src["model"] = swap(src["model"])
                else:
                    entry["source"] = swap(src)
            for model in [*s.inputs, *(src for sl in s.slices for src in sl["sources"])]:
                model["model"] = swap(model["model"])
            s.refs = {swap(k): v for k, v in s.refs.items()}


def sanitize(text: str) -> str:
    """A name mergepkg accepts: letters, digits, '_', '-', '.'; not starting with '-' or '.'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    name = re.sub(r"^[.-]+", "", name)[:120]
    if not is_name(name):
        name = "model"
    return name


def _relative(target: Path, start: Path) -> str:
    """`target` relative to `start` as a recipe writes it: ./x, ../x or '.'."""
    rel = os.path.relpath(target, start)
    rel = Path(rel).as_posix()
    return rel if rel.startswith("../") or rel == ".." else f"./{rel}" if rel != "." else "."
