"""Steps of other recipe files: `{ recipe = "../other.toml", step = "x" }` sources.

`flatten` loads each referenced recipe (recursively) and adds its sources and steps to
the referring recipe under `<source name>::<name>`, rewriting references, so the plan,
keys and store see one DAG. Steps keep their `origin` so errors point into their own
file. Keys never include names, so an imported step has the same key, and the same
artifact, as when its own recipe builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from mergepkg.errors import PlanError, did_you_mean
from mergepkg.recipe.chat import template_kind
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import InputRef, Origin, Recipe, Slice, SliceSource, Step
from mergepkg.recipe.names import canonical_name
from mergepkg.recipe.parse import load_recipe

SEP = "::"


def _renamed(step: Step, name: str, rename: Callable[[str], str], origin: Origin | None) -> Step:
    return replace(
        step,
        name=name,
        base=rename(step.base) if step.base else None,
        config=rename(step.config) if step.config else None,
        inputs=tuple(InputRef(rename(i.model), i.params) for i in step.inputs),
        slices=tuple(
            Slice(tuple(SliceSource(rename(s.model), s.layers, s.params) for s in sl.sources), sl.params)
            for sl in step.slices
        ),
        tokenizer=_tokenizer(step, rename),
        tokens=tuple(replace(t, model=rename(t.model) if t.model else None) for t in step.tokens),
        moe=step.moe.renamed(rename) if step.moe else None,
        origin=step.origin or origin,
        chat_template=_chat_template(step, rename),
    )


def _chat_template(step: Step, rename: Callable[[str], str]) -> str | None:
    """The step's chat template setting under new model names: a model's name follows its model."""
    if step.chat_template is not None and template_kind(step.chat_template, step.models) == "model":
        return rename(step.chat_template)
    return step.chat_template


def _tokenizer(step: Step, rename: Callable[[str], str]) -> str | None:
    """The step's tokenizer setting under new model names, naming the same model."""
    if step.tokenizer_union:
        return step.tokenizer
    if step.tokenizer in (None, "base"):
        # without a base, "base" names an input called base; renamed, the name would not
        return rename("base") if not step.base and "base" in step.models else step.tokenizer
    return rename(step.tokenizer)


def flatten(
    recipe: Recipe,
    _chain: tuple[Path, ...] = (),
    bind: Callable[[Recipe], Recipe] | None = None,
    loaded: Mapping[Path, Recipe] | None = None,
) -> Recipe:
    """`bind` (registry/dependencies.py `Dependencies.bind`) points `dependency` sources
    at their installed recipe files, here and in every recipe loaded on the way.
    `loaded`: recipe files already parsed, by path (`Dependencies.loaded`: resolving reads
    every imported file for its `[dependencies]`), taken instead of parsing them again."""
    bind = bind or _unbound
    loaded = loaded or {}
    packages = {n: s.dependency for n, s in recipe.sources.items() if s.dependency}  # before `bind` forgets them
    recipe = bind(recipe)
    imports = {n: s for n, s in recipe.sources.items() if s.recipe is not None}
    if not imports:
        return recipe
    chain = (*_chain, recipe.path)
    sources = {n: s for n, s in recipe.sources.items() if s.recipe is None}
    steps: dict[str, Step] = {}
    alias: dict[str, str] = {}
    for name, src in imports.items():
        key = f"sources.{key_name(name)}"
        file, wanted = src.recipe, src.step
        assert file is not None and wanted is not None  # an import; the parser gave it a step
        if file in chain:
            files = " -> ".join(str(p) for p in (*chain[chain.index(file) :], file))
            raise PlanError(
                f"recipes import each other: {files}", file=str(recipe.display), line=recipe.line_of(key), key=key
            )
        other = flatten(loaded[file] if file in loaded else load_recipe(file), chain, bind, loaded)
        if wanted not in other.steps:
            raise PlanError(
                f"{_label(other, packages.get(name))} has no step {wanted!r}",
                file=str(recipe.display),
                line=recipe.line_of(f"{key}.step"),
                key=f"{key}.step",
                hint=did_you_mean(wanted, other.steps),
            )
        prefix = name + SEP
        for n, s in other.sources.items():
            sources[prefix + n] = replace(s, name=prefix + n)
        for n, st in other.steps.items():
            origin = Origin(other.path, other.text, n, other.seed)
            steps[prefix + n] = _renamed(st, prefix + n, _prefixed(prefix), origin)
        alias[name] = prefix + wanted
    own = {n: _renamed(st, n, lambda m: alias.get(m, m), st.origin) for n, st in recipe.steps.items()}
    return replace(recipe, sources=sources, steps={**steps, **own})


def _label(other: Recipe, package: str | None) -> str:
    """What errors call an imported recipe: a dependency by its package and version (its
    installed file's name is a cache detail), a recipe file by its file name."""
    return f"{canonical_name(package)}@{other.version}" if package else other.path.name


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda name: prefix + name


def _unbound(recipe: Recipe) -> Recipe:
    for name, src in recipe.sources.items():
        if src.dependency:
            error = PlanError(
                f"dependency {src.dependency!r} is not resolved here",
                hint="this command needs the registry: run `mergepkg lock`",
            )
            raise recipe.locate(error, f"sources.{key_name(name)}")
    return recipe
