"""TOML text -> `Recipe`, with every problem reported at its file, line and key path.

Parsing checks what the recipe alone can tell: structure, types, names, method
parameters and their ranges, references between steps and sources. What needs the
models themselves (layer counts, shapes, vocabularies) is checked by their layout
(`mergepkg/layout/`); cycles between steps by the plan (`plan.py`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mergepkg._toml import tomllib
from mergepkg.errors import RecipeError, SourceError, did_you_mean
from mergepkg.files import lock_file_of
from mergepkg.methods import get_method
from mergepkg.methods.spec import MethodSpec
from mergepkg.recipe.adapters import adapter_steps
from mergepkg.recipe.allow import allow_setting
from mergepkg.recipe.chat import chat_template_setting
from mergepkg.recipe.exports import exports_table
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import (
    Dependency,
    InputRef,
    Recipe,
    Slice,
    SliceSource,
    Source,
    Step,
)
from mergepkg.recipe.moe import moe_step
from mergepkg.recipe.names import NAME_HINT, InvalidName, canonical_name, package_name_problem
from mergepkg.recipe.params import param_table
from mergepkg.recipe.publish import publish_table
from mergepkg.recipe.tables import TableReader, show
from mergepkg.recipe.tokenizer import tokenizer_setting
from mergepkg.recipe.versions import Range, VersionError

STEP_KEYS = (
    "method",
    "base",
    "inputs",
    "slices",
    "params",
    "dtype",
    "out_dtype",
    "tokenizer",
    "chat_template",
    "config",
)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is not TOML
    except FileNotFoundError:
        raise SourceError("recipe file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the recipe: {e}", file=path) from None
    return parse_recipe(text, path)


def local_path(recipe_file: Path, rel: str) -> Path:
    """A `path` source's folder, `rel` to the recipe file: lexical, not .resolve(), so a
    `models -> /mnt/big/models` link stays `models/...` in the lock and the recipe's hash,
    as the recipe says it, on every machine."""
    return Path(os.path.normpath(recipe_file.parent.resolve() / rel))


def parse_recipe(text: str, path: str | Path) -> Recipe:
    if Path(path).suffix == ".lock":  # its lock, beside it with that suffix, would be the recipe itself
        raise RecipeError("a recipe's file name may not end in .lock", file=path, hint="rename it to end in .toml")
    return _Parser(text, Path(path)).recipe()


# s3://bucket[/prefix], hf://[datasets/|models/|spaces/]org/name[/prefix], file:///abs/path
REMOTE_URL = re.compile(r"(?P<scheme>s3|hf|file)://(?P<path>[A-Za-z0-9._~/+-]+)")


class _Parser(TableReader):
    # -- the whole file ---------------------------------------------------------
    def recipe(self) -> Recipe:
        try:
            data = tomllib.loads(self.text)
        except (tomllib.TOMLDecodeError, RecursionError) as e:
            line = getattr(e, "lineno", None) or _line_from_message(str(e))
            what = "arrays or tables nested too deeply" if isinstance(e, RecursionError) else getattr(e, "msg", e)
            raise RecipeError(f"invalid TOML: {what}", file=self.display, line=line) from None
        self.only_keys(data, ("package", "dependencies", "sources", "steps", "publish", "exports"), "")
        package = self.expect(data.get("package"), dict, "package", "a [package] table with name and version")
        known = ("name", "version", "description", "tags", "outputs", "seed", "allow", "remote")
        self.only_keys(package, known, "package")
        name = self.expect(package.get("name"), str, "package.name", "a string")
        if (problem := package_name_problem(name)) is not None:
            raise self.error("package.name", problem, NAME_HINT + "; a namespace before one '/' (team/name)")
        version = self.expect(package.get("version"), str, "package.version", 'a version string like "0.1.0"')
        seed = self.expect(package.get("seed", 0), int, "package.seed", "an integer")
        description = self.expect(package.get("description", ""), str, "package.description", "a string")
        tags = self.expect(package.get("tags", []), list, "package.tags", "a list of strings")
        for i, t in enumerate(tags):
            self.expect(t, str, f"package.tags[{i}]", "a string")
        allow = allow_setting(self, package.get("allow", []), "package.allow")
        remote = self.remote_url(package.get("remote"))
        self.dependencies = {}
        for n, v in self.expect(data.get("dependencies", {}), dict, "dependencies", "a table").items():
            dep = self.dependency(n, v)
            if dep.name == name.replace("_", "-"):
                raise self.error(
                    f"dependencies.{n}",
                    f"the recipe {name!r} depends on itself",
                    "use its steps directly: they are in this file",
                )
            self.dependencies[dep.name] = dep

        sources = {
            n: self.source(n, v) for n, v in self.expect(data.get("sources", {}), dict, "sources", "a table").items()
        }
        steps_table = self.expect(data.get("steps"), dict, "steps", "at least one [steps.NAME] table")
        if not steps_table:
            raise self.error("steps", "expected at least one [steps.NAME] table")
        for n in steps_table:
            if n in sources:
                raise self.error(f"steps.{key_name(n)}", f"{n!r} names both a source and a step", "rename one of them")
        self.models = set(sources) | set(steps_table)
        steps = {n: self.step(n, v) for n, v in steps_table.items()}
        steps |= adapter_steps(self, sources)  # `base+adapter` references: implicit steps (recipe/adapters.py)

        outputs = package.get("outputs")
        if outputs is None:
            used = {m for s in steps.values() for m in s.models}
            outputs = [n for n in steps if n not in used]
        else:
            self.expect(outputs, list, "package.outputs", "a list of step names")
            if not outputs:
                raise self.error(
                    "package.outputs",
                    "names no step",
                    "name the steps to write out, or leave `outputs` out for every step no other step reads",
                )
            for i, o in enumerate(outputs):
                if o not in steps:
                    raise self.error(f"package.outputs[{i}]", f"no step named {o!r}", did_you_mean(str(o), steps))
        return Recipe(
            name=name,
            version=version,
            path=self.path.resolve(),
            shown=self.path,
            sources=sources,
            steps=steps,
            outputs=tuple(outputs),
            seed=seed,
            text=self.text,
            dependencies=self.dependencies,
            description=description,
            tags=tuple(tags),
            allow=allow,
            remote=remote,
            publish=publish_table(self, data.get("publish"), steps),
            exports=exports_table(self, data.get("exports"), steps, list(outputs)),
        )

    def locked_folder(self, source: Source) -> bool:
        """Whether the lock beside the recipe pins `source` at its folder (as the lock names
        it, `Source.lock_path`): a folder that is
        gone is then taken at the lock's pin, and only a step built from it needs it (a
        build can take every step from a remote; docs/remote.md#substitution-build-plan-verify-and-eval)."""
        try:
            data = tomllib.loads(lock_file_of(self.path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return False
        records = data.get("source", [])
        rel = source.lock_path(self.path.parent.resolve())
        return isinstance(records, list) and any(
            isinstance(r, dict) and r.get("name") == source.name and r.get("path") == rel for r in records
        )

    def remote_url(self, value: Any) -> str | None:
        """`[package] remote`: where the recipe's built steps are pushed, as a URL a remote
        takes (docs/remote.md): s3://BUCKET[/PREFIX], hf://[datasets/]ORG/NAME[/PREFIX] or
        file:///ABSOLUTE/PATH; never credentials."""
        if value is None:
            return None
        url = self.expect(value, str, "package.remote", "a remote URL")
        m = REMOTE_URL.fullmatch(url)
        parts = [p for p in m["path"].split("/") if p] if m else []
        least = {"s3": 1, "file": 1, "hf": 3 if parts[:1] in (["datasets"], ["models"], ["spaces"]) else 2}
        if (
            not m
            or len(parts) < least[m["scheme"]]
            or (m["scheme"] == "file") != m["path"].startswith("/")
            or any(p in (".", "..") for p in parts)
        ):
            raise self.error(
                "package.remote",
                f"not a remote URL: {url!r}",
                "s3://BUCKET[/PREFIX], hf://datasets/ORG/NAME[/PREFIX] or file:///ABSOLUTE/PATH, with no "
                "credentials, revision or query (docs/remote.md)",
            )
        return url.rstrip("/")

    # -- dependencies ------------------------------------------------------------
    def dependency(self, name: str, value: Any) -> Dependency:
        key = f"dependencies.{name}"
        try:
            canon = canonical_name(name)
        except InvalidName as e:
            raise self.error(key, e.message, e.hint) from None
        if canon in self.dependencies:
            raise self.error(
                key,
                f"{name!r} names the same package as another dependency",
                "`-` and `_` are the same in package names",
            )
        if isinstance(value, str):
            value = {"version": value}
        self.expect(value, dict, key, 'a version range like "^1.2" or { version = "^1.2", registry = "team" }')
        self.only_keys(value, ("version", "registry"), key)
        rng = self.expect(
            value.get("version"), str, f"{key}.version" if "version" in value else key, 'a version range like "^1.2"'
        )
        try:
            Range.parse(rng)
        except VersionError as e:
            raise self.error(
                f"{key}.version" if len(value) > 1 else key, str(e), "see docs/registry.md#names-and-versions"
            ) from None
        registry = value.get("registry")
        if registry is not None:
            self.expect(registry, str, f"{key}.registry", "the name of a configured registry")
        return Dependency(canon, rng, registry)

    # -- sources -----------------------------------------------------------------
    def source(self, name: str, table: Any) -> Source:
        key = f"sources.{key_name(name)}"
        self.check_name(name, key)
        self.expect(
            table,
            dict,
            key,
            '{ hf = "org/name" }, { path = "./folder" }, { recipe = "x.toml", step = "s" } '
            'or { dependency = "name", step = "s" }',
        )
        self.only_keys(table, ("hf", "revision", "path", "recipe", "dependency", "step"), key)
        kinds = [k for k in ("hf", "path", "recipe", "dependency") if k in table]
        if len(kinds) != 1:
            raise self.error(
                key,
                "expected exactly one of `hf`, `path`, `recipe` or `dependency`",
                'e.g. { hf = "org/name", revision = "main" }, { path = "./models/x" }, '
                '{ recipe = "../other.toml", step = "merged" }, { dependency = "pkg", step = "merged" }',
            )
        allowed = {"hf": "revision", "recipe": "step", "dependency": "step", "path": None}[kinds[0]]
        for extra in ("revision", "step"):
            if extra in table and extra != allowed:
                raise self.error(f"{key}.{extra}", f"a {kinds[0]} source has no `{extra}`", f"remove `{extra}`")
        if kinds[0] == "dependency":
            dep = self.expect(table["dependency"], str, f"{key}.dependency", "a package named in [dependencies]")
            step = self.expect(table.get("step"), str, f"{key}.step", "the name of a step in that recipe")
            canon = dep.replace("_", "-")
            if canon not in self.dependencies:
                raise self.error(
                    f"{key}.dependency",
                    f"{dep!r} is not in [dependencies]",
                    did_you_mean(canon, self.dependencies) or f'add it: [dependencies] {dep} = "^1.0"',
                )
            return Source(name=name, dependency=canon, step=step)
        if kinds[0] == "recipe":
            rel = self.expect(table["recipe"], str, f"{key}.recipe", "a recipe file path")
            step = self.expect(table.get("step"), str, f"{key}.step", "the name of a step in that recipe")
            other = (self.path.parent / rel).resolve()
            if not other.is_file():
                raise self.error(
                    f"{key}.recipe",
                    f"recipe file not found: {other}",
                    "paths are relative to this recipe file",
                    cls=SourceError,
                )
            return Source(name=name, recipe=other, step=step)
        if kinds[0] == "path":
            rel = self.expect(table["path"], str, f"{key}.path", "a folder path")
            folder = local_path(self.path, rel)
            source = Source(name=name, path=folder, absolute=Path(rel).is_absolute())
            if not folder.is_dir() and not self.locked_folder(source):
                raise self.error(
                    f"{key}.path",
                    f"model folder not found: {folder}",
                    "paths are relative to the recipe file",
                    cls=SourceError,
                )
            return source
        repo = self.expect(table["hf"], str, f"{key}.hf", 'a repo id like "org/name"')
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or ".." in repo:
            raise self.error(f"{key}.hf", f"not a Hugging Face repo id: {repo!r}", 'expected "org/name"')
        revision = self.expect(table.get("revision", "main"), str, f"{key}.revision", "a branch, tag or commit")
        return Source(name=name, hf=repo, revision=revision)

    # -- steps -------------------------------------------------------------------
    def step(self, name: str, table: Any) -> Step:
        key = f"steps.{key_name(name)}"
        self.check_name(name, key)
        self.expect(table, dict, key, "a table")
        if table.get("method") == "moe":  # experts and prompts instead of inputs
            return moe_step(self, name, table)
        self.only_keys(table, STEP_KEYS, key)
        method_name = self.expect(table.get("method"), str, f"{key}.method", "a method name (see `mergepkg methods`)")
        try:
            spec = get_method(method_name)
        except RecipeError as e:  # located only when wrong: locating every step's method made parsing quadratic
            raise e.at(file=self.display, line=self.line_of(f"{key}.method"), key=f"{key}.method") from None

        base = table.get("base")
        if base is not None:
            base = self.model_ref(base, f"{key}.base")
            if base == name:
                raise self.error(f"{key}.base", f"step {name!r} cannot take itself as base")
        if spec.base == "required" and base is None:
            raise self.error(key, f"method {spec.name!r} needs a base model", 'add base = "<source or step>"')
        if spec.base == "none" and base is not None:
            raise self.error(
                f"{key}.base",
                f"method {spec.name!r} takes no base model",
                "remove `base` and list every model under `inputs`",
            )

        params = param_table(
            self,
            self.expect(table.get("params", {}), dict, f"{key}.params", "a table"),
            spec,
            f"{key}.params",
            per_input=False,
        )
        inputs = tuple(
            self.input(v, spec, f"{key}.inputs[{i}]")
            for i, v in enumerate(self.expect(table.get("inputs", []), list, f"{key}.inputs", "a list of inputs"))
        )
        slices = tuple(
            self.slice(v, spec, f"{key}.slices[{i}]")
            for i, v in enumerate(self.expect(table.get("slices", []), list, f"{key}.slices", "a list of slices"))
        )
        if bool(inputs) == bool(slices):
            raise self.error(
                key,
                "expected either `inputs` or `slices`" + (", not both" if inputs else ""),
                "`inputs` merges whole models; `slices` merges ranges of layers",
            )
        for i, ref in enumerate(inputs):
            if ref.model == name:
                raise self.error(f"{key}.inputs[{i}]", f"step {name!r} cannot take itself as input")
            if ref.model == base:
                raise self.error(
                    f"{key}.inputs[{i}]",
                    f"{base!r} is already the base",
                    "the base is merged implicitly; remove it from `inputs`",
                )
        if inputs:
            self.check_count(spec, len(inputs), f"{key}.inputs")
            for p in spec.params:
                if p.required and p.name not in params:
                    for i, ref in enumerate(inputs):
                        if p.name not in ref.params:
                            what = f"input {ref.model!r}" if p.per_input else "the step"
                            raise self.error(
                                f"{key}.inputs[{i}]" if p.per_input else f"{key}.params",
                                f"missing parameter {p.name!r} for {what}",
                                f"set it on the input or in [{key}.params]",
                            )
        for si, sl in enumerate(slices):
            count = sum(1 for s in sl.sources if s.model != base)
            if spec.base == "required" and all(s.model != base for s in sl.sources):
                raise self.error(
                    f"{key}.slices[{si}].sources",
                    f"method {spec.name!r} needs the base {base!r} among each slice's sources",
                )
            self.check_count(spec, count, f"{key}.slices[{si}].sources", in_slice=True)
            for p in spec.params:
                if p.required and p.name not in params and p.name not in sl.params:
                    for j, src in enumerate(sl.sources):
                        if (not p.per_input or src.model != base) and p.name not in src.params:
                            raise self.error(
                                f"{key}.slices[{si}].sources[{j}]",
                                f"missing parameter {p.name!r}",
                                f"set it on the source, the slice, or in [{key}.params]",
                            )

        dtype = self.dtype(table.get("dtype", "float32"), f"{key}.dtype", auto=True)
        out_dtype = self.dtype(table["out_dtype"], f"{key}.out_dtype") if "out_dtype" in table else None
        config = self.config_model(table.get("config"), f"{key}.config", name, base)
        models = Step(name=name, method=spec.name, base=base, inputs=inputs, slices=slices, config=config).models
        tokenizer, tokens, pad = tokenizer_setting(self, table.get("tokenizer"), f"{key}.tokenizer", models, base)
        chat_template = chat_template_setting(self, table.get("chat_template"), f"{key}.chat_template", models)
        return Step(
            name=name,
            method=spec.name,
            base=base,
            inputs=inputs,
            slices=slices,
            params=params,
            dtype=dtype,
            out_dtype=out_dtype,
            tokenizer=tokenizer,
            tokens=tokens,
            pad_to_multiple_of=pad,
            chat_template=chat_template,
            config=config,
        )

    def config_model(self, value: Any, key: str, name: str, base: str | None) -> str | None:
        """`config`: a model (read, not merged unless the step merges it) whose config the output takes."""
        if value is None:
            return None
        model = self.model_ref(value, key)
        if model == name:
            raise self.error(key, f"step {name!r} cannot take its config from itself")
        if base is not None and model != base:
            raise self.error(
                key,
                f"the config of a step with a base is the base's ({base!r})",
                "remove `config`, or set it to the base",
            )
        return model

    def check_count(self, spec: MethodSpec, count: int, key: str, *, in_slice: bool = False) -> None:
        if (problem := spec.count_problem(count, in_slice=in_slice)) is not None:
            raise self.error(key, problem)

    def input(self, value: Any, spec: MethodSpec, key: str) -> InputRef:
        if isinstance(value, str):
            return InputRef(model=self.model_ref(value, key))
        self.expect(value, dict, key, '{ model = "<name>", ... } or a model name')
        if "model" not in value:
            raise self.error(key, "missing `model`", 'e.g. { model = "math", weight = 0.5 }')
        model = self.model_ref(value["model"], f"{key}.model")
        params = {k: v for k, v in value.items() if k != "model"}
        return InputRef(model=model, params=param_table(self, params, spec, key, per_input=True))

    def slice(self, value: Any, spec: MethodSpec, key: str) -> Slice:
        self.expect(value, dict, key, "a table with `sources`")
        self.only_keys(value, ("sources", "params"), key)
        raw = self.expect(value.get("sources"), list, f"{key}.sources", "a list of { model, layers }")
        if not raw:
            raise self.error(f"{key}.sources", "expected at least one source")
        sources = []
        for j, src in enumerate(raw):
            skey = f"{key}.sources[{j}]"
            self.expect(src, dict, skey, '{ model = "<name>", layers = [start, end] }')
            model = self.model_ref(src.get("model"), f"{skey}.model")
            layers = src.get("layers")
            if (
                not isinstance(layers, list)
                or len(layers) != 2
                or not all(type(x) is int for x in layers)
                or not 0 <= layers[0] < layers[1]
            ):
                raise self.error(f"{skey}.layers", f"expected [start, end) with 0 <= start < end, got {show(layers)}")
            params = {k: v for k, v in src.items() if k not in ("model", "layers")}
            sources.append(
                SliceSource(
                    model=model,
                    layers=(layers[0], layers[1]),
                    params=param_table(self, params, spec, skey, per_input=True),
                )
            )
        lengths = {s.layers[1] - s.layers[0] for s in sources}
        if len(lengths) > 1:
            raise self.error(
                f"{key}.sources", f"sources of one slice must span the same number of layers, got {sorted(lengths)}"
            )
        params = param_table(
            self,
            self.expect(value.get("params", {}), dict, f"{key}.params", "a table"),
            spec,
            f"{key}.params",
            per_input=False,
        )
        return Slice(sources=tuple(sources), params=params)

    # -- parameter settings ---------------------------------------------------------


def _line_from_message(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None
