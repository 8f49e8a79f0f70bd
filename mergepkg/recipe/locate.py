"""Find the line of a key path (`steps.x.inputs[1].density`) in TOML text.

tomllib keeps no positions, so errors found after parsing are located by scanning
the text: the deepest `[table]` header that prefixes the path (or the i-th
`[[array]]` header for `array[i]`), then each remaining key or array index in turn.
Good enough for every shape the recipe format uses; when a path cannot be found the
error is still raised, just without a line.

A name holding a dot is quoted in a key path as in TOML (`steps."soup.v2".inputs[0]`,
`key_name`), so the path splits back into the names it was made of.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_SEGMENT = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|([^.\[\]\"']+)|\[(\d+)\]")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
# a header line: `[a."b.c"]` or `[[a.b]]`, with a comment or not (a line of an array
# written across lines, `  [0.1, 0.2],`, is none: its items are no keys)
_KEY = r"\s*(?:[A-Za-z0-9_-]+|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')\s*"
_HEADER = re.compile(rf"^\s*(\[\[?)({_KEY}(?:\.{_KEY})*)(\]\]?)\s*(?:#.*)?$", re.M)


def key_name(name: str) -> str:
    """`name` as one segment of a key path: as it is when TOML takes it bare, else quoted
    (`"soup.v2"`), so that a dot in a step's name is no level of the path."""
    if _BARE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def segments(key: str) -> list[str | int]:
    """`steps."a.b".inputs[0]` -> ["steps", "a.b", "inputs", 0]: quoted names whole."""
    out: list[str | int] = []
    for quoted, literal, bare, index in _SEGMENT.findall(key):
        if index:
            out.append(int(index))
        else:
            out.append(quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted else literal or bare.strip())
    return out


@dataclass(frozen=True)
class _Header:
    names: tuple[str, ...]  # its keys, quotes taken off
    array: bool  # `[[...]]`: one element of an array of tables
    start: int  # offset just past the header line
    end: int  # offset of the next header, or the text's end


_Headers = dict[tuple[str, ...], list[_Header]]  # by the keys they stand for, each list in text order


def _scan(text: str) -> list[_Header]:
    """Every table header of `text`, in order."""
    found = list(_HEADER.finditer(text))
    headers = []
    for i, m in enumerate(found):
        if len(m[1]) != len(m[3]):  # `[a]]` or `[[a]`: no header
            continue
        names = tuple(str(n) for n in segments(m[2]))  # a header holds names only
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        headers.append(_Header(names, len(m[1]) == 2, m.end(), end))
    return headers


@functools.lru_cache(maxsize=8)
def _headers(text: str) -> _Headers:
    """The headers of `text` by the keys they stand for, scanned once per text: errors and
    warnings locate many keys in one text, and a scan for each made locating every step of
    a long recipe quadratic. A header is filed under its keys and, where a key holds a
    dot, under the keys split at dots too: a key path made without quoting such a name
    (`steps.soup.v2` for `[steps."soup.v2"]`) finds it."""
    by_names: _Headers = {}
    for h in _scan(text):
        split = tuple(p for n in h.names for p in n.split("."))
        for names in dict.fromkeys((h.names, split)):  # once where they are the same
            by_names.setdefault(names, []).append(h)
    return by_names


def _table(headers: _Headers, segs: list[str | int]) -> tuple[_Header, int] | None:
    """The deepest header the path starts with, and how many segments it stands for:
    `[a.b]` for `a.b...`, the i-th `[[a.b]]` for `a.b[i]...` (tomllib makes each such
    header one more element of the array `a.b`)."""
    for k in range(len(segs), 0, -1):
        last = segs[k - 1]
        array = isinstance(last, int)
        names = [n for n in segs[: k - 1 if array else k] if isinstance(n, str)]
        if not names or len(names) < k - array:  # an index before: no header names it
            continue
        same = headers.get(tuple(names), [])
        if isinstance(last, int):
            elements = [h for h in same if h.array]
            if last < len(elements):
                return elements[last], k
        elif same:  # `[a.b]`, or for the whole array `a.b` its first `[[a.b]]`
            return min(same, key=lambda h: h.array), k
    return None


def _find_key(text: str, names: list[str], start: int, end: int) -> int | None:
    """Offset just past the `=` of `names` (one key, or a dotted key) in text[start:end]."""
    key = r"\s*\.\s*".join(rf"(?:{re.escape(n)}|\"{re.escape(n)}\"|'{re.escape(n)}')" for n in names)
    pattern = re.compile(rf"(?:^|[\s{{,]){key}\s*=", re.M)
    match = pattern.search(text, start, end)
    return match.end() if match else None


def _find_item(text: str, index: int, start: int, end: int) -> int | None:
    """Offset of the index-th element of the array whose `=` ends at `start`."""
    depth, count, i = 0, -1, start
    while i < end:
        ch = text[i]
        if ch == "#":
            i = text.find("\n", i)
            if i < 0:
                return None
            continue
        if ch in "[{":
            depth += 1
            if (depth == 2 and ch == "{") or (depth == 2 and ch == "["):
                count += 1
                if count == index:
                    return i
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return None
        elif depth == 1 and not ch.isspace() and ch != ",":
            # a scalar element: count it once, skip to the next separator
            count += 1
            if count == index:
                return i
            while i < end and text[i] not in ",]":
                i += 1
            continue
        i += 1
    return None


def locate(text: str, key: str) -> int | None:
    """1-based line of `key` in `text`, or None."""
    if not text or not key:
        return None
    segs = segments(key)
    pos, end, consumed = 0, len(text), 0  # the whole text, unless a table header prefixes the path
    table = _table(_headers(text), segs)
    if table is not None:
        header, consumed = table
        pos, end = header.start, header.end
    line_at = pos
    rest = segs[consumed:]
    i = 0
    while i < len(rest):
        seg = rest[i]
        if isinstance(seg, int):
            found = _find_item(text, seg, pos, end)
        else:
            # a dotted key (`params.t = ...`) stands for two levels at once
            following = rest[i + 1] if i + 1 < len(rest) else None
            dotted = isinstance(following, str) and _find_key(text, [seg, following], pos, end)
            if dotted:
                i += 1
            found = dotted or _find_key(text, [seg], pos, end)
        if found is None:
            break
        pos = line_at = found
        i += 1
    if consumed == 0 and line_at == 0:
        return None
    return text.count("\n", 0, line_at) + 1
