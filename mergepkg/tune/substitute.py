"""A trial's recipe: the recipe's TOML with the searched numbers put in at their paths.

The recipe is read as a TOML document, the values set at their key paths, and the
document written back and parsed as the recipe file it came from (so relative paths
mean what they meant). Keys ignore TOML layout, names and comments, so every step
the substitution does not touch keeps its key and is reused from the store; only the
tuned step and the steps after it get new keys.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from mergepkg._toml import tomllib
from mergepkg.errors import RecipeError
from mergepkg.recipe.locate import segments
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.parse import local_path, parse_recipe
from mergepkg.recipe.plan import make_plan
from mergepkg.tune.spec import Dimension, TuneSpec, representable

Value = float | list[float]


@dataclass(frozen=True)
class Base:
    """The recipe a search starts from: its file, text and TOML document."""

    path: Path
    text: str
    doc: dict


def read_base(spec: TuneSpec) -> Base:
    """The recipe `tune.recipe` names, read as `load_recipe` reads it (UTF-8, a byte-order
    mark dropped); a file it cannot read, or that is not TOML, is an error at that key."""
    try:
        text = spec.recipe.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise spec.error(f"recipe not found: {spec.recipe}", "tune.recipe") from None
    except UnicodeDecodeError as e:
        raise spec.error(f"{spec.recipe}: not UTF-8 text: {e.reason} at byte {e.start}", "tune.recipe") from None
    except OSError as e:  # a folder
        raise spec.error(f"cannot read the recipe {spec.recipe}: {e.strerror}", "tune.recipe") from None
    return Base(spec.recipe, text, _document(spec, text))


def _document(spec: TuneSpec, text: str) -> dict:
    """The recipe's TOML document. TOML that is not valid is refused as the recipe's parser
    refuses it (`r.toml:3: invalid TOML: ...`), placed at `tune.recipe`."""
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        try:
            parse_recipe(text, spec.recipe)
        except RecipeError as e:
            raise spec.locate(e, "tune.recipe") from None
        raise  # the parser reads the same TOML: not reached


def _parent(doc: dict, path: str) -> tuple[Any, str | int]:
    """The container holding `path`'s last segment; a missing `params` table is made."""
    *head, last = segments(path)
    node: Any = doc
    for seg in head:
        if isinstance(seg, int):
            if not isinstance(node, list) or seg >= len(node):
                raise KeyError(path)
            node = node[seg]
        elif isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, dict) and seg == "params":
            node = node.setdefault("params", {})
        else:
            raise KeyError(path)
    if not isinstance(node, dict) or isinstance(last, int):
        raise KeyError(path)
    return node, last


def current(base: Base, dims: tuple[Dimension, ...]) -> list[float | None]:
    """Each dimension's value as the recipe writes it (None where it does not)."""
    out: list[float | None] = []
    scratch = copy.deepcopy(base.doc)  # `_parent` may add an empty `params` table: never to the base's
    for d in dims:
        node, last = _parent(scratch, d.path)
        value = node.get(last)
        if d.point is None:
            out.append(float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None)
        else:
            ok = isinstance(value, list) and len(value) == d.points
            out.append(float(value[d.point]) if ok else None)
    return out


def values(dims: tuple[Dimension, ...], unit: list[float], digits: int) -> dict[str, Value]:
    """The recipe values of a point of the unit cube: each dimension scaled to its range,
    rounded, and held within it (rounding can leave it: 0.13 of [0.12, 0.14] is 0.1 at one
    decimal); the points of a gradient gathered into its list."""
    out: dict[str, Value] = {}
    for d, u in zip(dims, unit):
        lo, hi = representable(d.low, d.high, digits)
        v = min(max(round(d.low + min(max(u, 0.0), 1.0) * (d.high - d.low), digits), lo), hi)
        if d.point is None:
            out[d.path] = v
        else:
            listed = out.setdefault(d.path, [])
            assert isinstance(listed, list)
            listed.append(v)
    return out


