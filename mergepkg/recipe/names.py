"""Names: of sources and steps inside a recipe, and of packages (recipes published to a
registry), with the versions packages carry.

A name is a name, never a path: the rules below admit no `/` but a package's one
namespace separator, no `..`, no NUL. Checking here is what keeps names from leaving
the folders they name files in (`out/<name>`, `registry/index/<name>.jsonl`).
"""

from __future__ import annotations

import re

from mergepkg.errors import RegistryError
from mergepkg.recipe.versions import Version, VersionError

# a source, step or registry name: letters, digits, '_', '-' and '.', not starting with
# '.' or '-', at most 128 characters (fullmatch: `$` would let a final newline through)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_HINT = "use letters, digits, '_', '-' and '.' (not first), at most 128 characters"
# one part of a package name (fullmatch: `$` would let a final newline through)
PACKAGE_PART = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class InvalidName(RegistryError, ValueError):
    """Not a valid package name (or version): the message says what is allowed."""


def is_name(text: object) -> bool:
    """Whether `text` is a valid source, step or registry name."""
    return isinstance(text, str) and NAME.fullmatch(text) is not None


def package_name_problem(text: str) -> str | None:
    """Why `text` cannot be a recipe's `[package] name`, or None. A package name is one
    name, or two joined by one `/` (a namespace): never a path. Publishing asks more
    (`canonical_name`)."""
    parts = text.split("/")
    if len(parts) > 2 or not all(is_name(p) for p in parts):
        return f"invalid package name {text!r}"
    return None


def canonical_name(name: str) -> str:
    """The one spelling of a package name: checked, `_` written as `-`.

    Only `[a-z0-9_-]` parts joined by at most one `/` pass, so a package name never
    leaves the folder it names a file in."""
    parts = name.split("/") if isinstance(name, str) else [None]
    if len(parts) > 2 or not all(isinstance(p, str) and PACKAGE_PART.fullmatch(p) for p in parts):
        raise InvalidName(
            f"invalid package name {name!r}",
            hint="names are lowercase [a-z0-9][a-z0-9_-]{0,63}, optionally under a namespace: team/name",
        )
    return "/".join(p.replace("_", "-") for p in parts)


def check_version(text: str) -> Version:
    """A package version, parsed; an `InvalidName` error when it is not a semantic version."""
    try:
        return Version.parse(text)
    except VersionError as e:
        raise InvalidName(str(e), hint="versions are semantic versions, e.g. 0.1.0 or 1.2.0-rc.1") from None
