"""Vocabularies: a model's tokens read from its `tokenizer.json`, and the union of several.

A `Vocab` is what `layout.py` needs to align embedding rows (token -> id) and what the
engine needs to write a tokenizer (the files' text). The union follows mergekit's
`build_union_tokenizer` in what it holds (every token of every model, added tokens
with their settings) but not in how: mergekit adds another model's ordinary tokens as
*added* tokens, which the tokenizer then matches in raw text before its model runs
(a BPE token `ing` would split every "ing" out of words). Here they join the base's
model vocabulary without merges, except those a BPE base reaches without a merge (one
character, `reached_unmerged`): they would replace the base's byte or unknown tokens for
that character, so they are left out, with their rows. With a BPE base that applies its
merges the union encodes text exactly as the base does (a base that looks whole words up
first, WordPiece or BPE with `ignore_merges`, may use another model's token for a word),
each model's added and special tokens encode to single ids, and every token decodes. Added
tokens are also entered in the model vocabulary (as trained BPE tokenizers enter their
special tokens), because the tokenizers library renumbers, on loading, any added token
its model lacks.

Order (the ids), a documented invariant tests check: the base's (else the first
model's) tokens keep their ids; then each other model of the step, in the step's order
(inputs in recipe order), appends the tokens the union lacks, in that model's id order.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.errors import SourceError

# The tokenizer files a union writes; the other tokenizer files (tokenizer.model,
# vocab.json, merges.txt, added_tokens.json) describe the old vocabulary and are dropped.
FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
SPECIAL_LISTS = ("extra_special_tokens", "additional_special_tokens")  # transformers 5, 4

TOKENIZER_CONFIGS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
)  # where a tokenizer names its special tokens, first first


@dataclass(frozen=True)
class Vocab:
    ids: Mapping[str, int]  # every token of tokenizer.json (model vocabulary and added tokens) -> id
    added: Mapping[str, dict] = field(repr=False)  # content -> tokenizer.json `added_tokens` entry
    files: Mapping[str, str] = field(repr=False, compare=False)  # FILES present -> their text
    made: bool = False  # built by a union step: the engine writes `files` rather than copying

    def within(self, rows: int | None) -> dict[str, int]:
        """The tokens that have an embedding row (id < rows), as mergekit strips the rest."""
        return dict(self.ids) if rows is None else {t: i for t, i in self.ids.items() if i < rows}


def read_vocab(folder: Path) -> Vocab | None:
    """The vocabulary of the model in `folder`; None without a tokenizer.json."""
    path = folder / "tokenizer.json"
    try:
        st = path.stat()
    except OSError:
        return None
    return _read(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)  # a large tokenizer.json is ~10 MB of text
def _read(path: Path, size: int, mtime_ns: int) -> Vocab:  # size and mtime: a rewritten file is read again
    files = {}
    for name in FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # a file it does not have
            files[name] = (path.parent / name).read_text(encoding="utf-8")
    try:
        data = json.loads(files["tokenizer.json"])
        vocab = data.get("model", {}).get("vocab", {})
        ids = dict(vocab) if isinstance(vocab, dict) else {row[0]: i for i, row in enumerate(vocab)}  # Unigram: a list
        added = {}
        for entry in data.get("added_tokens", []):
            ids[entry["content"]] = entry["id"]
            added[entry["content"]] = entry
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise SourceError(
            f"cannot read tokenizer.json: {type(e).__name__}: {e}",
            file=path,
            hint="the tokenizer files of this model are damaged or not a Hugging Face tokenizer.json",
        ) from None
    return Vocab(ids, added, files)


def union(parts: list[tuple[Vocab, int | None]]) -> Vocab:
    """The union of `parts` ((vocabulary, embedding rows) in the step's order, the
    base first); raises ValueError when the first tokenizer cannot take new tokens."""
    first, _ = parts[0]
    data = json.loads(first.files["tokenizer.json"])
    model_vocab = data.get("model", {}).get("vocab")
    if not isinstance(model_vocab, dict):
        raise ValueError(
            f"its tokenizer model is {data.get('model', {}).get('type')}; a union extends "
            "BPE, WordPiece and WordLevel vocabularies only"
        )
    model = data["model"]
    ids = dict(first.ids)  # the base keeps every id, even past its rows (those rows come from others)
    added = list(data.get("added_tokens", []))
    for entry in added:  # the tokenizers library renumbers added tokens its model lacks: it must have them
        model_vocab.setdefault(entry["content"], entry["id"])
    specials = []
    following = max(ids.values(), default=-1) + 1
    for vocab, rows in parts[1:]:
        for token, _ in sorted(vocab.within(rows).items(), key=lambda kv: kv[1]):
            if token in ids or (token not in vocab.added and reached_unmerged(model, token)):
                continue  # the base's already, or a token that would change how the base encodes text
            ids[token] = model_vocab[token] = following  # no merges reach it: text encodes as the base's does
            if token in vocab.added:
                added.append(dict(vocab.added[token], id=following))
                if vocab.added[token].get("special"):
                    specials.append(token)
            following += 1
    data["added_tokens"] = added
    files = dict(first.files)
    files["tokenizer.json"] = _dump(data)
    for name in TOKENIZER_CONFIGS:
        if name in files:
            config = json.loads(files[name])
            files[name] = _dump(_with_specials(config, specials, added, add_list=name == "tokenizer_config.json"))
    return Vocab(ids, {e["content"]: e for e in added}, files, made=True)


def reached_unmerged(model: Mapping[str, Any], token: str) -> bool:
    """Whether the tokenizer model `model` (tokenizer.json's) would produce `token` from text
    without applying a merge, so that entering it in its vocabulary changes how text encodes.

    A BPE model cuts each word into characters, the first as it is, the others after its
    `continuing_subword_prefix` and the last with its `end_of_word_suffix`, and looks each
    piece up before merging; a piece it lacks becomes byte tokens (`byte_fallback`, as
    Llama-2's and Mistral's), its `unk_token`, or nothing. So a token of one character
    (with that prefix or suffix), or a byte token `<0xNN>` of a byte-fallback base, that the
    base lacks would replace those, and any longer
    token needs merges the base does not have. The normalizer and pre-tokenizer only decide
    the words, which are cut the same way. WordPiece and WordLevel models look words up
    whole (docs/tokenizers.md says what a union does to them): none is reached by this rule."""
    if model.get("type", "BPE" if "merges" in model else None) != "BPE":
        return False
    if model.get("byte_fallback") and re.fullmatch(r"<0x[0-9A-F]{2}>", token):
        return True  # a character the base lacks becomes these, looked up without a merge
    prefixes = {"", model.get("continuing_subword_prefix") or ""}
    suffixes = {"", model.get("end_of_word_suffix") or ""}
    return any(
        token.startswith(p) and token.endswith(s) and len(token) - len(p) - len(s) == 1
        for p in prefixes
        for s in suffixes
    )


def _with_specials(config: dict, specials: list[str], added: list[dict], *, add_list: bool) -> dict:
    """A tokenizer config that also names the new special tokens (and, where it lists
    added tokens by id, lists the new ones)."""
    lists = [k for k in SPECIAL_LISTS if isinstance(config.get(k), list)]
    named = any(isinstance(config.get(k), dict) for k in SPECIAL_LISTS)  # {name: token}: kept as it is
    if specials and not lists and not named and add_list:  # transformers 5 configs carry `backend`
        lists = [SPECIAL_LISTS[0] if "backend" in config else SPECIAL_LISTS[1]]
        config[lists[0]] = []
    for key in lists:
        have = {t if isinstance(t, str) else t.get("content") for t in config[key]}
        config[key] = config[key] + [t for t in specials if t not in have]
    if isinstance(config.get("added_tokens_decoder"), dict):
        for e in added:
            config["added_tokens_decoder"].setdefault(str(e["id"]), {k: v for k, v in e.items() if k != "id"})
    return config


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
