"""A pitfall warning: a code, a message, a hint, and where in the recipe it points.

Checks that know the recipe place what they find at once; those below it (a layout,
the engine) name the step and a key path inside it (`inputs[1]`), and `settle` places
them in the file that step is written in, as errors are placed (errors.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace

from mergepkg._toml import tomllib
from mergepkg.errors import BuildError, place
from mergepkg.recipe.allow import CODES
from mergepkg.recipe.flatten import SEP
from mergepkg.recipe.locate import locate
from mergepkg.recipe.model import Recipe, Step


@dataclass(frozen=True)
class Pitfall:
    """One warning. `step` and `at` (a key path inside the step, "" for the step itself)
    say where it points; `file`, `line` and `key` (the whole key path in `file`) are
    filled in by `place`."""

    code: str  # "MP101", ... (recipe/allow.py)
    message: str
    hint: str | None = None
    step: str | None = None  # the step's name in the recipe being built
    at: str = ""
    tensor: str | None = None  # a tensor it was found in, for warnings about values
    file: str | None = None
    line: int | None = None
    key: str | None = None

    @property
    def title(self) -> str:
        """What the code warns about, in a few words."""
        return CODES[self.code]

    @property
    def where(self) -> str:
        """`recipe.toml:14: steps.x.inputs[1]` (the parts that are known), as errors say it."""
        return place(self.file, self.line, self.key)

    def __str__(self) -> str:
        text = f"{self.code}: {self.where}: {self.message}" if self.where else f"{self.code}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def place(self, recipe: Recipe) -> Pitfall:
        """This warning with its file, line and key: in the file its step is written in."""
        if self.file is not None or self.step is None or self.step not in recipe.steps:
            return self
        written = recipe.written(self.step)
        key = f"{written.key}.{self.at}" if self.at else written.key  # `steps."soup.v2"`: quoted
        return replace(self, file=str(written.path), line=locate(written.text, key), key=key)


class WarningsDenied(BuildError):
    """`--deny-warnings` and a recipe that shows warnings: nothing is built or written."""


def deny(found: Iterable[Pitfall], outcome: str = "nothing was built") -> None:
    """Raise `WarningsDenied`, in one line, when `found` (settled warnings) is not empty;
    `outcome` says what the command did not do."""
    found = list(found)
    if not found:
        return
    codes = sorted({p.code for p in found})
    many = "s" if len(found) > 1 else ""
    raise WarningsDenied(
        f"{len(found)} warning{many} ({', '.join(codes)}) and --deny-warnings: {outcome}",
        hint=f'fix what they point at, or silence a code for this recipe: [package] allow = ["{codes[0]}"]',
    )


def allowed(recipe: Recipe, step: str | None) -> frozenset[str]:
    """The codes silenced for a step: the recipe's `allow`, and for a step imported from
    another recipe file that file's too (its author allowed them where the step is written)."""
    own = frozenset(recipe.allow)
    origin = recipe.steps[step].origin if step is not None and step in recipe.steps else None
    return own if origin is None else own | _file_allow(origin.text)


@functools.lru_cache(maxsize=64)
def _file_allow(text: str) -> frozenset[str]:
    """`[package] allow` of a recipe file's text (parsed once already, so well-formed)."""
    try:
        codes = tomllib.loads(text).get("package", {}).get("allow", [])
    except tomllib.TOMLDecodeError:
        return frozenset()
    return frozenset(c for c in codes if isinstance(c, str)) if isinstance(codes, list) else frozenset()


def settle(found: Iterable[Pitfall], recipe: Recipe) -> list[Pitfall]:
    """The warnings a recipe shows: those whose code it does not allow, placed, each once."""
    out: list[Pitfall] = []
    for p in found:
        if p.code in allowed(recipe, p.step):
            continue
        p = p.place(recipe)
        if p not in out:
            out.append(p)
    return out


def model_at(step: Step, model: str) -> str:
    """The key path, inside `step`, of the first place `step` names `model`."""
    for i, ref in enumerate(step.inputs):
        if ref.model == model:
            return f"inputs[{i}]"
    for i, sl in enumerate(step.slices):
        for j, src in enumerate(sl.sources):
            if src.model == model:
                return f"slices[{i}].sources[{j}]"
    if step.moe is not None:
        for i, e in enumerate(step.moe.experts):
            if e.model == model:
                return f"experts[{i}]"
    return "base" if model == step.base else ""


def written_name(step: Step, model: str) -> str:
    """`model` as the file `step` is written in names it, for messages that point there.
    Flattening (recipe/flatten.py) renames what a step from another file reads under its
    source's prefix (`soup::ft1`), and a step imported by the step's own file is read as
    `source::step`: both names no one wrote. Names hold no `:`, so dropping the step's
    prefix and then anything from `::` on gives the name in the file."""
    origin = step.origin
    prefix = step.name[: len(step.name) - len(origin.name)] if origin is not None else ""
    return model.removeprefix(prefix).split(SEP)[0]
