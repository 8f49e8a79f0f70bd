"""`[exports.NAME]`: built steps converted to another file format (docs/export.md).

    [exports.merged-q8]
    step = "merged"        # default: the recipe's only output
    format = "gguf"        # the one format so far: llama.cpp's
    type = "q8_0"          # the tensors' type in the file

An export is cached under its own key (the step's key, the converter's identity and
the type) and pinned in the lock like a step; a build places it in `--out` as
`NAME.gguf`. The types are llama.cpp's: those its converter writes itself, and those
its quantizer makes from a float32 conversion (it needs llama-cpp-python).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.recipe.model import Export
from mergepkg.recipe.tables import TableReader

FORMATS = ("gguf",)
# `convert_hf_to_gguf.py --outtype`: f32, f16 and bf16 keep the step's values (rounded to
# the type); q8_0 is the converter's own 8-bit quantization
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's quantizer (`llama-quantize`), run on the f32 conversion
QUANTIZER_TYPES = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
)
GGUF_TYPES = CONVERTER_TYPES + QUANTIZER_TYPES


def export_file(name: str) -> str:
    """The file export `name` is placed as, in `--out`."""
    return f"{name}.gguf"


def exports_table(
    reader: TableReader, value: Any, steps: Mapping[str, object], outputs: list[str]
) -> dict[str, Export]:
    """The `[exports]` tables, read with located errors."""
    if value is None:
        return {}
    table = reader.expect(value, dict, "exports", "[exports.NAME] tables")
    return {name: _export(reader, name, entry, steps, outputs) for name, entry in table.items()}


def _export(reader: TableReader, name: str, value: Any, steps: Mapping[str, object], outputs: list[str]) -> Export:
    key = f"exports.{name}"
    reader.check_name(name, key)
    entry = reader.expect(value, dict, key, "a table with step, format and type")
    reader.only_keys(entry, ("step", "format", "type"), key)
    step = entry.get("step")
    if step is None:
        if len(outputs) != 1:
            raise reader.error(key, "which step? the recipe has several outputs", f"add step = {outputs[0]!r}, say")
        step = outputs[0]
    reader.expect(step, str, f"{key}.step", "a step name")
    if step not in steps:
        raise reader.error(f"{key}.step", f"no step named {step!r}", did_you_mean(step, steps))
    fmt = reader.expect(entry.get("format", "gguf"), str, f"{key}.format", "a format name")
    if fmt not in FORMATS:
        raise reader.error(f"{key}.format", f"unknown export format {fmt!r}", "the formats: " + ", ".join(FORMATS))
    kind = entry.get("type")
    if kind is None:
        raise reader.error(key, "missing type", 'add type = "bf16", "q8_0" or "q4_k_m", say (docs/export.md)')
    reader.expect(kind, str, f"{key}.type", "a GGUF type name")
    if kind.lower() not in GGUF_TYPES:
        hint = did_you_mean(kind.lower(), GGUF_TYPES) or "the types: " + ", ".join(GGUF_TYPES)
        raise reader.error(f"{key}.type", f"unknown GGUF type {kind!r}", hint)
    return Export(name, step, fmt, kind.lower())
