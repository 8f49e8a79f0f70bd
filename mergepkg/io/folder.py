"""A Hugging Face model folder: which files hold its weights, and which others a merge uses."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mergepkg.errors import SourceError

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHTS, BIN_WEIGHTS = "model.safetensors", "pytorch_model.bin"  # one file: what transformers writes unsharded
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
TOKENIZER_FILES = [f for f in SIDE_FILES if f not in ("config.json", "generation_config.json")]
TOKENIZER_CONFIG = "tokenizer_config.json"  # every Hugging Face tokenizer has one: transformers reads it first
# The files a build writes into an artifact (a step's folder in the store), besides the
# shards `SHARD_FILE` names (io/writer.shard_names): one unsharded safetensors file, the
# index of several (io/writer.write_index), and the side files (engine/side_files.py:
# config, generation config, tokenizer, chat template). A remote's pull refuses any other
# name (remote/record.is_artifact_file): an artifact never holds code.
ARTIFACT_FILES = (WEIGHTS, INDEX, *SIDE_FILES)
SHARD_FILE = re.compile(r"model-[0-9]{5,}-of-[0-9]{5,}\.safetensors")


# A PEFT adapter folder (a LoRA adapter applied with `base+adapter`): its config and weights
# (one format, safetensors first), all that applying it reads.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter_folder(folder: Path) -> bool:
    """Whether `folder` holds a PEFT adapter rather than a model: adapter_config.json and no config.json."""
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def adapter_files(folder: Path) -> list[str]:
    """The files of a PEFT adapter folder that applying it reads: its config and weights."""
    if not (folder / ADAPTER_CONFIG).is_file():
        what = "a model folder" if (folder / "config.json").is_file() else "no adapter"
        raise SourceError(
            f"not a PEFT adapter: no {ADAPTER_CONFIG} ({what})",
            file=folder,
            hint="after a `+` comes a LoRA adapter: a folder or Hugging Face repo with "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS[0]}",
        )
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return sorted([ADAPTER_CONFIG, name])
    raise SourceError(
        f"PEFT adapter without weights (expected {' or '.join(ADAPTER_WEIGHTS)})",
        file=folder,
        hint="download or save the adapter again",
    )


def weight_choice(names: Iterable[str]) -> tuple[str | None, list[str]]:
    """Which of a model's files (`names`, as listed in its folder or repo) hold its
    weights, in mergekit's order, as transformers finds them: the safetensors index (the
    files it names: `(index, [])`), else `model.safetensors`, else the .bin index, else
    `pytorch_model.bin`; a model with none of these, every weight file at its top level
    (`(None, files)`). Files in subfolders (a trainer's `checkpoint-500/`), PEFT adapters
    and copies beside `model.safetensors` (`model.fp16.safetensors`) are no part of the
    model. The one rule for a folder (`weight_files`) and a hub download."""
    top = sorted(n for n in names if "/" not in n and not n.startswith("adapter_model"))
    for index, single in ((INDEX, WEIGHTS), (BIN_INDEX, BIN_WEIGHTS)):
        if index in top:
            return index, []
        if single in top:
            return None, [single]
    found = [n for n in top if n.endswith(".safetensors")]
    return None, found or [n for n in top if fnmatch.fnmatchcase(n, "pytorch_model*.bin")]


def weight_files(folder: Path) -> list[str]:
    """The files holding the weights of the model in `folder` (`weight_choice`)."""
    return _weights(folder)[1]


def _weights(folder: Path) -> tuple[str | None, list[str]]:
    """(the index read, or None; the weight files: those the index names, each a file
    inside the folder that exists, else the files chosen)."""
    index, files = weight_choice(p.name for p in folder.iterdir())
    if index is not None:
        return index, _indexed(folder, index)
    for name in files:
        if not (folder / name).is_file():
            raise SourceError(
                "not a readable file (a folder, or a link that leads nowhere)",
                file=folder / name,
                hint="a model's weights are files in its folder",
            )
    if not files:
        raise SourceError("no model weights found (expected *.safetensors or pytorch_model.bin)", file=folder)
    return None, files


def index_map(folder: Path) -> dict[str, str] | None:
    """The weight map (tensor -> file) of the index `weight_files` reads, or None."""
    index, _ = weight_choice(p.name for p in folder.iterdir())
    return None if index is None else _weight_map(folder / index)


def _indexed(folder: Path, index: str) -> list[str]:
    path = folder / index
    names = index_files(path)
    for name in names:
        if not (folder / name).is_file():
            raise SourceError(
                f"the weight index names {name}, which is missing",
                file=path,
                hint="download the model again: a shard is missing",
            )
    return names


def index_files(path: Path) -> list[str]:
    """The shard files a weight index names, each a file beside it (checked by name: a
    Hugging Face snapshot's files link into its blobs/, and a download reads the index
    before the shards are there)."""
    values = list(_weight_map(path).values())
    for name in values:
        parts = name.split("/") if isinstance(name, str) and name else [".."]
        if ".." in parts or PurePosixPath(name).is_absolute() or any("\\" in p or "\x00" in p for p in parts):
            raise SourceError(
                f"the weight index names {name!r}, which is not a file inside the model folder",
                file=path,
                hint="a shard is named by its file name, beside the index",
            )
    return sorted(set(values))


def _weight_map(path: Path) -> dict:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise SourceError(f"unreadable weight index: {type(e).__name__}: {e}", file=path) from None
    if not isinstance(weight_map, dict):
        raise SourceError("unreadable weight index: its weight_map is no JSON object", file=path)
    return weight_map


def used_files(folder: Path) -> list[str]:
    """The files of a model folder a merge reads or copies: weights (one format), the
    index it reads them by, configs and tokenizer files."""
    index, files = _weights(folder)
    names = {*files, *([index] if index else [])}
    names |= {n for n in SIDE_FILES if (folder / n).is_file()}
    return sorted(names)
