"""mergekit's base_model for a method without a base: not merged (slices) or merged as one
more input (linear), and in both the model whose config.json, side files and tokenizer the
output gets. Imported, mergepkg writes the same as mergekit 0.1.5 does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import build_recipe, load_tensors

from mergepkg.importers.mergekit import convert_file

pytestmark = pytest.mark.slow  # runs mergekit beside mergepkg

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def donor(models, tmp_path_factory) -> Path:
    """The base with a config, generation config and chat template of its own."""
    folder = shutil.copytree(models["base"], tmp_path_factory.mktemp("donor") / "donor")
    config = json.loads((folder / "config.json").read_text())
    config.update(max_position_embeddings=256)
    if isinstance(config.get("rope_parameters"), dict):  # transformers 5 keeps it there
        config["rope_parameters"]["rope_theta"] = 5000.0
    else:
        config["rope_theta"] = 5000.0
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "top_k": 7}))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "chat_template": TEMPLATE}))
    return folder


def rope_theta(config: dict) -> float | None:
    return config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")


@pytest.mark.parametrize("shape", ["passthrough", "linear"])
def test_the_output_is_described_by_base_model_as_mergekit_does(shape, donor, models, tmp_path):
    if shape == "passthrough":
        config = {
            "merge_method": "passthrough",
            "base_model": str(donor),
            "slices": [
                {"sources": [{"model": str(models["ft1"]), "layer_range": [0, 3]}]},
                {"sources": [{"model": str(models["ft2"]), "layer_range": [1, 4]}]},
            ],
            "dtype": "float32",
        }
    else:
        config = {
            "merge_method": "linear",
            "base_model": str(donor),
            "models": [{"model": str(models[m]), "parameters": {"weight": w}} for m, w in (("ft1", 0.5), ("ft2", 0.3))],
            "parameters": {"weight": 0.2},  # base_model's: mergekit merges it as one more input
            "dtype": "float32",
        }
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    theirs = tmp_path / "mergekit"
    proc = subprocess.run(
        [str(MERGEKIT_YAML), str(tmp_path / "c.yml"), str(theirs), "--no-cuda", "--quiet", "--no-write-model-card"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    convert_file(tmp_path / "c.yml", output=tmp_path / "r.toml")
    (ours,) = build_recipe(tmp_path / "r.toml", tmp_path / "out").outputs.values()

    a, b = load_tensors(ours), load_tensors(theirs)
    assert sorted(a) == sorted(b) and all(a[k].equal(b[k]) for k in a)
    mine, mk = json.loads((ours / "config.json").read_text()), json.loads((theirs / "config.json").read_text())
    for key in ("max_position_embeddings", "num_hidden_layers", "architectures", "vocab_size"):
        assert mine.get(key) == mk.get(key), key
    assert rope_theta(mine) == rope_theta(mk) == 5000.0  # transformers 5 writes it in rope_parameters
    assert mine["max_position_embeddings"] == 256
    assert json.loads((ours / "generation_config.json").read_text())["top_k"] == 7
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(ours).chat_template == AutoTokenizer.from_pretrained(theirs).chat_template
    assert AutoTokenizer.from_pretrained(ours).chat_template == TEMPLATE
