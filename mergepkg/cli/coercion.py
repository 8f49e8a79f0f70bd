"""Command-line values coerced without pydantic, where that changes nothing.

typer (0.2x) coerces each parameter's value through a pydantic `TypeAdapter`, made the
first time the parameter is processed: a `str` or `Path` option too, one left at its
default, and `--help`. Importing pydantic and building the adapters is 60-100 ms, a
third of `mergepkg validate` (docs/performance.md#startup). `install` has typer give
each parameter a `Plain` coercion instead: a str stays the str, a bool the bool, an
int default within its bounds the int, strings of a `list[str]` a list, an unset option None, a path is
checked by typer's own `coerce_cli_path` (exists, file or folder, ...), and any other
value or annotation goes to the coercion typer would have made, made then.

This replaces a function of typer's private API (`typer.core.build_runtime_param`, the
maker of each parameter's runtime coercion); with a typer that has none, `install`
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer.core
from typer import _click

try:
    from typer._param_types import coerce_cli_path  # what typer's own path coercion calls
except ImportError:  # a typer without pydantic coercion: nothing to replace
    coerce_cli_path = None  # type: ignore[assignment]


def install() -> None:
    """Make typer build `Plain` coercions (once; a no-op on a typer without them)."""
    original = getattr(typer.core, "build_runtime_param", None)
    if original is None or coerce_cli_path is None or isinstance(getattr(original, "__self__", None), _Maker):
        return
    typer.core.build_runtime_param = _Maker(original).build  # type: ignore[assignment]  # called as a RuntimeParam


class _Maker:
    def __init__(self, original: Callable[[Any], Any]):
        self.original = original

    def build(self, descriptor: Any) -> Plain:  # descriptor: typer._coercion.TypeDescriptor
        return Plain(descriptor, self.original)


class Plain:
    """A parameter's runtime coercion, called as typer calls its `RuntimeParam.coerce`."""

    def __init__(self, descriptor: Any, original: Callable[[Any], Any]):
        self.descriptor, self.original = descriptor, original
        self._typer: Any = None  # typer's own coercion, made on first need

    def coerce(self, value: Any, param: Any, ctx: _click.Context) -> Any:
        info, kind = self.descriptor.parameter_info, self.descriptor.annotation
        simple = info.parser is None and self.descriptor.file_annotation is None
        if simple and (param.multiple or param.nargs == -1) and kind == list[str]:
            if value is None:
                return ()
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
        if simple and not param.multiple and param.nargs == 1:
            if value is None:
                return None
            if (kind is str and isinstance(value, str)) or (kind is bool and isinstance(value, bool)):
                return value
            if kind is int and type(value) is int and _within(value, info.min, info.max):
                return value  # a default: typer's int coercion keeps it as it is
            path_type = info.path_type or kind
            given = isinstance(value, Path) or (isinstance(value, str) and value != "")
            if given and _is_path(kind) and _is_path(path_type):
                return coerce_cli_path(path_type(value), info, path_type=path_type, param=param, ctx=ctx)
        if self._typer is None:
            self._typer = self.original(self.descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)


def _within(value: int, low: Any, high: Any) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _is_path(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Path)
