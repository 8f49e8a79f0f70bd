"""builder/exports.py without the converter: what is placed where (`mergepkg export -o`).
The real conversions are tests/export/test_gguf_demo.py's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mergepkg.builder.exports import FILE, is_export, place_exports
from mergepkg.builder.outputs import MARKER
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import BuildError
from mergepkg.store.local import Artifact, Store


def export_artifact(store: Store, data: bytes) -> Artifact:
    entry = {"export": "gguf", "type": "f16", "step": "0" * 64, "data": data.hex()}
    key = sha256_hex(canonical_json(entry))
    folder = store.new_folder(key)
    (folder / FILE).write_bytes(data)
    sha = {FILE: hashlib.sha256(data).hexdigest()}
    return store.commit(key, folder, entry, {}, seconds=0.0, sha256=sha)


def test_exports_are_added_to_a_folder_of_the_user_s_touching_nothing_else(tmp_path):
    """docs/export.md's `mergepkg export recipe.toml merged-q4 -o dist` into a dist/ that
    holds other files: NAME.gguf added (or replaced), the rest as it was, and no marker
    that would let a later build replace the folder."""
    store = Store(tmp_path / "home")
    art = export_artifact(store, b"GGUF new")
    assert is_export(art)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "notes.txt").write_text("mine")
    (dist / "merged-q4.gguf").write_bytes(b"GGUF old")
    placed = place_exports({"merged-q4": art}, dist)
    assert placed == {"merged-q4": dist / "merged-q4.gguf"}
    assert (dist / "merged-q4.gguf").read_bytes() == b"GGUF new"
    assert sorted(p.name for p in dist.iterdir()) == ["merged-q4.gguf", "notes.txt"]
    fresh = place_exports({"merged-q4": art}, tmp_path / "new")  # a folder made here is mergepkg's
    assert sorted(p.name for p in fresh["merged-q4"].parent.iterdir()) == [MARKER, "merged-q4.gguf"]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_out_that_cannot_take_the_file_is_refused(tmp_path, what):
    store = Store(tmp_path / "home")
    art = export_artifact(store, b"GGUF")
    out: Path = tmp_path / "dist"
    if what == "file":
        out.write_text("x")
    else:
        (out / "e.gguf").mkdir(parents=True)
    with pytest.raises(BuildError, match="is a file, not a folder" if what == "file" else "e.gguf is a folder"):
        place_exports({"e": art}, out)