def substituted(base: Base, chosen: dict[str, Value]) -> dict:
    doc = copy.deepcopy(base.doc)
    for path, value in chosen.items():
        node, last = _parent(doc, path)
        node[last] = value
    return doc


def trial_recipe(base: Base, chosen: dict[str, Value]) -> Recipe:
    """The recipe with `chosen` values, parsed as if it were the recipe file."""
    return parse_recipe(tomli_w.dumps(substituted(base, chosen)), base.path)


def relocated_text(base: Base, chosen: dict[str, Value], folder: Path, header: str) -> str:
    """The recipe with `chosen` values as a file in `folder`: local `path` and `recipe`
    sources rewritten relative to it, a comment `header` on top."""
    doc = substituted(base, chosen)
    for source in doc.get("sources", {}).values():
        for k in ("path", "recipe"):
            if isinstance(source, dict) and isinstance(source.get(k), str) and not Path(source[k]).is_absolute():
                target = local_path(base.path, source[k])  # where the recipe's parser finds it
                source[k] = Path(os.path.relpath(target, folder.resolve())).as_posix()
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + tomli_w.dumps(doc)


def _check_evaluated(spec: TuneSpec, recipe: Recipe) -> None:
    """The scored step is the searched one or made from it: else every trial builds and
    scores the same model, and the search has nothing to go by."""
    if spec.step not in make_plan(recipe, (spec.evaluate,)).order:
        plan = make_plan(recipe)
        after = [s for s in recipe.steps if s == spec.step or spec.step in plan.upstream(s)]
        raise spec.error(
            f"step {spec.evaluate!r} is not made from step {spec.step!r}: every trial would score the same",
            "tune.evaluate",
            f"evaluate {spec.step!r} or a step made from it: {', '.join(after)}",
        )


def _check_path(spec: TuneSpec, scratch: dict, path: str) -> None:
    """`path` names a number (or a gradient) the recipe has, or may have, at its place in
    `scratch`, a copy of the recipe's document (an empty `params` table may be added)."""
    key = f"tune.space.{path}"
    if isinstance(segments(path)[-1], int):  # an item of a list: `t[1]`
        raise spec.error(
            f"{path} names an item of a list, not a parameter",
            key,
            f'a condition\'s number is its value: "{path}.value"; a gradient is searched whole, one range per point',
        )
    try:
        node, last = _parent(scratch, path)
    except KeyError:
        raise spec.error(
            f"the recipe has no {path}", key, "an input must be written { model = ..., ... } to take a parameter"
        ) from None
    value = node.get(last)
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        raise spec.error(
            f"{path} is a list of conditions in the recipe ([[...]] tables of filter and value), not a number",
            key,
            f'search one condition\'s value: "{path}[0].value"',
        )
    if isinstance(value, str | dict | bool):
        raise spec.error(f"{path} is not a number in the recipe", key)


def check_space(spec: TuneSpec, base: Base) -> None:
    """Every path names a number (or gradient of that many points) of the tuned step, and
    the recipe parses with every dimension at its low and at its high end."""
    try:
        recipe = parse_recipe(base.text, base.path)
    except RecipeError as e:
        raise e.at(file=spec.recipe) from None
    for name in (spec.step, spec.evaluate):
        if name not in recipe.steps:
            key = "tune.step" if name == spec.step else "tune.evaluate"
            raise spec.error(f"the recipe has no step {name!r}", key, f"steps: {', '.join(recipe.steps)}")
    _check_evaluated(spec, recipe)
    scratch = copy.deepcopy(base.doc)  # one copy for every path: a copy each made setup quadratic
    for d in spec.space:
        _check_path(spec, scratch, d.path)
    for end in (0.0, 1.0):
        try:
            trial_recipe(base, values(spec.space, [end] * len(spec.space), spec.digits))
        except RecipeError as e:
            where = f"tune.space.{e.key}" if e.key and e.key.startswith("steps.") else "tune.space"
            raise spec.error(f"at the {'low' if end == 0 else 'high'} end of the space: {e.message}", where) from None
