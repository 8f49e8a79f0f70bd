"""A Hugging Face model folder: which files hold its weights, and which others a merge uses."""

from __future__ import annotations

import json
from pathlib import Path

from mergepkg.errors import SourceError

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Everything but weights that a merged model folder needs.
SIDE_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
]


def weight_files(folder: Path) -> list[str]:
    """The files holding a model's weights, preferring safetensors over .bin."""
    for index in (INDEX, BIN_INDEX):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return sorted(set(weight_map.values()))
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p.name for p in folder.glob(pattern))
        if files:
            return files
    raise SourceError("no model weights found (expected *.safetensors or pytorch_model.bin)", file=folder)


def used_files(folder: Path) -> list[str]:
    """The files of a model folder a merge reads or copies: weights (one format), the
    weight index, configs and tokenizer files."""
    names = set(weight_files(folder))
    names |= {n for n in (INDEX, BIN_INDEX, *SIDE_FILES) if (folder / n).is_file()}
    return sorted(names)
