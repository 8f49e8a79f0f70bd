"""The YAML documents of a mergekit config, each with the line of every key path in it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from mergepkg.errors import RecipeError


@dataclass
class Doc:
    """One YAML document of the config (a mergekit-multi file holds several)."""

    data: Any
    lines: dict[str, int]  # key path -> 1-based line
    line: int  # where the document starts
    index: int  # 0-based position in the file


def load_documents(text: str, display: str) -> list[Doc]:
    """The documents of `text` as yaml.safe_load reads them; invalid YAML is an error at its line."""
    loader = yaml.SafeLoader(text)
    docs: list[Doc] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            lines: dict[str, int] = {}
            _walk(node, "", lines, 0)
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


def _walk(node: yaml.Node, path: str, lines: dict[str, int], depth: int) -> None:
    """Record the line of every key path under `node` (the first, when a key repeats)."""
    if depth > 64:  # recursive aliases
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            lines.setdefault(sub, key_node.start_mark.line + 1)
            _walk(value_node, sub, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, depth + 1)
