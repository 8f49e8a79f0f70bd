"""build_step stores nothing made from an input that changed while it was read, or whose
sha256 was taken before reading (a first build's claim) and proves false."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import build_recipe

import mergepkg.io.reader
from mergepkg.errors import SourceError
from mergepkg.store.local import Store

RECIPE = """
[steps.merged]
method = "linear"
inputs = [{ model = "mine", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
"""


def test_an_input_written_during_the_build_stores_nothing(write_recipe, models, tmp_path, mergepkg_home, monkeypatch):
    mine = tmp_path / "mine"
    shutil.copytree(models["ft1"], mine)
    path = write_recipe(RECIPE)
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nmine = {{ path = "{mine}" }}\n'))
    real = mergepkg.io.reader.ModelReader.get

    def written_meanwhile(self, name):
        if self.folder == mine:  # a writer touches it after it was pinned, while the step reads it
            os.utime(mine / "model.safetensors")
        return real(self, name)

    monkeypatch.setattr(mergepkg.io.reader.ModelReader, "get", written_meanwhile)
    with pytest.raises(SourceError) as info:
        build_recipe(path, out=tmp_path / "out")
    assert "changed while the build read it" in info.value.message and "model.safetensors" in info.value.message
    assert Store(mergepkg_home).all() == [] and not (tmp_path / "out").exists()
    assert not any((mergepkg_home / "tmp").iterdir())
    monkeypatch.setattr(mergepkg.io.reader.ModelReader, "get", real)
    assert build_recipe(path, out=tmp_path / "out").built == ["merged"]  # re-pinned by its new stat
