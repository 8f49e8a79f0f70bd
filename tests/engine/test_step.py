"""build_step stores nothing made from an input that changed while it was read, or whose
sha256 was taken before reading (a first build's claim) and proves false; a fused step
loads the kernels it runs."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import build_recipe

import mergepkg.engine.step
import mergepkg.io.reader
from mergepkg.errors import SourceError
from mergepkg.methods.kernels import compiled
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


@pytest.mark.parametrize(
    "method, params, kernels",
    [
        ("ties", "", ["merge_weighted", "band", "merge_top_k"]),
        ("ties", "params = { rescale = true }", ["merge_weighted", "band", "merge_top_k", "l1_top_k", "sums"]),
        ("dare_ties", "", ["merge_weighted", "merge_drawn", "draw_bits", "l1_drawn", "sums"]),  # rescales by default
        ("task_arithmetic", "", ["merge_weighted"]),
    ],
)
def test_a_fused_step_loads_the_kernels_its_tensors_run(write_recipe, tmp_path, monkeypatch, method, params, kernels):
    """engine/step._kernels: the method's kernels (the L1 pass only where a tensor is
    rescaled), for the step's dtype over its inputs' dtypes, writing the saved dtype."""
    density = ", density = 0.5" if method != "task_arithmetic" else ""
    path = write_recipe(
        f'[steps.s]\nmethod = "{method}"\nbase = "base"\ndtype = "bfloat16"\n{params}\n'
        f'inputs = [{{ model = "ft1", weight = 0.5{density} }}, {{ model = "ft2", weight = 0.5{density} }}]\n'
    )
    loads, loaded = [], {}
    stand_in = mergepkg.engine.step.fused
    real = stand_in.load  # (touching the stand-in copies the module's names into it first)
    names = ["band", "draw_bits", "l1_drawn", "l1_top_k", "merge_drawn", "merge_top_k", "merge_weighted", "sums"]

    def load(*args, **kwargs):
        loads.append(kwargs)
        real(*args, **kwargs)
        loaded.update({k: set(getattr(compiled, k).signatures) for k in names})

    monkeypatch.setattr(stand_in, "load", load)
    build_recipe(path, out=tmp_path / "out")
    assert {k: set(getattr(compiled, k).signatures) for k in names} == loaded  # nothing more ran
    # float32 models merged in bfloat16, saved as float32 (the base's dtype), never computed wider
    assert loads == [
        {"compute": ["bfloat16"], "stored": ["float32"], "kernels": kernels, "results": ["float32"], "counts": [2]}
    ]
