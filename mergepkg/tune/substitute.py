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
from mergepkg.tune.spec import Dimension, TuneSpec, representable

Value = float | list[float]


@dataclass(frozen=True)
class Base:
    """The recipe a search starts from: its file, text and TOML document."""

    path: Path
    text: str
    doc: dict


def read_base(spec: TuneSpec) -> Base:
    try:
        text = spec.recipe.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise spec.error(f"recipe not found: {spec.recipe}", "tune.recipe") from None
    return Base(spec.recipe, text, tomllib.loads(text))


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
    for d in dims:
        node, last = _parent(copy.deepcopy(base.doc), d.path)
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
    for d in spec.space:
        key = f"tune.space.{d.path}"
        try:
            node, last = _parent(copy.deepcopy(base.doc), d.path)
        except KeyError:
            raise spec.error(
                f"the recipe has no {d.path}", key, "an input must be written { model = ..., ... } to take a parameter"
            ) from None
        if isinstance(node.get(last), str | dict | bool):
            raise spec.error(f"{d.path} is not a number in the recipe", key)
    for end in (0.0, 1.0):
        try:
            trial_recipe(base, values(spec.space, [end] * len(spec.space), spec.digits))
        except RecipeError as e:
            where = f"tune.space.{e.key}" if e.key and e.key.startswith("steps.") else "tune.space"
            raise spec.error(f"at the {'low' if end == 0 else 'high'} end of the space: {e.message}", where) from None
