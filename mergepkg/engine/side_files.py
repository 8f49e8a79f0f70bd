"""The files of an output besides its tensors: config.json from the layout; the
generation config and tokenizer copied from the models they come from (special token
ids moved with a moved vocabulary; a union's tokenizer written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mergepkg.io.folder import SIDE_FILES
from mergepkg.layout.align import move_token_ids
from mergepkg.layout.types import StepLayout
from mergepkg.layout.vocab import Vocab

TOKENIZER_FILES = [f for f in SIDE_FILES if f not in ("config.json", "generation_config.json")]


def write_side_files(layout: StepLayout, folders: dict[str, Path], out_dir: Path) -> None:
    """config.json from the layout; generation config and tokenizer copied from their sources
    (special token ids moved with a moved vocabulary; a union's tokenizer written)."""
    (out_dir / "config.json").write_text(json.dumps(layout.config, indent=2, sort_keys=True) + "\n")
    gen = folders[layout.config_from] / "generation_config.json"
    if gen.is_file() and layout.token_ids:  # the vocabulary moved: so do its special token ids
        moved = move_token_ids(json.loads(gen.read_text()), layout.token_ids)
        (out_dir / "generation_config.json").write_text(json.dumps(moved, indent=2, sort_keys=True) + "\n")
    elif gen.is_file():
        shutil.copyfile(gen, out_dir / "generation_config.json")
    if isinstance(layout.vocab, Vocab) and layout.vocab.made:  # a union: this step's own tokenizer
        for name, text in layout.vocab.files.items():
            (out_dir / name).write_text(text, encoding="utf-8")
        return
    for name in TOKENIZER_FILES:
        src = folders[layout.tokenizer_from] / name
        if src.is_file():
            shutil.copyfile(src, out_dir / name)
