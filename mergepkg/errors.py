"""The error tree. Every error says where it happened and, where we can, what to do.

Errors carry fields (file, line, key path, hint) rather than pre-baked strings, so the
CLI can render them and tests can assert on them. Each also subclasses the builtin a
Python caller would expect (ValueError for bad input, FileNotFoundError for a missing
path), as huggingface_hub does.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

Self = TypeVar("Self", bound="MergepkgError")


def place(file: str | None, line: int | None, key: str | None, tensor: str | None = None) -> str:
    """`file:line: key: tensor`, the parts that are known: where an error or a warning points."""
    parts = []
    if file:
        parts.append(f"{file}:{line}" if line else file)
    parts += [p for p in (key, tensor) if p]
    return ": ".join(parts)


class MergepkgError(Exception):
    """Base of every error mergepkg raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
        tensor: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.hint = hint
        self.tensor = tensor  # the output tensor being merged, for errors of the engine

    def at(
        self: Self,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
        tensor: str | None = None,
    ) -> Self:
        """This error, placed where it happened as far as its raiser could not say: a key
        path (with its file and line) and a tensor fill in only what is missing. An error
        in another file (a task file a tune file names) keeps its file and line in front
        of its message."""
        if key is not None and self.key is None:
            if self.file is not None and file is not None and str(file) != self.file:
                # where inside what the key names, its line kept: `val.jsonl:3: expected ...`
                self.message = f"{place(self.file, self.line, None)}: {self.message}"
            self.file, self.line, self.key = (str(file) if file is not None else self.file), line, key
        if tensor is not None and self.tensor is None:
            self.tensor = tensor
        return self

    @property
    def where(self) -> str:
        """`recipe.toml:14: steps.x.inputs[1].density` (the parts that are known)."""
        return place(self.file, self.line, self.key, self.tensor)

    @property
    def located(self) -> str:
        """The message after where it happened, in one line (no hint)."""
        return f"{self.where}: {self.message}" if self.where else self.message

    def __str__(self) -> str:
        return f"{self.located}\n  hint: {self.hint}" if self.hint else self.located


class RecipeError(MergepkgError, ValueError):
    """The recipe file is not valid: syntax, types, ranges, unknown names."""


class PlanError(MergepkgError, ValueError):
    """The steps do not form a valid DAG (cycles, missing references)."""


class CycleError(PlanError):
    def __init__(self, cycle: list[str], **kw):
        self.cycle = cycle
        super().__init__("steps form a cycle: " + " -> ".join(cycle + cycle[:1]), **kw)


class SourceError(MergepkgError, FileNotFoundError):
    """A source model cannot be found, read or fetched."""


class LockError(MergepkgError, ValueError):
    """`--locked` / `--frozen` and a lock that does not match the recipe."""


class ModelMismatchError(MergepkgError, ValueError):
    """Inputs of a step disagree: architectures, tensor names or shapes."""


class MergeError(MergepkgError, ArithmeticError):
    """A method met values it cannot merge (e.g. linear weights summing to zero)."""


class BuildError(MergepkgError, RuntimeError):
    """Building a step failed for a reason that is not the recipe's fault."""


class ExportError(MergepkgError, RuntimeError):
    """A built step that cannot be exported (mergepkg/export/): no converter, or one that refuses the model."""


class StoreError(MergepkgError, LookupError):
    """The store has no artifact that matches what was asked for."""


class DiskError(MergepkgError, OSError):
    """The machine refused a read or write: a full disk, a quota or a file size limit
    reached, a read-only file system, an I/O error, a permission (`disk_error`). Not the
    recipe's fault, nor a bug."""


# what to do about each refusal; any other OSError reaching the CLI is a bug, with its traceback
DISK_HINTS = {
    errno.ENOSPC: "free some space (`mergepkg cache gc` removes what no lock uses from the store in "
    "$MERGEPKG_HOME), or point MERGEPKG_HOME or --out at a disk with room",
    errno.EDQUOT: "your disk quota is used up: free some space or use another disk",
    errno.EFBIG: "a limit on the size of files is set for this shell (`ulimit -f`): raise it",
    errno.EROFS: "the file system is read-only: point MERGEPKG_HOME or --out at a writable one",
    errno.EIO: "the device reported an I/O error: check the disk",
    errno.EACCES: "this user may not read or write it: check its owner and mode"
    " (a store shared by users needs their group's access)",
    errno.EPERM: "this user may not change it: check its owner and mode",
}


def disk_error(e: OSError, doing: str | None = None) -> DiskError | None:
    """`e` as a DiskError (`doing`: what was being written, for the message) where it is
    one of the machine's refusals (DISK_HINTS); None for any other OSError."""
    if isinstance(e, DiskError):
        return e
    if e.errno not in DISK_HINTS:
        return None
    message = e.strerror or str(e)
    if doing:
        message += f" while {doing}"
    if name := e.filename2 or e.filename:  # a copy's or rename's destination, not its source
        message += f" ({name})"
    disk = DiskError(message, hint=DISK_HINTS[e.errno])
    disk.errno, disk.strerror, disk.filename = e.errno, e.strerror, e.filename
    return disk


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest known word, or None when nothing is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if choices and len(choices) <= 12:
        return "expected one of: " + ", ".join(choices)
    return None


class RegistryError(MergepkgError, LookupError):
    """A registry cannot answer: unknown package or version, unreachable, bad index data."""


class PublishError(RegistryError):
    """A publish or yank was refused; `status` is the HTTP status a server answers with."""

    def __init__(self, message: str, *, status: int = 400, **kw):
        super().__init__(message, **kw)
        self.status = status


class DependencyConflict(RegistryError):
    """Two version ranges for one package allow no common version."""

    def __init__(self, package: str, first: tuple[str, str], second: tuple[str, str], **kw):
        self.package, self.first, self.second = package, first, second
        super().__init__(
            f"no version of {package} satisfies both {first[1]!r} (required by {first[0]}) "
            f"and {second[1]!r} (required by {second[0]})",
            **kw,
        )
