"""The YAML documents of a mergekit config, each with the line of every key path in it.

A YAML alias (`*name`) repeats a node without copying it: yaml.safe_load shares the
object, so reading a document costs its text, not its expansion. What pays for the
expansion is walking it, or a merge key (`<<: *name`), whose pairs yaml copies into the
mapping as it constructs it: an alias bomb (aliases of aliases, a few levels deep, ten
wide) is a few lines that expand to billions of values. So a file whose aliases repeat
more than `MAX_EXPANDED` values, or hold themselves, is refused at its line before it is
constructed (the count remembers each node's, so it costs the text), and the key paths
are walked through each node once: no mergekit config repeats that much, and the
converter reads whatever the aliases expand to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from mergepkg.errors import RecipeError

MAX_EXPANDED = 100_000  # nodes a file's aliases may add to those its text holds


@dataclass
class Doc:
    """One YAML document of the config (a mergekit-multi file holds several)."""

    data: Any
    lines: dict[str, int]  # key path -> 1-based line
    line: int  # where the document starts
    index: int  # 0-based position in the file


def load_documents(text: str, display: str) -> list[Doc]:
    """The documents of `text` as yaml.safe_load reads them; invalid YAML is an error at its
    line, and so is a file whose aliases repeat more than `MAX_EXPANDED` values."""
    loader = yaml.SafeLoader(text)
    docs: list[Doc] = []
    repeats = _Repeats(display)
    try:
        while loader.check_node():
            node = loader.get_node()
            repeats.add(node)  # before constructing: merge keys (`<<: *a`) are copied then
            data = loader.construct_document(node)
            lines: dict[str, int] = {}
            _walk(node, "", lines, set())
            docs.append(Doc(data, lines, node.start_mark.line + 1, len(docs)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(
            f"invalid YAML: {problem}", file=display, line=mark.line + 1 if mark is not None else None
        ) from None
    except RecursionError:  # the parser recurses once a level
        raise RecipeError(
            "invalid YAML: nested too deeply to read", file=display, hint="a mergekit config is a few levels deep"
        ) from None
    finally:
        loader.dispose()
    return docs


def _walk(node: yaml.Node, path: str, lines: dict[str, int], seen: set[int]) -> None:
    """Record the line of every key path under `node` (the first, when a key repeats),
    each node walked once: the paths under a node reached again through an alias are not
    recorded (`Context.line_of` then gives the line of the path naming it)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            lines.setdefault(sub, key_node.start_mark.line + 1)
            _walk(value_node, sub, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, seen)


def _children(node: yaml.Node) -> list[yaml.Node]:
    """A mapping's keys and values, a sequence's items; a scalar has none."""
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


class _Repeats:
    """The nodes a file's aliases add to its text, summed over its documents: a
    `RecipeError` at the first node whose aliases take the sum past `MAX_EXPANDED`, or at
    an alias inside the value it names (a value that holds itself, which no walk ends).
    Each node is counted once (`counts`), so the count costs the text, not the expansion."""

    def __init__(self, display: str):
        self.display = display
        self.repeated = 0  # nodes read through aliases beyond the distinct ones, so far
        self.counts: dict[int, int] = {}  # node id -> the nodes it holds through its aliases
        self.open: set[int] = set()  # the nodes being counted: one met again holds itself

    def add(self, root: yaml.Node) -> None:
        """Count one document (`root`, composed, not constructed)."""
        distinct: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) not in distinct:
                distinct.add(id(node))
                stack.extend(_children(node))
        self.counts.clear()  # an anchor names a node of its own document only
        left = MAX_EXPANDED - self.repeated + len(distinct)  # the nodes this document may expand to
        self.repeated += self._count(root, left) - len(distinct)

    def _count(self, node: yaml.Node, left: int) -> int:
        """The nodes `node` holds as read through every alias; an error past `left`."""
        if (known := self.counts.get(id(node))) is not None:
            return known
        if id(node) in self.open:
            raise self._error(node, "an alias inside the value it names (a value that holds itself)")
        self.open.add(id(node))
        total = 1
        for child in _children(node):
            total += self._count(child, left - total)
            if total > left:
                raise self._error(node, f"its aliases repeat more than {MAX_EXPANDED} values")
        self.open.discard(id(node))
        self.counts[id(node)] = total
        return total

    def _error(self, node: yaml.Node, message: str) -> RecipeError:
        return RecipeError(
            f"invalid YAML: {message}",
            file=self.display,
            line=node.start_mark.line + 1,
            hint="a mergekit config holds a few values, each written once: write them out",
        )
