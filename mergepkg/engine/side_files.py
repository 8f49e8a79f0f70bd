"""The files of an output besides its tensors: config.json from the layout; the
generation config and tokenizer copied from the models they come from (special token
ids moved with a moved vocabulary; a union's tokenizer written); the chat template the
layout decided, written as transformers writes one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mergepkg.io.folder import TOKENIZER_FILES
from mergepkg.layout.align import move_token_ids
from mergepkg.layout.chat import CONFIG_FILE, LEGACY_FILE, TEMPLATE_FILE, read_template_files, template_in
from mergepkg.layout.types import StepLayout
from mergepkg.layout.vocab import Vocab


def write_side_files(layout: StepLayout, folders: dict[str, Path], out_dir: Path) -> None:
    """config.json from the layout; generation config and tokenizer copied from their sources
    (special token ids moved with a moved vocabulary; a union's tokenizer written); the chat template."""
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
    else:
        for name in TOKENIZER_FILES:
            src = folders[layout.tokenizer_from] / name
            if src.is_file():
                shutil.copyfile(src, out_dir / name)
    write_chat_template(out_dir, layout.chat_template, always=layout.step.chat_template is not None)


def write_chat_template(out_dir: Path, template: str | None, *, always: bool = False) -> None:
    """Make the tokenizer files in `out_dir` hold `template` (None: no template) as transformers
    saves one: `chat_template.jinja`, no `chat_template` in tokenizer_config.json, no
    chat_template.json. Files that hold it already are left as they are, unless `always`
    (a step's own setting is always written that way)."""
    files = read_template_files(out_dir)
    if template_in(files) == template and not (always and template is not None):
        return
    try:
        config = json.loads(files[CONFIG_FILE])
    except (KeyError, ValueError, RecursionError):
        config = None  # no config, or one transformers could not read either: the .jinja file decides
    if isinstance(config, dict) and "chat_template" in config:
        del config["chat_template"]
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / LEGACY_FILE).unlink(missing_ok=True)
    if template is None:
        (out_dir / TEMPLATE_FILE).unlink(missing_ok=True)
    else:
        (out_dir / TEMPLATE_FILE).write_text(template, encoding="utf-8")
