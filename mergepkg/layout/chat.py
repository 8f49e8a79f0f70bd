"""The chat template of a step's output, decided from the models' tokenizer files before
any tensor is read (so `validate` finds a model without the template it is asked for).

A model's template is read as transformers reads it: `chat_template.jinja`, else the
`chat_template` of `tokenizer_config.json` (a string, or a list of named templates, of
which the one named "default"). A step without a `chat_template` setting has the
template of the model whose tokenizer it gets; with one (`recipe/chat.py`):

- `"auto"`: the template most of the step's models have, each taken without its
  surrounding whitespace, as mergekit's `chat_template: auto` picks it; a tie goes to
  the model first in the step (base, then inputs in order; mergekit's order there is
  that of a Python set); no model with a template: the output keeps its tokenizer's;
- a built-in name: mergepkg's template of that name;
- a model's name: that model's template (an error when it has none);
- Jinja text: that text.

The engine writes the decided text (`engine/side_files.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from mergepkg.errors import RecipeError
from mergepkg.layout.types import ModelInfo
from mergepkg.layout.vocab import Vocab
from mergepkg.recipe.chat import builtin_names, builtin_template, template_kind
from mergepkg.recipe.model import Step, Written

TEMPLATE_FILE = "chat_template.jinja"  # transformers' file for a tokenizer's (default) template
CONFIG_FILE = "tokenizer_config.json"  # where older tokenizers keep it, under `chat_template`
LEGACY_FILE = "chat_template.json"  # a processor's template in the older format: { "chat_template": ... }


def template_in(files: Mapping[str, str]) -> str | None:
    """The chat template of a tokenizer given its files' text (name -> text), as transformers
    reads it; None when it has none."""
    if TEMPLATE_FILE in files:
        return files[TEMPLATE_FILE]
    try:
        config = json.loads(files[CONFIG_FILE])
    except (KeyError, ValueError, RecursionError):
        return None
    value = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(value, list):  # named templates: [{ name, template }, ...]
        named = {e.get("name"): e.get("template") for e in value if isinstance(e, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


def read_template_files(folder: Path) -> dict[str, str]:
    """The files of `folder` that can hold its chat template (those it has)."""
    files = {}
    for name in (TEMPLATE_FILE, CONFIG_FILE):
        try:
            files[name] = (folder / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return files


def template_of(info: ModelInfo) -> str | None:
    """A model's chat template: known from its layout, or read from its tokenizer files."""
    if info.template is not None:
        return info.template.text
    if isinstance(info.vocab, Vocab):
        return template_in(info.vocab.files)
    if isinstance(info.vocab, Path):
        return template_in(read_template_files(info.vocab))
    return None


def output_template(step: Step, infos: Mapping[str, ModelInfo], where: Written) -> str | None:
    """The chat template of `step`'s output; None: it has none."""
    inherited = template_of(infos[step.tokenizer_model])
    setting = step.chat_template
    if setting is None:
        return inherited
    kind = template_kind(setting, step.models)
    if kind == "builtin":
        return builtin_template(setting)
    if kind == "text":
        return setting
    if kind == "model":
        text = template_of(infos[setting])
        if text is None:
            raise where.error(
                RecipeError,
                f"{where.key}.chat_template",
                f"{setting!r} has no chat template (no chat_template.jinja, none in its tokenizer_config.json)",
                f"name a model that has one, a built-in template ({', '.join(builtin_names())}), "
                '"auto", or write the template',
            )
        return text
    texts = [text.strip() for m in step.models if (text := template_of(infos[m])) and text.strip()]
    return Counter(texts).most_common(1)[0][0] if texts else inherited
