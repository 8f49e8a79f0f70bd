"""The recipe TOML of the converted steps: `[package]`, `[sources]`, one `[steps.NAME]` per
step with its notes as comments, values written the way a person would write them."""

from __future__ import annotations

import math
import re
from typing import Any

from mergepkg.importers.mergekit.context import Step

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def render(config_name: str, package: str, sources: dict[str, dict], steps: list[Step]) -> str:
    """The recipe text; `config_name` is the config's file name, for the header comment."""
    out = [f"# imported from {config_name} by mergepkg import"]
    if len(steps) > 1:
        out.append("# a mergekit-multi file: one step per document")
    out += ["", "[package]", f"name = {_value(package)}", 'version = "0.1.0"', "", "[sources]"]
    out += [f"{_key(n)} = {_value(t)}" for n, t in sources.items()]
    for s in steps:
        out.append("")
        origin = f"document {s.doc.index + 1} (line {s.doc.line})" if len(steps) > 1 else None
        if origin:
            out.append(f"# from {origin}")
        for msg, keys in s.notes.items():
            out.append(f"# note: {msg} [{', '.join(dict.fromkeys(keys))}]")
        for key, why in s.ignored.items():
            out.append(f"# warning: {key} has no effect: {why}")
        out.append(f"[steps.{_key(s.name)}]")
        out.append(f"method = {_value(s.method)}")
        if s.base:
            out.append(f"base = {_value(s.base)}")
        if s.inputs:
            if all(len(i) == 1 for i in s.inputs) and len(s.inputs) <= 4:
                out.append(f"inputs = {_value([i['model'] for i in s.inputs])}")
            else:
                out.append("inputs = [")
                out += [f"  {_value(i)}," for i in s.inputs]
                out.append("]")
        if s.moe is not None:
            out.append("experts = [")
            out += [f"  {_value(e)}," for e in s.moe["experts"]]
            out.append("]")
            if s.moe["shared_expert"]:
                out.append(f"shared_expert = {_value(s.moe['shared_expert'])}")
            if s.moe["params"]:
                out.append(f"params = {_value(s.moe['params'])}")
        if s.slices:
            out.append("slices = [")
            for sl in s.slices:
                table = {"sources": sl["sources"], **({"params": sl["params"]} if sl["params"] else {})}
                out.append(f"  {_value(table)},")
            out.append("]")
        params_table = []  # long parameters: a [steps.NAME.params] table after the step's keys
        if s.params:
            inline = f"params = {_value(s.params)}"
            if len(inline) <= 100:
                out.append(inline)
            else:
                params_table += ["", f"[steps.{_key(s.name)}.params]"]
                for k, v in s.params.items():
                    if isinstance(v, list) and v and isinstance(v[0], dict):
                        params_table.append(f"{_key(k)} = [")
                        params_table += [f"  {_value(c)}," for c in v]
                        params_table.append("]")
                    else:
                        params_table.append(f"{_key(k)} = {_value(v)}")
        if s.dtype:
            out.append(f"dtype = {_value(s.dtype)}")
        if s.out_dtype:
            out.append(f"out_dtype = {_value(s.out_dtype)}")
        if s.config is not None:
            out.append(f"config = {_value(s.config)}")
        source = "union" if s.union else ("base" if s.tokenizer == s.base else s.tokenizer) if s.tokenizer else None
        if s.tokens or s.pad_to_multiple_of:
            table = {
                "source": source or "base",
                **({"tokens": s.tokens} if s.tokens else {}),
                **({"pad_to_multiple_of": s.pad_to_multiple_of} if s.pad_to_multiple_of else {}),
            }
            out.append(f"tokenizer = {_value(table)}")
        elif source:
            out.append(f"tokenizer = {_value(source)}")
        if s.chat_template is not None:
            out.append(f"chat_template = {_value(s.chat_template)}")
        out += params_table
    return "\n".join(out) + "\n"


def _key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as is."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    """A TOML value on one line (inline tables and arrays)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not a finite number: {v}")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
