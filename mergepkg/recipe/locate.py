"""Find the line of a key path (`steps.x.inputs[1].density`) in TOML text.

tomllib keeps no positions, so errors found after parsing are located by scanning
the text: the deepest `[table]` header that prefixes the path, then each remaining
key or array index in turn. Good enough for every shape the recipe format uses;
when a path cannot be found the error is still raised, just without a line.
"""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _segments(key: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _SEGMENT.findall(key)]


def _header_pattern(names: list[str]) -> re.Pattern:
    parts = r"\s*\.\s*".join(rf"(?:{re.escape(n)}|\"{re.escape(n)}\"|'{re.escape(n)}')" for n in names)
    return re.compile(rf"^\s*\[\s*{parts}\s*\]\s*(#.*)?$", re.M)


def _table_end(text: str, start: int) -> int:
    match = re.compile(r"^\s*\[", re.M).search(text, start)
    return match.start() if match else len(text)


def _find_key(text: str, name: str, start: int, end: int) -> int | None:
    key = r"\s*\.\s*".join(rf"(?:{re.escape(part)}|\"{re.escape(part)}\")" for part in name.split("."))
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
    segs = _segments(key)
    pos, end, consumed = 0, len(text), 0  # the whole text, unless a table header prefixes the path
    for k in range(len(segs), 0, -1):
        names = [s for s in segs[:k] if isinstance(s, str)]
        if len(names) < k:  # an array index: no header names it
            continue
        match = _header_pattern(names).search(text)
        if match:
            pos, end, consumed = match.end(), _table_end(text, match.end()), k
            break
    line_at = pos
    rest = segs[consumed:]
    i = 0
    while i < len(rest):
        seg = rest[i]
        if isinstance(seg, int):
            found = _find_item(text, seg, pos, end)
        else:
            # a dotted key (`params.t = ...`) stands for two levels at once
            dotted = (
                i + 1 < len(rest) and isinstance(rest[i + 1], str) and _find_key(text, f"{seg}.{rest[i + 1]}", pos, end)
            )
            if dotted:
                i += 1
            found = dotted or _find_key(text, seg, pos, end)
        if found is None:
            break
        pos = line_at = found
        i += 1
    if consumed == 0 and line_at == 0:
        return None
    return text.count("\n", 0, line_at) + 1
