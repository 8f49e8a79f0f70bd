"""Reading a table of a recipe with located errors: the checks every part of the
parser shares (types, allowed keys, model references, dtypes).

tomllib keeps no positions, so an error names its key path and `locate.py` finds the
line in the text.
"""

from __future__ import annotations

import reprlib
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, TypeVar

from mergepkg.errors import MergepkgError, RecipeError, did_you_mean
from mergepkg.recipe.locate import locate
from mergepkg.recipe.names import NAME_HINT, is_name

DTYPES = ("float32", "float16", "bfloat16", "float64")
# A step's compute dtype may also be "auto": each tensor in its inputs' own dtype (promoted
# across them), as mergekit computes when its config sets no dtype.
AUTO = "auto"
T = TypeVar("T")


class TableReader:
    def __init__(self, text: str, path: Path):
        self.text, self.path = text, path
        self.display = str(path)
        self.models: set[str] = set()  # the names a model reference may use (sources and steps)
        self.refs: dict[str, str] = {}  # every model reference met -> the first key it is written at

    def line_of(self, key: str) -> int | None:
        return locate(self.text, key)

    def error(
        self, key: str, message: str, hint: str | None = None, cls: type[MergepkgError] = RecipeError
    ) -> MergepkgError:
        return cls(message, file=self.display, line=self.line_of(key), key=key or None, hint=hint)

    def expect(self, value: Any, kind: type[T], key: str, what: str) -> T:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"expected {what}, got {show(value)}")
        return value

    def only_keys(self, table: Iterable[str], allowed: Collection[str], key: str) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.error(where, f"unknown key {k!r}", self.unknown_key_hint(str(k), allowed))

    def unknown_key_hint(self, key: str, allowed: Collection[str]) -> str | None:
        return did_you_mean(key, allowed)

    def check_name(self, name: str, key: str) -> None:
        if not is_name(name):
            raise self.error(key, f"invalid name {name!r}", NAME_HINT)

    def model_ref(self, value: Any, key: str) -> str:
        """A reference to a source or step of the recipe, by name; `base+adapter` is the base
        with a LoRA adapter applied (an implicit step: recipe/adapters.py)."""
        self.expect(value, str, key, "the name of a source or step")
        for part in value.split("+"):
            if part not in self.models:
                within = f" (in {value!r})" if part != value else ""
                hint = did_you_mean(part, self.models) if part else 'write "base+adapter": two names joined by one +'
                raise self.error(key, f"no source or step named {part!r}{within}", hint)
        self.refs.setdefault(value, key)
        return value

    def dtype(self, value: Any, key: str, *, auto: bool = False) -> str:
        """A dtype name; `auto` admits "auto" (a compute dtype: the inputs' own)."""
        allowed = (*DTYPES, AUTO) if auto else DTYPES
        if value not in allowed:
            raise self.error(key, f"unknown dtype {value!r}", did_you_mean(str(value), allowed))
        return value


def show(value: Any) -> str:
    """A value as an error message shows it: its type and repr, cut short where long or deep."""
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {_SHORT.repr(value)}"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 4, 160, 160
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 12
