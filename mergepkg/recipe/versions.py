"""Semantic versions (https://semver.org) and the version ranges dependencies use.

Range syntax (as Cargo's, documented in docs/registry.md):

| range | means |
|---|---|
| `^1.2.3`, `1.2.3` | `>=1.2.3, <2.0.0` (a bare version is a caret range) |
| `^0.2.3` | `>=0.2.3, <0.3.0` (left of the first non-zero part stays fixed) |
| `^0.0.3` | `>=0.0.3, <0.0.4` |
| `~1.2.3`, `~1.2` | `>=1.2.3, <1.3.0` / `>=1.2.0, <1.3.0` |
| `=1.2.3` | exactly 1.2.3 (`=1.2`: any 1.2.x) |
| `>=1.0, <1.5` | comparisons (`>`, `>=`, `<`, `<=`), joined by commas: all must hold |
| `*` | any version |

Missing parts count as zero (`^1.2` is `^1.2.0`). A pre-release version (`1.0.0-rc.1`)
matches only a range that names a pre-release of the same major.minor.patch, so a range
never picks up pre-releases by accident.

A dependency search compares versions many thousands of times: a version keeps its sort
key, and a comparator makes only the comparison it names.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import total_ordering

NUM = r"(0|[1-9][0-9]*)"  # no leading zeros; ASCII digits only (\d would take any script's)
IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
PRE = rf"(?:-({IDENT}(?:\.{IDENT})*))?"
MAX_LENGTH = 128  # a version's characters, build metadata included
VERSION = re.compile(rf"{NUM}\.{NUM}\.{NUM}{PRE}(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?")
PARTIAL = re.compile(rf"{NUM}(?:\.{NUM}(?:\.{NUM}{PRE})?)?")  # a pre-release only on a full version
COMPARATOR = re.compile(r"(>=|<=|>|<|=|\^|~)?\s*(.+)")


class VersionError(ValueError):
    """Not a semantic version or not a range; the message says what was expected."""


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()  # pre-release identifiers; () for a release

    @classmethod
    def parse(cls, text: str) -> Version:
        if isinstance(text, str) and len(text) > MAX_LENGTH:  # it names files, and its numbers are ints
            raise VersionError(f"a version of {len(text)} characters: at most {MAX_LENGTH}")
        m = VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
        if not m:
            raise VersionError(f"not a semantic version: {text!r} (expected MAJOR.MINOR.PATCH, e.g. 1.0.0)")
        pre = tuple(int(p) if p.isdigit() else p for p in m[4].split(".")) if m[4] else ()
        return cls(int(m[1]), int(m[2]), int(m[3]), pre)  # build metadata (+...) does not order

    @functools.cached_property  # kept: the fields never change
    def _order(self) -> tuple:
        # a release sorts after its pre-releases; numeric identifiers before alphanumeric ones
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, (not self.pre and 1) or 0, pre)

    def __lt__(self, other: Version) -> bool:
        return self._order < other._order

    @property
    def core(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        return text + ("-" + ".".join(map(str, self.pre)) if self.pre else "")


@dataclass(frozen=True)
class Comparator:
    op: str  # one of >=, >, <=, <, =
    version: Version

    def allows(self, v: Version) -> bool:
        return OPERATORS[self.op](v, self.version)


OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
}


@dataclass(frozen=True)
class Range:
    text: str
    comparators: tuple[Comparator, ...]  # all must hold; () allows every release
    pre_cores: frozenset = frozenset()  # major.minor.patch of pre-releases the text names

    @classmethod
    def parse(cls, text: str) -> Range:
        if not isinstance(text, str) or not text.strip():
            raise VersionError(f'not a version range: {text!r} (expected e.g. "^1.2", ">=1.0, <2.0" or "*")')
        text = text.strip()
        if text == "*":
            return cls(text, ())
        comps: list[Comparator] = []
        pre_cores = set()
        for part in text.split(","):
            op, parts, pre = _written(part.strip(), text)
            comps += _expand(op, parts, pre)
            if pre:  # only a pre-release written here: the `-0` bounds `_expand` makes name none
                pre_cores.add(_three(parts))
        return cls(text, tuple(comps), frozenset(pre_cores))

    def allows(self, v: Version) -> bool:
        if v.pre and v.core not in self.pre_cores:
            return False
        return all(c.allows(v) for c in self.comparators)

    def __str__(self) -> str:
        return self.text


def _written(part: str, whole: str) -> tuple[str, list[int], tuple[int | str, ...]]:
    """The operator (`^` when none), numbers and pre-release one comparator of `whole`
    writes: kept apart from its expansion, whose synthetic bounds are not what was asked."""
    m = COMPARATOR.fullmatch(part)
    p = PARTIAL.fullmatch(m[2].strip()) if m else None
    if not m or not p:
        raise VersionError(f'not a version range: {whole!r} (expected e.g. "^1.2", ">=1.0, <2.0" or "*")')
    parts = [int(x) for x in p.group(1, 2, 3) if x is not None]
    pre = tuple(int(x) if x.isdigit() else x for x in p[4].split(".")) if p[4] else ()
    return m[1] or "^", parts, pre


def _expand(op: str, parts: list[int], pre: tuple[int | str, ...]) -> list[Comparator]:
    """The comparators one written comparator means (the table in the module docstring)."""
    low = Version(*_three(parts), pre)
    if op in (">=", ">", "<=", "<") and len(parts) == 3:
        return [Comparator(op, low)]
    if op in ("=", "~", "^", ">", "<="):  # ranges whose upper end depends on how many parts were given
        if op == "^":
            fixed = _caret_fixed(parts)
        elif op == "~":
            fixed = min(len(parts), 2)
        else:  # =1.2 is any 1.2.x, >1.2 is past every 1.2.x, <=1.2 is up to every 1.2.x
            fixed = len(parts)
        high = _bump(parts, fixed)
        if op == ">":
            return [Comparator(">=", high)]
        if op == "<=":
            return [Comparator("<", high)]
        if op == "=" and len(parts) == 3:
            return [Comparator("=", low)]
        return [Comparator(">=", low), Comparator("<", high)]
    if op == "<":  # <1.3 is below every 1.3.x, pre-releases included
        return [Comparator("<", replace(low, pre=(0,)))]
    return [Comparator(">=", low)]  # missing parts are zero


def _caret_fixed(parts: list[int]) -> int:
    """How many leading parts a caret range keeps fixed: up to the first non-zero one."""
    for i, x in enumerate(parts):
        if x != 0:
            return i + 1
    return len(parts)


def _bump(parts: list[int], fixed: int) -> Version:
    """The first version past every version whose first `fixed` parts equal these."""
    head = parts[:fixed]
    head[-1] += 1
    return Version(*_three(head), (0,))  # `-0`: below every pre-release of that version


def _three(parts: list[int]) -> tuple[int, int, int]:
    """major, minor, patch: the parts given, the missing ones zero."""
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return major, minor, patch


def newest(versions: Iterable[Version], rng: Range) -> Version | None:
    """The newest of `versions` (Version) the range allows, or None."""
    ok = [v for v in versions if rng.allows(v)]
    return max(ok) if ok else None
