"""mergekit YAML config -> mergepkg recipe TOML (`mergepkg import`).

A mergekit config is read the way mergekit 0.1.5 reads it and written as one recipe:
a single config becomes one step; a mergekit-multi file (several YAML documents, each
with a `name`, later ones naming earlier ones as models) becomes one step per
document. Model references become `[sources]`; everything mergepkg cannot express is
refused with an error at the config's line and key path, and what mergekit ignores
anyway (or what cannot change the merged tensors) is dropped with a note that the
recipe keeps as a comment. docs/import.md lists what maps to what.

Nothing here prints: `convert` returns the recipe text and the notes, the CLI shows them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergepkg.errors import MergepkgError, RecipeError, SourceError, did_you_mean
from mergepkg.methods import METHODS
from mergepkg.methods.spec import MethodSpec, Param
from mergepkg.parse import DTYPES, NAME, parse_recipe
from mergepkg.recipe import Recipe

# merge_method values of mergekit 0.1.5 that mergepkg does not implement (for a clearer message)
MERGEKIT_ONLY = ("multislerp", "karcher", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "modules", "name")
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters")
REF_KEYS = ("model", "lora", "override_architecture")
TASK_VECTOR = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
               "della", "della_linear")
# mergekit-moe configs: a different tool and format
MOE_KEYS = ("experts", "gate_mode", "experts_per_token", "shared_experts")
# what pydantic's bool accepts, as mergekit validates flags with it
TRUE = ("true", "yes", "on", "1", "t", "y")
FALSE = ("false", "no", "off", "0", "f", "n")
HF_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
LORA_HINT = ("merge the adapter into its model first (peft's merge_and_unload), save that folder "
             "and name the folder instead")

IMPORTABLE = [m for m in METHODS if m != "moe"]  # mergekit-yaml has no moe method (that is mergekit-moe)
SUPPORTED_TEXT = ", ".join(IMPORTABLE)


@dataclass
class ImportResult:
    text: str  # the recipe (TOML)
    notes: list[str]  # what was dropped or changed on the way (also comments in `text`)
    warnings: list[str] = field(default_factory=list)  # problems of the surroundings (folders not found)
    recipe: Recipe | None = None  # the recipe as mergepkg parses it, when its folders exist


def import_mergekit(text: str, path: Path, *, name: str | None = None, recipe_dir: Path | None = None,
                    cwd: Path | None = None) -> str:
    """The recipe TOML for the mergekit config `text` read from `path`.

    `name`: package name and the name of the final step (default: the config's stem).
    `recipe_dir`: the folder the recipe will live in; local model paths are written
    relative to it (default: the config's folder). `cwd`: the folder relative model
    paths of the config are resolved against, as mergekit does (default: the current one).
    """
    return convert(text, path, name=name, recipe_dir=recipe_dir, cwd=cwd).text


def convert(text: str, path: Path, *, name: str | None = None, recipe_dir: Path | None = None,
            cwd: Path | None = None) -> ImportResult:
    """As `import_mergekit`, with the notes and the parsed recipe."""
    path = Path(path)
    return _Importer(text, path, name=name, recipe_dir=recipe_dir, cwd=cwd).run()


# -- YAML with line numbers ---------------------------------------------------------------


@dataclass
class _Doc:
    data: Any
    lines: dict[str, int]  # key path -> 1-based line
    line: int  # where the document starts
    index: int  # 0-based position in the file


def _load_documents(text: str, display: str) -> list[_Doc]:
    loader = yaml.SafeLoader(text)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            lines: dict[str, int] = {}
            _walk(node, "", lines, 0)
            docs.append(_Doc(data, lines, node.start_mark.line + 1, len(docs)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"invalid YAML: {problem}", file=display,
                          line=mark.line + 1 if mark is not None else None) from None
    finally:
        loader.dispose()
    return docs


def _walk(node: yaml.Node, path: str, lines: dict[str, int], depth: int) -> None:
    if depth > 64:  # recursive aliases
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            lines.setdefault(sub, key_node.start_mark.line + 1)
            _walk(value_node, sub, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, depth + 1)


# -- the recipe being built -----------------------------------------------------------------


@dataclass
class _Step:
    name: str
    doc: _Doc
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
        names = [self.base] if self.base else []
        names += [i["model"] for i in self.inputs]
        names += [s["model"] for sl in self.slices for s in sl["sources"]]
        return list(dict.fromkeys(names))


class _Importer:
    def __init__(self, text: str, path: Path, *, name: str | None, recipe_dir: Path | None, cwd: Path | None):
        self.text, self.path = text, path
        self.display = str(path)
        self.name = name
        self.recipe_dir = Path(recipe_dir if recipe_dir is not None else (path.parent if str(path.parent) else ".")).resolve()
        self.cwd = Path(cwd if cwd is not None else os.getcwd()).resolve()
        self.sources: dict[str, dict] = {}  # name -> { hf, revision } or { path }
        self.source_ids: dict[tuple, str] = {}
        self.used: set[str] = set()
        self.step_of_doc_name: dict[str, str] = {}  # a document's `name:` -> its step name
        self.doc: _Doc | None = None
        self.step: _Step | None = None

    # -- errors and notes ---------------------------------------------------------------------
    def line_of(self, key: str) -> int | None:
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

    def error(self, key: str | None, message: str, hint: str | None = None, cls=RecipeError) -> MergepkgError:
        return cls(message, file=self.display, line=self.line_of(key or ""), key=key or None, hint=hint)

    def note(self, message: str, key: str) -> None:
        self.step.notes.setdefault(message, []).append(key)

    # -- the whole file -----------------------------------------------------------------------
    def run(self) -> ImportResult:
        docs = [d for d in _load_documents(self.text, self.display) if d.data is not None]
        if not docs:
            raise RecipeError("the file holds no mergekit config", file=self.display,
                              hint="expected keys like merge_method, models or slices, base_model")
        for d in docs:
            self.doc = d
            if not isinstance(d.data, dict):
                raise self.error(None, f"expected a mergekit config (a mapping of keys), got {_show(d.data)}")
        default = self.name or self.path.stem
        package = self.name or self.path.stem or "imported"
        steps = self.name_steps(docs, default)
        for step in steps:
            self.doc, self.step = step.doc, step
            self.convert_doc(step)
        self.doc = self.step = None
        self.check_cycles(steps)
        for s in steps:  # `tokenizer = "base"` means the step's base: an input named "base" needs another name
            if s.tokenizer == "base" and s.base != "base":
                self.rename("base", self.reserve("base-model"), steps)
            if s.union and "union" in s.models:  # and "union" the union, not a model
                self.rename("union", self.reserve("union-model"), steps)
        text = self.render(package, steps)
        notes = [f"{s.name}: {msg} ({', '.join(dict.fromkeys(keys))})" for s in steps for msg, keys in s.notes.items()]
        result = ImportResult(text=text, notes=notes)
        self.self_check(result)
        return result

    def name_steps(self, docs: list[_Doc], default: str) -> list[_Step]:
        multi = len(docs) > 1
        names: list[str | None] = []
        for d in docs:
            self.doc = d
            n = d.data.get("name") if multi else None
            if n is not None and not isinstance(n, str):
                raise self.error("name", f"expected a merge name (a string), got {_show(n)}")
            if n is not None and n in names:
                raise self.error("name", f"two documents are named {n!r}", "mergekit-multi needs unique names")
            if n is None and multi and None in names:
                raise self.error(None, "two documents have no `name`",
                                 "mergekit-multi allows one unnamed (final) merge; name the others")
            names.append(n)
        steps = []
        for n in names:  # named stages keep their names; the unnamed one is the output's
            if n is not None:
                step = self.reserve(_sanitize(n))
                self.step_of_doc_name[n] = step
        for d, n in zip(docs, names):
            steps.append(_Step(name=self.step_of_doc_name[n] if n is not None else self.reserve(_sanitize(default)), doc=d))
        return steps

    def reserve(self, wanted: str) -> str:
        name, k = wanted, 2
        while name in self.used:
            name = f"{wanted[:120]}-{k}"
            k += 1
        self.used.add(name)
        return name

    def rename(self, old: str, new: str, steps: list[_Step]) -> None:
        """Rename a source or step everywhere it is named."""
        self.sources = {(new if k == old else k): v for k, v in self.sources.items()}
        self.source_ids = {i: (new if n == old else n) for i, n in self.source_ids.items()}
        for s in steps:
            s.name = new if s.name == old else s.name
            s.base = new if s.base == old else s.base
            s.tokenizer = new if s.tokenizer == old else s.tokenizer
            for entry in s.tokens.values():
                src = entry["source"]
                if src == old:
                    entry["source"] = new
                elif isinstance(src, dict) and src.get("model") == old:
                    src["model"] = new
            for model in [*s.inputs, *(src for sl in s.slices for src in sl["sources"])]:
                model["model"] = new if model["model"] == old else model["model"]
            s.refs = {(new if k == old else k): v for k, v in s.refs.items()}

    def check_cycles(self, steps: list[_Step]) -> None:
        by_name = {s.name: s for s in steps}
        state: dict[str, int] = {}

        def visit(s: _Step, trail: list[str]):
            state[s.name] = 1
            for ref, key in s.refs.items():
                if state.get(ref) == 1:
                    cycle = trail[trail.index(ref):] + [s.name] if ref in trail else [s.name, ref]
                    self.doc = s.doc
                    raise self.error(key, "merges refer to each other in a cycle: " + " -> ".join(cycle + cycle[:1]))
                if ref not in state:
                    visit(by_name[ref], trail + [s.name])
            state[s.name] = 2

        for s in steps:
            if s.name not in state:
                visit(s, [])

    # -- one document ---------------------------------------------------------------------------
    def convert_doc(self, step: _Step) -> None:
        data = step.doc.data
        if any(k in data for k in MOE_KEYS) and "merge_method" not in data:
            key = next(k for k in MOE_KEYS if k in data)
            raise self.error(key, "this is a mergekit-moe config; mergepkg imports mergekit-yaml configs only",
                             "write an `moe` step by hand instead (docs/moe.md)")
        if "merge_method" not in data:
            raise self.error(None, "missing `merge_method`", f"mergepkg supports: {SUPPORTED_TEXT}")
        method = data["merge_method"]
        if not isinstance(method, str) or method not in IMPORTABLE:
            shown = method if isinstance(method, str) else _show(method)
            message = (f"mergekit's {shown!r} method is not supported by mergepkg" if method in MERGEKIT_ONLY
                       else f"unknown merge method {shown!r}")
            hint = (did_you_mean(method, IMPORTABLE) if isinstance(method, str) and method not in MERGEKIT_ONLY else None)
            hint = hint if hint and hint.startswith("did you mean") else None
            raise self.error("merge_method", message,
                             (hint + " " if hint else "") + f"mergepkg supports: {SUPPORTED_TEXT}")
        spec = METHODS[method]
        step.method = method
        for k in data:
            if k not in TOP_KEYS:
                raise self.error(str(k), f"unknown key {k!r}", _key_hint(str(k), TOP_KEYS))
        if data.get("modules") is not None:
            raise self.error("modules", "`modules` (per-module merges of multi-module models) is not supported",
                             "use `models` or `slices`")
        if data.get("tokenizer") is not None and data.get("tokenizer_source") is not None:
            raise self.error("tokenizer", "both `tokenizer_source` and `tokenizer` are set",
                             "mergekit refuses both; keep the `tokenizer` block")
        if data.get("chat_template") is not None:
            self.note("chat_template dropped: mergepkg copies the tokenizer files as they are; "
                      "set the template on the output's tokenizer after the build", "chat_template")
        # a single document's `name` (a one-stage mergekit-multi file) is ignored: the step is named after the output
        base = self.model_ref(data["base_model"], "base_model") if data.get("base_model") is not None else None
        has_models, has_slices = data.get("models") is not None, data.get("slices") is not None
        if has_models == has_slices:
            raise self.error("slices" if has_slices else None,
                             "expected exactly one of `models` or `slices`" + (", not both" if has_models else ""))
        step.params = self.params(data.get("parameters"), spec, "parameters", level="step")
        if has_models:
            self.whole_models(step, spec, data["models"], base)
        else:
            self.sliced(step, spec, data["slices"], base)
        step.dtype = self.dtype(data.get("dtype"), "dtype")
        step.out_dtype = self.dtype(data.get("out_dtype"), "out_dtype")
        if step.dtype is None:
            self.note("no dtype: mergekit computes in the inputs' dtype, this recipe in float32 (mergepkg's default)",
                      "dtype")
        elif step.out_dtype is None:
            step.out_dtype = step.dtype
            self.note("out_dtype = dtype, the dtype mergekit declares for its output when out_dtype is not set",
                      "dtype")
        self.tokenizer_source(step, data.get("tokenizer_source"), base)
        self.tokenizer_block(step, data.get("tokenizer"), base)

    # -- models: whole models -------------------------------------------------------------------
    def whole_models(self, step: _Step, spec: MethodSpec, entries: Any, base: str | None) -> None:
        if not isinstance(entries, list) or not entries:
            raise self.error("models", "expected a list of { model: ..., parameters: ... }")
        items = []  # (name, raw params, key)
        for i, entry in enumerate(entries):
            key = f"models[{i}]"
            if isinstance(entry, str):
                raise self.error(key, f"expected {{ model: {entry} }}, got a bare string",
                                 "mergekit reads each entry as a mapping with `model` (and `parameters`)")
            if not isinstance(entry, dict):
                raise self.error(key, f"expected {{ model: ..., parameters: ... }}, got {_show(entry)}")
            self.only_keys(entry, MODEL_KEYS, key)
            if entry.get("model") is None:
                raise self.error(key, "missing `model`")
            name = self.model_ref(entry["model"], f"{key}.model")
            if any(n == name for n, _, _ in items):
                raise self.error(f"{key}.model", f"{entry['model']!r} is listed twice",
                                 "mergekit refuses duplicate inputs; list each model once")
            items.append((name, entry.get("parameters"), key))
        if spec.base == "none":
            if base is not None and all(n != base for n, _, _ in items):
                # mergekit merges base_model as one more input of methods that take no base
                items.append((base, None, "base_model"))
                self.note(f"base_model is merged as one more input, as mergekit does for {spec.name}", "base_model")
            if base is not None and items[0][0] != base:
                step.tokenizer = base  # mergekit copies the base model's tokenizer
            if spec.max_inputs is not None and len(items) > spec.max_inputs and base is not None:
                raise self.error("base_model", f"method {spec.name!r} takes {spec.inputs_text} model, got {len(items)}",
                                 "mergekit merges base_model as one more input here; remove base_model")
        else:
            if spec.base == "required" and base is None:
                raise self.error("base_model" if "base_model" in step.doc.data else "merge_method",
                                 f"method {spec.name!r} needs a base_model", "add base_model: <the model the others were tuned from>")
            step.base = base
        for name, raw, key in items:
            is_base = spec.base != "none" and name == base
            params = self.params(raw, spec, f"{key}.parameters", level="base" if is_base else "input")
            if not is_base:
                step.inputs.append({"model": name, **params})
        self.check_count(spec, len(step.inputs), "models")
        for p in spec.params:
            if not p.required:
                continue
            if not p.per_input and p.name not in step.params:
                raise self.error("parameters", f"missing parameter {p.name!r}",
                                 self.misplaced(step, p.name) or
                                 f"set {p.name} in the top-level parameters (mergekit would fail too)")
            for (name, _, key), inp in zip([it for it in items if spec.base == "none" or it[0] != base], step.inputs):
                if p.per_input and p.name not in inp and p.name not in step.params:
                    raise self.error(key, f"missing parameter {p.name!r} for {name!r}",
                                     "set it under this model's parameters or in the top-level parameters")

    # -- slices ------------------------------------------------------------------------------------
    def sliced(self, step: _Step, spec: MethodSpec, raw: Any, base: str | None) -> None:
        if not isinstance(raw, list) or not raw:
            raise self.error("slices", "expected a list of { sources: [...] }")
        if spec.base == "none":
            if base is not None:
                self.note(f"base_model dropped: mergekit does not use it for {spec.name} slices", "base_model")
        else:
            if spec.base == "required" and base is None:
                raise self.error("base_model" if "base_model" in step.doc.data else "merge_method",
                                 f"method {spec.name!r} needs a base_model")
            step.base = base
        for si, sl in enumerate(raw):
            key = f"slices[{si}]"
            if not isinstance(sl, dict):
                raise self.error(key, f"expected {{ sources: [...] }}, got {_show(sl)}")
            self.only_keys(sl, SLICE_KEYS, key)
            if sl.get("base_model") is not None:
                own = self.model_ref(sl["base_model"], f"{key}.base_model")
                if own != base or spec.base == "none":
                    raise self.error(f"{key}.base_model", "a slice's own base_model is not supported",
                                     "use one base_model for the whole merge (split it into several merges otherwise)")
            if sl.get("residual_weight") is not None:
                self.note("residual_weight dropped: mergekit 0.1.5 reads it but never uses it", f"{key}.residual_weight")
            sources = sl.get("sources")
            if not isinstance(sources, list) or not sources:
                raise self.error(f"{key}.sources", "expected a list of { model: ..., layer_range: [start, end] }")
            out_sources, lengths = [], []
            for j, src in enumerate(sources):
                skey = f"{key}.sources[{j}]"
                if not isinstance(src, dict):
                    raise self.error(skey, f"expected {{ model: ..., layer_range: [start, end] }}, got {_show(src)}")
                self.only_keys(src, SOURCE_KEYS, skey)
                if src.get("model") is None:
                    raise self.error(skey, "missing `model`")
                name = self.model_ref(src["model"], f"{skey}.model")
                if any(s["model"] == name for s in out_sources):
                    raise self.error(f"{skey}.model", f"{src['model']!r} is listed twice in one slice",
                                     "mergekit refuses duplicate inputs")
                lr = src.get("layer_range")
                if (not isinstance(lr, list) or len(lr) != 2 or not all(type(x) is int for x in lr)
                        or not 0 <= lr[0] < lr[1]):
                    raise self.error(f"{skey}.layer_range", f"expected [start, end] with 0 <= start < end, got {_show(lr)}")
                is_base = spec.base != "none" and name == base
                params = self.params(src.get("parameters"), spec, f"{skey}.parameters", level="base" if is_base else "input")
                out_sources.append({"model": name, "layers": list(lr), **params})
                lengths.append(lr[1] - lr[0])
            if len(set(lengths)) > 1:
                raise self.error(f"{key}.sources", f"sources of one slice must span the same number of layers, got {lengths}")
            if step.base is not None and all(s["model"] != step.base for s in out_sources):
                raise self.error(f"{key}.sources", f"base_model must be among each slice's sources for {spec.name}")
            slice_params = self.params(sl.get("parameters"), spec, f"{key}.parameters", level="slice")
            non_base = [s for s in out_sources if s["model"] != step.base]
            self.check_count(spec, len(non_base), f"{key}.sources")
            for p in spec.params:
                if not p.required or p.name in step.params or p.name in slice_params:
                    continue
                if not p.per_input:
                    raise self.error(f"{key}", f"missing parameter {p.name!r}",
                                     self.misplaced(step, p.name) or
                                     "set it in the slice's or the top-level parameters (mergekit would fail too)")
                for j, s in enumerate(out_sources):
                    if s["model"] != step.base and p.name not in s:
                        raise self.error(f"{key}.sources[{j}]", f"missing parameter {p.name!r}",
                                         "set it on the source, the slice or the top-level parameters")
            step.slices.append({"sources": out_sources, "params": slice_params})
        if spec.base == "none" and base is not None and base in step.models and step.slices[0]["sources"][0]["model"] != base:
            step.tokenizer = base  # mergekit copies the base model's tokenizer

    def misplaced(self, step: _Step, name: str) -> str | None:
        """A hint when a per-merge parameter was only given on models (where mergekit ignores it)."""
        keys = [k for msg, ks in step.notes.items() if msg.startswith(f"{name} dropped here") for k in ks]
        if keys:
            return (f"{name} is set once per merge; mergekit ignores it at {keys[0]} (and fails the same way): "
                    "move it to the top-level or the slice's parameters")
        return None

    def check_count(self, spec: MethodSpec, count: int, key: str) -> None:
        if count < spec.min_inputs or (spec.max_inputs is not None and count > spec.max_inputs):
            noun = "model" if spec.max_inputs == 1 else "models"
            extra = " besides the base_model" if spec.base != "none" else ""
            raise self.error(key, f"method {spec.name!r} takes {spec.inputs_text} {noun}{extra}, got {count}")

    def only_keys(self, table: dict, allowed: tuple[str, ...], key: str) -> None:
        for k in table:
            if k not in allowed:
                if k == "lora":
                    raise self.error(f"{key}.{k}", "LoRA adapters are not supported", LORA_HINT)
                raise self.error(f"{key}.{k}", f"unknown key {k!r}", _key_hint(str(k), allowed))

    # -- tokenizer, dtype -----------------------------------------------------------------------------
    def tokenizer_source(self, step: _Step, value: Any, base: str | None, key: str = "tokenizer_source") -> None:
        if value is None:
            return
        if value == "union":
            step.union = True
            self.note("union: the other models' ordinary tokens join the base's tokenizer model without merges "
                      "(mergekit adds them as added tokens), so text encodes as the base encodes it; "
                      "see docs/tokenizers.md", key)
            return
        if value == "base":
            if step.base is not None:
                step.tokenizer = step.base
            elif base is not None and base in step.models:
                step.tokenizer = base
            else:
                raise self.error(key, "tokenizer source `base` but there is no base_model", "name a model instead")
        else:
            name = self.model_ref(value, key)
            if name not in step.models:
                raise self.error(key, f"tokenizer_source {value!r} is not one of the models merged here",
                                 "mergepkg copies the tokenizer of the base or of an input")
            step.tokenizer = name

    def tokenizer_block(self, step: _Step, value: Any, base: str | None) -> None:
        """mergekit's `tokenizer: { source, tokens: { tok: { source, force } } }`."""
        if value is None:
            return
        key = "tokenizer"
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping with `source` and `tokens`, got {_show(value)}")
        self.only_keys(value, ("source", "tokens", "pad_to_multiple_of"), key)
        pad = value.get("pad_to_multiple_of")
        if pad is not None:
            if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
                raise self.error(f"{key}.pad_to_multiple_of", f"expected a positive integer, got {_show(pad)}")
            step.pad_to_multiple_of = pad
        source = value.get("source", "union")  # mergekit's default
        self.tokenizer_source(step, source, base, f"{key}.source")
        tokens = value.get("tokens") or {}
        if not isinstance(tokens, dict):
            raise self.error(f"{key}.tokens", f"expected a mapping of tokens, got {_show(tokens)}")
        for token, entry in tokens.items():
            tkey = f"{key}.tokens.{token}"
            if not isinstance(entry, dict) or entry.get("source") is None:
                raise self.error(tkey, "expected { source: <model> } (and `force`)")
            self.only_keys(entry, ("source", "force"), tkey)
            out: dict[str, Any] = {"source": self.token_source(step, entry["source"], f"{tkey}.source")}
            force = entry.get("force", False)
            if not isinstance(force, bool):
                raise self.error(f"{tkey}.force", f"expected true or false, got {_show(force)}")
            if force:
                out["force"] = True
            step.tokens[str(token)] = out

    def token_source(self, step: _Step, src: Any, key: str) -> Any:
        """A model merged here, { kind: zero } or { kind: model_token, model, token | token_id }."""
        if isinstance(src, dict) and src.get("kind") == "zero":
            self.only_keys(src, ("kind",), key)
            return {"kind": "zero"}
        if isinstance(src, dict):
            self.only_keys(src, ("kind", "model", "token", "token_id"), key)
            if src.get("kind") != "model_token":
                raise self.error(f"{key}.kind", f"unknown kind {src.get('kind')!r}", 'expected "zero" or "model_token"')
            if (src.get("token") is None) == (src.get("token_id") is None):
                raise self.error(key, "expected exactly one of `token` or `token_id`")
            name = self.token_model(step, src.get("model"), f"{key}.model")
            which = {"token": str(src["token"])} if src.get("token") is not None else {"token_id": src["token_id"]}
            return {"model": name, **which}
        return self.token_model(step, src, key)

    def token_model(self, step: _Step, value: Any, key: str) -> str:
        if value is None:
            raise self.error(key, "missing the model")
        name = self.model_ref(value, key)
        if name not in step.models:
            raise self.error(key, f"{value!r} is not one of the models merged here",
                             "a token's embedding comes from the base or an input")
        return name

    def dtype(self, value: Any, key: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a dtype name, got {_show(value)}")
        name = value[len("torch."):] if value.startswith("torch.") else value
        if name not in DTYPES:
            raise self.error(key, f"unsupported dtype {value!r}", "expected one of: " + ", ".join(DTYPES))
        return name

    # -- parameters -----------------------------------------------------------------------------------
    def params(self, table: Any, spec: MethodSpec, key: str, *, level: str) -> dict:
        """level: "step", "slice", "input" (a model or slice source) or "base" (the base's own entry)."""
        if table is None:
            return {}
        if not isinstance(table, dict):
            raise self.error(key, f"expected a mapping of parameter names to values, got {_show(table)}")
        out = {}
        for name, value in table.items():
            pkey = f"{key}.{name}"
            if name == "int8_mask":
                self.note("int8_mask dropped: a memory option of mergekit that does not change results", pkey)
                continue
            if spec.name == "task_arithmetic" and name in ("density", "rescale"):
                self.note(f"{name} dropped: task_arithmetic never sparsifies, mergekit ignores it "
                          "and mergepkg has no such parameter", pkey)
                continue
            p = spec.param(name) if isinstance(name, str) else None
            if p is None:
                known = [q.name for q in spec.params]
                hint = did_you_mean(str(name), known) if known else None
                raise self.error(pkey, f"method {spec.name!r} has no parameter {name!r}",
                                 hint or f"{spec.name} takes no parameters")
            value = self.setting(value, p, pkey)
            if level == "base":
                self.note("the base model's own parameters dropped: mergekit does not use them", pkey)
                continue
            if level == "input" and not p.per_input:
                self.note(f"{name} dropped here: it is set once per merge and mergekit ignores it on a model",
                          pkey)
                continue
            out[name] = value
        return out

    def setting(self, value: Any, p: Param, key: str) -> Any:
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            conds = []
            for i, cond in enumerate(value):
                ckey = f"{key}[{i}]"
                if not isinstance(cond, dict):
                    raise self.error(ckey, "a list mixes conditions ({ filter, value }) and plain values")
                for k in cond:
                    if k not in ("filter", "value"):
                        hint = ("`pattern` is old mergekit syntax that mergekit 0.1.5 ignores (the value then "
                                "applies to every tensor); write `filter`" if k == "pattern"
                                else _key_hint(str(k), ("filter", "value")))
                        raise self.error(f"{ckey}.{k}", f"unknown key {k!r}", hint)
                if "value" not in cond:
                    raise self.error(ckey, "missing `value`", "e.g. { filter: self_attn, value: 0.5 }")
                flt = cond.get("filter")
                if flt is not None and not isinstance(flt, str):
                    raise self.error(f"{ckey}.filter", f"expected a substring of tensor names, got {_show(flt)}")
                if isinstance(cond["value"], (dict, type(None))) or (
                        isinstance(cond["value"], list) and any(isinstance(v, (dict, list)) for v in cond["value"])):
                    raise self.error(f"{ckey}.value", f"expected a number or a gradient, got {_show(cond['value'])}")
                entry = {} if flt in (None, "*") else {"filter": flt}
                entry["value"] = self.scalar_or_gradient(cond["value"], p, f"{ckey}.value")
                conds.append(entry)
            return conds
        return self.scalar_or_gradient(value, p, key)

    def scalar_or_gradient(self, value: Any, p: Param, key: str) -> Any:
        if isinstance(value, list):
            if not value:
                raise self.error(key, "expected a value, got an empty list")
            if p.kind is bool:
                raise self.error(key, f"{p.name!r} is a flag: mergepkg takes true or false, not a list")
            return [self.scalar(v, p, f"{key}[{i}]") for i, v in enumerate(value)]
        return self.scalar(value, p, key)

    def scalar(self, value: Any, p: Param, key: str) -> Any:
        if p.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
                return value.strip().lower() in TRUE
            raise self.error(key, f"expected true or false, got {_show(value)}")
        if isinstance(value, str):  # YAML reads 1e-5 as a string; mergekit's validation makes it a number
            try:
                number = float(value)
            except ValueError:
                raise self.error(key, f"expected a number, got {_show(value)}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {_show(value)}")
        else:
            number = value
        if (problem := p.problem(number)) is not None:
            raise self.error(key, f"{p.name}: {problem}")
        return number

    # -- model references -------------------------------------------------------------------------------
    def model_ref(self, value: Any, key: str) -> str:
        """The source or step name of a mergekit model reference."""
        if isinstance(value, dict):
            for k in value:
                if k not in REF_KEYS:
                    raise self.error(f"{key}.{k}", f"unknown key {k!r}", _key_hint(str(k), REF_KEYS))
            if value.get("lora") is not None:
                raise self.error(f"{key}.lora", "LoRA adapters are not supported", LORA_HINT)
            if value.get("override_architecture") is not None:
                raise self.error(f"{key}.override_architecture", "override_architecture is not supported",
                                 "mergepkg merges models of one architecture as their configs declare it")
            inner = value.get("model")
            if isinstance(inner, dict):
                for k in inner:
                    if k not in ("path", "revision"):
                        raise self.error(f"{key}.model.{k}", f"unknown key {k!r}", _key_hint(str(k), ("path", "revision")))
                path, revision = inner.get("path"), inner.get("revision")
                if not isinstance(path, str) or not path:
                    raise self.error(f"{key}.model.path", f"expected a model path, got {_show(path)}")
                if revision is not None and not isinstance(revision, str):
                    raise self.error(f"{key}.model.revision", f"expected a revision, got {_show(revision)}")
                return self.resolve(path, revision, f"{key}.model")
            return self.model_ref(inner, f"{key}.model")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a model (org/name, org/name@revision or a folder), got {_show(value)}")
        if "+" in value:
            raise self.error(key, f"LoRA references ({value!r}: model+adapter) are not supported", LORA_HINT)
        if value.count("@") > 1:
            raise self.error(key, f"invalid model reference {value!r}: more than one '@'")
        path, _, revision = value.partition("@")
        if not path:
            raise self.error(key, f"invalid model reference {value!r}")
        return self.resolve(path, revision or None, key)

    def resolve(self, path: str, revision: str | None, key: str) -> str:
        if path in self.step_of_doc_name:  # mergekit-multi: another document's output
            if revision:
                raise self.error(key, f"{path!r} names a merge of this file; it has no revision")
            name = self.step_of_doc_name[path]
            if name == self.step.name:
                raise self.error(key, f"merge {path!r} cannot read itself")
            self.step.refs.setdefault(name, key)
            return name
        local = self.is_local(path)
        if local:
            if revision:
                raise self.error(key, f"{path!r} is a local folder; a revision applies to Hugging Face repos only")
            folder = Path(os.path.expanduser(path))
            absolute = folder if folder.is_absolute() else (self.cwd / folder)
            absolute = Path(os.path.normpath(absolute))
            ident: tuple = ("path", str(absolute))
            written = str(absolute) if folder.is_absolute() else _relative(absolute, self.recipe_dir)
            table = {"path": written}
            wanted = absolute.name
        else:
            if ".." in path:
                raise self.error(key, f"not a Hugging Face repo id: {path!r}")
            ident = ("hf", path, revision or "main")
            table = {"hf": path, **({"revision": revision} if revision else {})}
            wanted = path.rsplit("/", 1)[-1]
        if ident in self.source_ids:
            return self.source_ids[ident]
        name = self.reserve(_sanitize(wanted))
        self.source_ids[ident] = name
        self.sources[name] = table
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

    # -- output ---------------------------------------------------------------------------------------------
    def render(self, package: str, steps: list[_Step]) -> str:
        out = [f"# imported from {self.path.name} by mergepkg import"]
        if len(steps) > 1:
            out.append("# a mergekit-multi file: one step per document")
        out += ["", "[package]", f"name = {_value(package)}", 'version = "0.1.0"', "", "[sources]"]
        out += [f"{_key(n)} = {_value(t)}" for n, t in self.sources.items()]
        for s in steps:
            out.append("")
            origin = (f"document {s.doc.index + 1} (line {s.doc.line})" if len(steps) > 1 else None)
            if origin:
                out.append(f"# from {origin}")
            for msg, keys in s.notes.items():
                out.append(f"# note: {msg} [{', '.join(dict.fromkeys(keys))}]")
            out.append(f"[steps.{_key(s.name)}]")
            out.append(f"method = {_value(s.method)}")
            if s.base:
                out.append(f"base = {_value(s.base)}")
            if s.inputs:
                if all(len(i) == 1 for i in s.inputs) and len(s.inputs) <= 4:
                    out.append(f"inputs = {_value([i['model'] for i in s.inputs])}")
                else:
                    out.append("inputs = [")
                    out += [f"  {_value(i)}," for i in s.inputs]
                    out.append("]")
            if s.slices:
                out.append("slices = [")
                for sl in s.slices:
                    table = {"sources": sl["sources"], **({"params": sl["params"]} if sl["params"] else {})}
                    out.append(f"  {_value(table)},")
                out.append("]")
            params_table = []  # long parameters: a [steps.NAME.params] table after the step's keys
            if s.params:
                inline = f"params = {_value(s.params)}"
                if len(inline) <= 100:
                    out.append(inline)
                else:
                    params_table += ["", f"[steps.{_key(s.name)}.params]"]
                    for k, v in s.params.items():
                        if isinstance(v, list) and v and isinstance(v[0], dict):
                            params_table.append(f"{_key(k)} = [")
                            params_table += [f"  {_value(c)}," for c in v]
                            params_table.append("]")
                        else:
                            params_table.append(f"{_key(k)} = {_value(v)}")
            if s.dtype:
                out.append(f"dtype = {_value(s.dtype)}")
            if s.out_dtype:
                out.append(f"out_dtype = {_value(s.out_dtype)}")
            source = "union" if s.union else ("base" if s.tokenizer == s.base else s.tokenizer) if s.tokenizer else None
            if s.tokens or s.pad_to_multiple_of:
                table = {"source": source or "base", **({"tokens": s.tokens} if s.tokens else {}),
                         **({"pad_to_multiple_of": s.pad_to_multiple_of} if s.pad_to_multiple_of else {})}
                out.append(f"tokenizer = {_value(table)}")
            elif source:
                out.append(f"tokenizer = {_value(source)}")
            out += params_table
        return "\n".join(out) + "\n"

    def self_check(self, result: ImportResult) -> None:
        """Parse the recipe as `mergepkg build` will. Missing local folders are a warning (they may
        not exist yet); any other problem is a bug of this importer, reported as such."""
        try:
            result.recipe = parse_recipe(result.text, self.recipe_dir / "imported.toml")
        except SourceError as e:
            result.warnings.append(f"{e.key}: {e.message}" if e.key else e.message)
        except RecipeError as e:
            raise RecipeError(f"the imported recipe does not parse: {e.key}: {e.message}", file=self.display,
                              hint="this is a bug of `mergepkg import`; please report it with the config") from e


# -- helpers ----------------------------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    """A name mergepkg accepts: letters, digits, '_', '-', '.'; not starting with '-' or '.'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    name = re.sub(r"^[.-]+", "", name)[:120]
    if not name or not NAME.match(name):
        name = "model"
    return name


def _relative(target: Path, start: Path) -> str:
    rel = os.path.relpath(target, start)
    rel = Path(rel).as_posix()
    return rel if rel.startswith("../") or rel == ".." else f"./{rel}" if rel != "." else "."


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as is."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not a finite number: {v}")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _key_hint(key: str, allowed: tuple[str, ...]) -> str:
    close = did_you_mean(key, allowed)
    if close and close.startswith("did you mean"):
        return close
    return "mergekit 0.1.5 ignores unknown keys; mergepkg import refuses them so that nothing is lost " \
           "silently. Known here: " + ", ".join(allowed)
