"""mergekit YAML config -> mergepkg recipe TOML (`mergepkg import`): the converter, which
reads the documents, names the steps and runs the other modules of this package on each.

A mergekit config is read the way mergekit 0.1.5 reads it and written as one recipe:
a single config becomes one step; a mergekit-multi file (several YAML documents, each
with a `name`, later ones naming earlier ones as models) becomes one step per
document; a mergekit-moe config becomes an `moe` step (moe.py). Model references
become `[sources]`. One rule for strictness: what mergekit refuses is refused, with an
error at the config's line and key path; what mergekit accepts and ignores is dropped
with a warning that names the key and says it has no effect (an error with `strict`);
where the recipe says something in another way, a note says how. Warnings and notes
stay in the recipe as comments. docs/commands/import.md lists what maps to what.

Nothing here prints: `convert` returns the recipe text and the notes, `convert_file` also
reads the config and writes the recipe; the CLI shows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.errors import RecipeError, SourceError, did_you_mean
from mergepkg.files import write_atomic
from mergepkg.importers.mergekit.context import Context, Step
from mergepkg.importers.mergekit.documents import Doc, load_documents
from mergepkg.importers.mergekit.models import sliced, whole_models
from mergepkg.importers.mergekit.moe import MOE_KEYS, convert_moe
from mergepkg.importers.mergekit.params import layered, read_params
from mergepkg.importers.mergekit.refs import Refs, sanitize
from mergepkg.importers.mergekit.render import render
from mergepkg.importers.mergekit.tokenizer import chat_template, tokenizer_block, tokenizer_source
from mergepkg.methods import METHODS
from mergepkg.recipe.chat import builtin_names
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.names import NAME_HINT, package_name_problem
from mergepkg.recipe.parse import parse_recipe
from mergepkg.recipe.tables import AUTO, DTYPES, show

# merge_method values of mergekit 0.1.5 that mergepkg does not implement (for a clearer message)
MERGEKIT_ONLY = ("multislerp", "ram", "ramplus_tl")
TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "modules",
    "name",
)
MODULE_KEYS = ("models", "slices", "parameters")

IMPORTABLE = [m for m in METHODS if m != "moe"]  # mergekit-yaml has no moe method (that is mergekit-moe)
SUPPORTED_TEXT = ", ".join(IMPORTABLE)


@dataclass
class ImportResult:
    text: str  # the recipe (TOML)
    notes: list[str]  # what was dropped or changed on the way (also comments in `text`)
    # keys mergekit accepts and ignores ("KEY has no effect: why"), and problems of the
    # surroundings (local folders not found)
    warnings: list[str] = field(default_factory=list)
    recipe: Recipe | None = None  # the recipe as mergepkg parses it, when its folders exist


def import_mergekit(
    text: str,
    path: Path,
    *,
    name: str | None = None,
    recipe_dir: Path | None = None,
    cwd: Path | None = None,
    strict: bool = False,
) -> str:
    """The recipe TOML for the mergekit config `text` read from `path`.

    `name`: package name and the name of the final step (default: the config's stem).
    `recipe_dir`: the folder the recipe will live in; local model paths are written
    relative to it (default: the config's folder). `cwd`: the folder relative model
    paths of the config are resolved against, as mergekit does (default: the current one).
    `strict`: a key mergekit accepts and ignores is an error instead of a warning.
    """
    return convert(text, path, name=name, recipe_dir=recipe_dir, cwd=cwd, strict=strict).text


def convert(
    text: str,
    path: Path,
    *,
    name: str | None = None,
    recipe_dir: Path | None = None,
    cwd: Path | None = None,
    strict: bool = False,
) -> ImportResult:
    """As `import_mergekit`, with the notes, the warnings and the parsed recipe."""
    path = Path(path)
    if name is not None and (problem := package_name_problem(name)) is not None:
        raise RecipeError(f"--name: {problem}", hint=NAME_HINT)
    return _Importer(text, path, name=name, recipe_dir=recipe_dir, cwd=cwd, strict=strict).run()


def convert_file(
    config: Path, *, output: Path | None = None, name: str | None = None, strict: bool = False
) -> ImportResult:
    """Convert the config file `config`. With `output`, local paths are written relative to its
    folder and the recipe is written there (whole or not at all); else relative to the config's."""
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError("config file not found", file=config) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the config: {e}", file=config) from None
    if output is not None and output.is_dir():
        raise RecipeError("the output is a folder", file=output, hint="name the recipe file, e.g. -o recipe.toml")
    recipe_dir = output.parent if output is not None else config.parent
    result = convert(text, config, name=name, recipe_dir=recipe_dir, strict=strict)
    if output is not None:
        try:
            write_atomic(output, result.text)
        except OSError as e:
            raise RecipeError(
                f"cannot write the recipe: {e.strerror or e}",
                file=output,
                hint="choose another -o, in a folder you can write to",
            ) from None
    return result


class _Importer:
    def __init__(
        self, text: str, path: Path, *, name: str | None, recipe_dir: Path | None, cwd: Path | None, strict: bool
    ) -> None:
        self.text, self.path = text, path
        self.name = name
        folder = recipe_dir if recipe_dir is not None else (path.parent if str(path.parent) else ".")
        self.recipe_dir = Path(folder).resolve()
        self.ctx = Context(text, path, strict=strict)
        self.docs: list[Doc] = []
        self.refs = Refs(
            self.ctx, recipe_dir=self.recipe_dir, cwd=Path(cwd if cwd is not None else os.getcwd()).resolve()
        )

    def run(self) -> ImportResult:
        ctx, refs = self.ctx, self.refs
        docs = self.docs = [d for d in load_documents(self.text, ctx.display) if d.data is not None]
        if not docs:
            raise RecipeError(
                "the file holds no mergekit config",
                file=ctx.display,
                hint="expected keys like merge_method, models or slices, base_model",
            )
        for d in docs:
            ctx.doc = d
            if not isinstance(d.data, dict):
                raise ctx.error("", f"expected a mergekit config (a mapping of keys), got {show(d.data)}")
        default = self.name or self.path.stem
        package = self.name or (sanitize(self.path.stem) if self.path.stem else "imported")
        steps = self.name_steps(docs, default)
        for step in steps:
            ctx.doc, ctx.step = step.doc, step
            self.convert_doc(step)
        ctx.doc = ctx.step = None
        self.check_cycles(steps)
        for s in steps:  # `tokenizer = "base"` means the step's base: an input named "base" needs another name
            if s.tokenizer == "base" and s.base != "base":
                refs.rename("base", refs.reserve("base-model"), steps)
            if s.union and "union" in s.models:  # and "union" the union, not a model
                refs.rename("union", refs.reserve("union-model"), steps)
            for clash in ("auto", *builtin_names()):  # a chat_template names these, not a model
                if s.chat_template and clash in s.models:
                    refs.rename(clash, refs.reserve(f"{clash}-model"), steps)
        text = render(self.path.name, package, refs.sources, steps)
        notes = [f"{s.name}: {msg} ({', '.join(dict.fromkeys(keys))})" for s in steps for msg, keys in s.notes.items()]
        ignored = [f"{s.name}: {key} has no effect: {why}" for s in steps for key, why in s.ignored.items()]
        result = ImportResult(text=text, notes=notes, warnings=ignored)
        self.self_check(result)
        return result

    def name_steps(self, docs: list[Doc], default: str) -> list[Step]:
        """One step per document: named stages keep their (sanitised) names, the unnamed one is the output's."""
        ctx, refs = self.ctx, self.refs
        multi = len(docs) > 1
        names: list[str | None] = []
        for d in docs:
            ctx.doc = d
            n = d.data.get("name") if multi else None
            if n is not None and not isinstance(n, str):
                raise ctx.error("name", f"expected a merge name (a string), got {show(n)}")
            if n is not None and n in names:
                raise ctx.error("name", f"two documents are named {n!r}", "mergekit-multi needs unique names")
            if n is None and multi and None in names:
                raise ctx.error(
                    "",
                    "two documents have no `name`",
                    "mergekit-multi allows one unnamed (final) merge; name the others",
                )
            names.append(n)
        for n in names:
            if n is not None:
                refs.step_of_doc_name[n] = refs.reserve(sanitize(n))
        return [
            Step(name=refs.step_of_doc_name[n] if n is not None else refs.reserve(sanitize(default)), doc=d)
            for d, n in zip(docs, names)
        ]

    def check_cycles(self, steps: list[Step]) -> None:
        """Stages of a mergekit-multi file that read each other in a circle are an error."""
        by_name = {s.name: s for s in steps}
        state: dict[str, int] = {}

        def visit(s: Step, trail: list[str]) -> None:
            state[s.name] = 1
            for ref, key in s.refs.items():
                if state.get(ref) == 1:
                    cycle = [*trail[trail.index(ref) :], s.name] if ref in trail else [s.name, ref]
                    self.ctx.doc = s.doc
                    raise self.ctx.error(
                        key, "merges refer to each other in a cycle: " + " -> ".join(cycle + cycle[:1])
                    )
                if ref not in state:
                    visit(by_name[ref], [*trail, s.name])
            state[s.name] = 2

        for s in steps:
            if s.name not in state:
                visit(s, [])

    def convert_doc(self, step: Step) -> None:
        """One document as `step`."""
        ctx, refs = self.ctx, self.refs
        data = step.doc.data
        if any(k in data for k in MOE_KEYS) and "merge_method" not in data:
            convert_moe(ctx, refs, step, data, self.dtype)
            return
        if "merge_method" not in data:
            raise ctx.error("", "missing `merge_method`", f"mergepkg supports: {SUPPORTED_TEXT}")
        method = data["merge_method"]
        if not isinstance(method, str) or method not in IMPORTABLE:
            shown = method if isinstance(method, str) else show(method)
            message = (
                f"mergekit's {shown!r} method is not supported by mergepkg"
                if method in MERGEKIT_ONLY
                else f"unknown merge method {shown!r}"
            )
            hint = did_you_mean(method, IMPORTABLE) if isinstance(method, str) and method not in MERGEKIT_ONLY else None
            hint = hint if hint and hint.startswith("did you mean") else None
            raise ctx.error(
                "merge_method", message, (hint + " " if hint else "") + f"mergepkg supports: {SUPPORTED_TEXT}"
            )
        spec = METHODS[method]
        step.method = method
        ctx.only_keys(data, TOP_KEYS, "")
        if data.get("name") is not None and len(self.docs) == 1:
            ctx.ignored("name", "mergekit-yaml does not read it (only mergekit-multi names its documents)")
        if data.get("tokenizer") is not None and data.get("tokenizer_source") is not None:
            raise ctx.error(
                "tokenizer",
                "both `tokenizer_source` and `tokenizer` are set",
                "mergekit refuses both; keep the `tokenizer` block",
            )
        base = refs.model_ref(data["base_model"], "base_model") if data.get("base_model") is not None else None
        step.params = read_params(ctx, data.get("parameters"), spec, "parameters", level="step")
        where, body = self.body(step, data)
        if where.endswith("models"):
            whole_models(ctx, refs, step, spec, body, base, where)
        else:
            sliced(ctx, refs, step, spec, body, base, where)
        step.dtype = self.dtype(data.get("dtype"), "dtype") or AUTO  # no dtype: mergekit computes in the inputs'
        step.out_dtype = self.dtype(data.get("out_dtype"), "out_dtype")
        if step.dtype != AUTO and step.out_dtype is None:
            step.out_dtype = step.dtype
            ctx.note("out_dtype = dtype, the dtype mergekit declares for its output when out_dtype is not set", "dtype")
        tokenizer_source(ctx, refs, step, data.get("tokenizer_source"), base)
        tokenizer_block(ctx, refs, step, data.get("tokenizer"), base)
        step.chat_template = chat_template(ctx, data.get("chat_template"))

    def body(self, step: Step, data: dict) -> tuple[str, Any]:
        """(key path, value) of what the document merges: `models`, `slices` or the one
        module of `modules`, whose parameters then sit between the slices' and the top level's."""
        ctx = self.ctx
        present = [k for k in ("models", "slices", "modules") if data.get(k)]
        if len(present) != 1:
            raise ctx.error(
                present[1] if len(present) > 1 else "",
                "expected exactly one of `models`, `slices` or `modules`" + (", not several" if present else ""),
                "mergekit refuses this too",
            )
        if present[0] != "modules":
            return present[0], data[present[0]]
        modules = data["modules"]
        if not isinstance(modules, dict) or len(modules) != 1 or "default" not in modules:
            raise ctx.error(
                "modules",
                "per-module merges of multi-module models are not supported: expected the one module `default`",
                "mergekit writes `modules: {default: ...}` for ordinary (one-module) models; "
                "other modules are parts of multi-module architectures, which mergepkg does not merge",
            )
        module, key = modules["default"], "modules.default"
        if not isinstance(module, dict):
            raise ctx.error(key, f"expected {{ slices: [...] }} or {{ models: [...] }}, got {show(module)}")
        ctx.only_keys(module, MODULE_KEYS, key)
        inner = [k for k in ("models", "slices") if module.get(k)]
        if len(inner) != 1:
            raise ctx.error(key, "expected exactly one of `models` or `slices`", "mergekit refuses this too")
        spec = METHODS[step.method]
        own = read_params(ctx, module.get("parameters"), spec, f"{key}.parameters", level="step")
        step.params = {name: layered(own.get(name), step.params.get(name)) for name in {**step.params, **own}}
        return f"{key}.{inner[0]}", module[inner[0]]

    def dtype(self, value: Any, key: str) -> str | None:
        """A mergekit dtype (`bfloat16`, `torch.bfloat16`) as the recipe's."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.ctx.error(key, f"expected a dtype name, got {show(value)}")
        name = value[len("torch.") :] if value.startswith("torch.") else value
        if name not in DTYPES:
            raise self.ctx.error(key, f"unsupported dtype {value!r}", "expected one of: " + ", ".join(DTYPES))
        return name

    def self_check(self, result: ImportResult) -> None:
        """Parse the recipe as `mergepkg build` will. Missing local folders are a warning (they may
        not exist yet); any other problem is a bug of this importer, reported as such."""
        try:
            result.recipe = parse_recipe(result.text, self.recipe_dir / "imported.toml")
        except SourceError as e:
            result.warnings.append(f"{e.key}: {e.message}" if e.key else e.message)
        except RecipeError as e:
            raise RecipeError(
                f"the imported recipe does not parse: {e.key}: {e.message}",
                file=self.ctx.display,
                hint="this is a bug of `mergepkg import`; please report it with the config",
            ) from e
