"""Keys for `[exports.NAME]`: each export keyed over its step's key, type and converter
(export/gguf.py), with the digest the lock holds for that key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mergepkg.errors import ExportError
from mergepkg.export.gguf import Converter, export_key, find_converter
from mergepkg.lockfile import Lock, LockedExport
from mergepkg.recipe.model import Recipe


def key_exports(
    recipe: Recipe, keys: Mapping[str, str], llama_cpp: Path | None, lock: Lock | None
) -> tuple[Converter, dict[str, LockedExport]]:
    """The converter, and each export whose step is planned (`keys`), keyed; an export
    of a step left out of the plan keeps the lock's entry, as it is."""
    try:
        converter = find_converter(llama_cpp)
    except ExportError as e:
        raise recipe.locate(e, f"exports.{next(iter(recipe.exports))}") from None
    locked = lock.exports if lock else {}
    exports = {}
    for name, export in recipe.exports.items():
        if export.step not in keys:
            if name in locked:
                exports[name] = locked[name]
            continue
        try:
            key = export_key(export, keys[export.step], converter)
        except ExportError as e:
            raise recipe.locate(e, f"exports.{name}.type") from None
        old = locked.get(name)
        digest = old.digest if old is not None and old.key == key else None
        exports[name] = LockedExport(name, export.step, export.format, export.type, converter.identity, key, digest)
    return converter, exports
