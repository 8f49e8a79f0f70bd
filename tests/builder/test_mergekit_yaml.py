"""builder/mergekit_yaml.py: local folders named as mergekit reads them (the configs mergekit
runs are checked in tests/importers/test_export.py)."""

from __future__ import annotations

import shutil

import pytest
import yaml
from helpers import build_recipe

from mergepkg.builder.mergekit_yaml import MERGEKIT_FILE, local_ref

STEPS = """
[steps.lin]
method = "linear"
inputs = ["base", "ft1"]
params = { weight = 0.5 }

[steps.ta]
method = "task_arithmetic"
base = "base"
inputs = ["ft1"]
params = { weight = 0.5 }
"""


@pytest.mark.slow  # imports mergekit (2 s), as the parity tests do
def test_a_folder_whose_path_holds_plus_or_at_is_named_as_a_path_mergekit_reads_as_one(
    recipe_file, stub_models, tmp_path
):
    """`./models/v1+dpo@x base` was written bare: mergekit read `+` as a LoRA adapter after
    it and `@` as a revision, and mergekit-yaml failed on the config."""
    from mergekit.config import MergeConfiguration

    names = {m: f"v1+dpo@x {m}" for m in ("base", "ft1")}
    for model, name in names.items():
        shutil.copytree(stub_models[model], tmp_path / "models" / name)
    sources = "[sources]\n" + "".join(f'{m} = {{ path = "models/{n}" }}\n' for m, n in names.items())
    out = tmp_path / "out"
    build_recipe(recipe_file(sources + STEPS, sources=False), out)
    for step, base in (("lin", None), ("ta", "base")):
        folder = out / step
        config = MergeConfiguration.model_validate(yaml.safe_load((folder / MERGEKIT_FILE).read_text()))
        read = [(r.model.path, r.model.revision, r.lora) for r in (m.model for m in config.models or ())]
        if base:
            read.append((config.base_model.model.path, config.base_model.model.revision, config.base_model.lora))
        else:  # a step without base names its first model's tokenizer
            source = config.tokenizer_source
            read.append((source.model.path, source.model.revision, source.lora))
        expected = [f"./models/{names[m]}" for m in ("base", "ft1")]  # as the placed recipe names them
        assert set(read) == {(path, None, None) for path in expected}


def test_a_plain_path_is_written_as_it_was():
    assert local_ref("../models/base") == "../models/base"  # outputs written before keep their text
    assert local_ref("models/base") == "./models/base"
    assert local_ref("/m/a+b") == {"model": {"path": "/m/a+b"}}
