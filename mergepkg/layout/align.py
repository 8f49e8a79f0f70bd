"""Vocabulary alignment: a step's output vocabulary and, for each model it merges,
which of that model's embedding / output-head rows lands on each output row.

`dense.py` asks an `Alignment` (built from configs, headers and tokenizer.json only,
before any tensor is read) for each output tensor's `RowMap`; the engine applies it
(`engine/rows.py`) to the tensors it read, so the method merges row by row on one
vocabulary. Rows an input lacks take mergekit's fallback (`mergekit/tokenizer/embed.py`,
`PermutedVocabulary`), computed over the models of that output tensor:

1. a `tokenizer.tokens` entry for the token: that model's row (of the token, of
   `token`, or of row `token_id`) or zeros; with `force`, every model takes it;
2. else, when exactly one model has the token: that model's row;
3. else, when the step's base has it: the base's row;
4. else the mean of the rows of the models that have it (zeros when none has it).

Models that have the token keep their own row (unless forced), so a task-vector
method sees no difference there: the merge of a token only the base and one input
know is the base row plus that input's weighted delta.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from mergepkg.errors import ModelMismatchError, RecipeError
from mergepkg.layout.types import LAYER, ModelInfo, RowMap, TokenIds
from mergepkg.layout.vocab import TOKENIZER_CONFIGS, Vocab, read_vocab, union
from mergepkg.recipe.model import Step, Written

EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# the tokenizer's own token of each id's role, where an id's token is not in the output's vocabulary
ROLES = {"bos_token_id": "bos_token", "eos_token_id": "eos_token", "pad_token_id": "pad_token"}
HINT = (
    'set tokenizer = { source = "union" } (every model\'s tokens) or tokenizer = { source = "<model>" } '
    "(that model's vocabulary) on the step; see docs/tokenizers.md"
)


def vocab_of(info: ModelInfo) -> Vocab | None:
    """`ModelInfo.vocab` is a `Vocab`, the folder to read one from, or None."""
    return read_vocab(info.vocab) if isinstance(info.vocab, Path) else info.vocab


def rows_of(info: ModelInfo) -> int | None:
    """Embedding rows of a model: its input embedding's first dimension, else config.vocab_size."""
    for name, t in info.tensors.items():
        if len(t.shape) == 2 and not LAYER.match(name) and any(e in name for e in EMBEDDINGS):
            return t.shape[0]
    size = info.config.get("vocab_size", (info.config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) else None


class Alignment:
    """A step's vocabularies checked, its output's chosen, and the row maps onto it.

    `where` locates errors; `key_of(model)` is the key path of a model in the step."""

    def __init__(self, step: Step, infos: dict[str, ModelInfo], where: Written, key_of: Callable[[str], str]):
        self.step, self.infos, self.where, self.key_of = step, infos, where, key_of
        self.models = step.models
        self.rows = {m: rows_of(infos[m]) for m in self.models}
        self.vocabs = {m: vocab_of(infos[m]) for m in self.models}
        self.tokens = {t.token: t for t in step.tokens}
        self.key = f"{where.key}.tokenizer"
        self.maps: dict[tuple[str, ...], RowMap] = {}
        src = step.tokenizer_model
        self.out_vocab = infos[src].vocab  # what the output's tokenizer is: its files are copied
        self.out_rows: int | None = None  # output rows when rows move; None: every model's rows as they are
        self.token_ids = TokenIds()  # special ids of the config's model (the base) in the output
        self.target: dict[str, int] = {}  # output token -> id
        self.token_rows = 0  # output rows before padding to pad_to_multiple_of
        pad = step.pad_to_multiple_of or 1
        ref = self.models[0]
        differ = self.difference(ref)
        if step.tokenizer is None:
            if differ:
                raise self.where.error(
                    ModelMismatchError,
                    self.key_of(differ[0]),
                    f"{differ[0]!r} and {ref!r} have "
                    f"different vocabularies ({differ[1]}) and the step has no tokenizer setting",
                    HINT,
                )
            return
        if not differ and not self.tokens and (self.rows[ref] or 0) % pad == 0:
            return  # one vocabulary already: nothing moves, the output is the step's merge as it is
        vocabs = {m: v for m, v in self.vocabs.items() if v is not None}
        lacking = [m for m in self.models if m not in vocabs]
        if lacking:
            raise self.where.error(
                RecipeError,
                self.key,
                f"{lacking[0]!r} has no tokenizer.json, so its embedding rows cannot be matched to tokens",
                "use models with a tokenizer.json (a fast tokenizer)",
            )
        within = {m: vocabs[m].within(self.rows[m]) for m in self.models}
        if not differ:  # forced tokens or padding on one shared vocabulary: every row stays
            rows = self.rows[ref]
            if rows is None:
                raise self.where.error(
                    RecipeError,
                    self.key,
                    f"{ref!r} has no embedding tensor and no vocab_size in its config, so its rows cannot be counted",
                )
            self.target, self.token_rows = within[ref], rows
        elif step.tokenizer_union:
            try:
                self.out_vocab = union([(vocabs[m], self.rows[m]) for m in self.models])
            except ValueError as e:
                raise self.where.error(
                    RecipeError,
                    self.key,
                    f"cannot build a union on {src!r}: {e}",
                    'use tokenizer = { source = "<model>" } instead',
                ) from None
            self.target = dict(self.out_vocab.ids)
        else:
            self.target = within[src]
        if differ:
            self.token_rows = max(self.target.values()) + 1
        self.out_rows = -(-self.token_rows // pad) * pad  # rounded up, as mergekit pads
        if differ:  # the output's tokenizer: the union, or the source's (every model has one by now)
            out_vocab = self.out_vocab if isinstance(self.out_vocab, Vocab) else vocabs[src]
            self.token_ids = token_ids(within[ref], self.target, role_tokens(out_vocab), self.out_rows)
        self.within = within
        for token in self.tokens:
            if token not in self.target:
                raise self.where.error(
                    RecipeError,
                    f'{self.key}.tokens."{token}"',
                    f"token {token!r} is not in the output's vocabulary",
                    "a union leaves out what the base's BPE reaches without a merge (one character, a byte "
                    "token): it would change how the base's text encodes (docs/tokenizers.md)"
                    if any(token in v.ids for v in vocabs.values())
                    else "name a token of one of the models (as tokenizer.json writes it)",
                )

    def difference(self, ref: str) -> tuple[str, str] | None:
        """The first model whose vocabulary differs from `ref`'s, and how."""
        for m in self.models[1:]:
            if self.rows[m] != self.rows[ref]:
                return m, f"{m!r} has {self.rows[m]} embedding rows, {ref!r} {self.rows[ref]}"
            a, b = self.vocabs[ref], self.vocabs[m]
            if a is None or b is None:
                continue  # nothing to compare: rows alone decide, as before tokenizers were read
            va, vb = a.within(self.rows[ref]), b.within(self.rows[m])
            if va != vb:
                for token, i in sorted(va.items(), key=lambda kv: kv[1]):
                    if vb.get(token) != i:
                        where = f"id {vb[token]}" if token in vb else "missing"
                        return m, f"token {token!r} is id {i} in {ref!r}, {where} in {m!r}"
                token = min(set(vb) - set(va), key=vb.__getitem__)
                return m, f"{m!r} has token {token!r} (id {vb[token]}) that {ref!r} lacks"
        return None

    def update_config(self, config: dict) -> None:
        """The output's config: its vocabulary size, and special token ids (copied from
        the base's config) that name the same tokens in the output's vocabulary, or the
        output tokenizer's own token of that role where that vocabulary lacks theirs."""
        if self.out_rows is not None:
            where = config if "vocab_size" in config or "text_config" not in config else config["text_config"]
            where["vocab_size"] = self.out_rows
        move_token_ids(config, self.token_ids)

    def row_map(self, parts: list[tuple[str, str]]) -> RowMap | None:
        """The rows of the output tensor merged from `parts` ((model, tensor), base first);
        None when its rows stay as they are (not a vocabulary tensor, or nothing moves)."""
        out_rows = self.out_rows
        if out_rows is None:
            return None
        for model, tensor in parts:
            t = self.infos[model].tensors.get(tensor)
            if (
                t is None
                or LAYER.match(tensor)
                or not t.shape
                or t.shape[0] != self.rows[model]
                or (len(t.shape) != 2 and "head" not in tensor)
            ):
                return None
        models = tuple(m for m, _ in parts)
        if models not in self.maps:  # the embedding and the head usually share one
            self.maps[models] = self._row_map(models, out_rows)
        return self.maps[models]

    def _row_map(self, models: tuple[str, ...], out_rows: int) -> RowMap:
        n = self.token_rows
        if all(self.rows[m] == n and self.within[m] == self.target for m in models):
            own = [list(range(n)) for _ in models]
        else:
            own = [[-1] * n for _ in models]
            for p, m in enumerate(models):
                have = self.within[m]
                for token, j in self.target.items():
                    i = have.get(token)
                    if i is not None:
                        own[p][j] = i
        base = models.index(self.step.base) if self.step.base in models else None
        fallbacks = {}
        for token, j in self.target.items():
            cfg = self.tokens.get(token)
            present = [p for p in range(len(models)) if own[p][j] >= 0]
            if len(present) == len(models) and not (cfg and cfg.force):
                continue
            if cfg:
                how = self.configured(cfg, models, own, j)
            elif len(present) == 1:
                how = ("row", present[0], own[present[0]][j])
            elif not present:
                how = ("zero",)
            elif base in present:
                how = ("row", base, own[base][j])
            else:
                how = ("mean", tuple((p, own[p][j]) for p in present))
            fallbacks[j] = how
        for token, cfg in self.tokens.items():
            if cfg.force:
                for p in range(len(models)):
                    own[p][self.target[token]] = -1
        for j in range(n):  # rows no token names (holes in an id range)
            if j not in fallbacks and any(o[j] < 0 for o in own):
                fallbacks[j] = ("zero",)
        padding = [-1] * (out_rows - n)
        return RowMap(
            out_rows,
            tuple(tuple(o + padding) for o in own),
            tuple(sorted(fallbacks.items())),
            n if padding else None,
        )

    def configured(self, cfg, models: tuple[str, ...], own, j: int) -> tuple:
        key = f'{self.key}.tokens."{cfg.token}".source'
        if cfg.model is None:
            return ("zero",)
        if cfg.model not in models:
            raise self.where.error(
                RecipeError,
                key,
                f"{cfg.model!r} is not merged into the embedding rows here",
                "with slices, embeddings come from the first slice's models and the head from the last's",
            )
        p = models.index(cfg.model)
        if cfg.from_id is not None:
            row = cfg.from_id
            if row >= self.rows[cfg.model]:
                raise self.where.error(
                    RecipeError, key, f"token_id {row} is past the {self.rows[cfg.model]} rows of {cfg.model!r}"
                )
        else:
            token = cfg.from_token or cfg.token
            row = self.within[cfg.model].get(token, -1)
            if row < 0:
                raise self.where.error(
                    RecipeError,
                    key,
                    f"{cfg.model!r} has no token {token!r}",
                    'name a model that has it, or { kind = "zero" }',
                )
        return ("row", p, row)


def role_tokens(vocab: Vocab) -> dict[str, str]:
    """A tokenizer's own bos, eos and pad tokens (`bos_token`, ... in tokenizer_config.json,
    else special_tokens_map.json; a token is a string or an AddedToken's `content`)."""
    out: dict[str, str] = {}
    for name in TOKENIZER_CONFIGS:
        try:
            config = json.loads(vocab.files.get(name, "{}"))
        except (ValueError, RecursionError):
            continue  # a file transformers could not read either: the other may name them
        if not isinstance(config, dict):
            continue
        for role in ROLES.values():
            value = config.get(role)
            token = value.get("content") if isinstance(value, dict) else value
            if isinstance(token, str) and role not in out:
                out[role] = token
    return out


def token_ids(within: Mapping[str, int], target: Mapping[str, int], roles: Mapping[str, str], rows: int) -> TokenIds:
    """The special ids of a model whose vocabulary is `within` (token -> id) in an output whose
    vocabulary is `target`: each token's id there; ids whose token `target` lacks take the
    token of their role that the output's tokenizer names (`roles`), or null when it names
    none or `target` lacks it (a pad id past vocab_size is a model transformers refuses)."""
    moved = {i: target[t] for t, i in within.items() if t in target and target[t] != i}
    gone = frozenset(i for t, i in within.items() if t not in target)
    by_key = {key: target.get(roles.get(role, "")) for key, role in ROLES.items()}
    return TokenIds(moved, gone, by_key, rows)


def move_token_ids(config: dict, ids: TokenIds) -> dict:
    """`config` (config.json, generation_config.json) with its special token ids as `ids` says:
    moved with their tokens; an id whose token is gone (or past the output's rows) replaced by
    the output tokenizer's token of its role, else null (dropped from a list)."""
    for key in TOKEN_ID_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            config[key] = _moved(value, key, ids)
        elif isinstance(value, list):
            kept = [_moved(v, key, ids) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            if kept != value:  # a list of ids, each once; none left: null
                config[key] = list(dict.fromkeys(v for v in kept if v is not None)) or None
    if isinstance(config.get("text_config"), dict):
        move_token_ids(config["text_config"], ids)
    return config


def _moved(value: int, key: str, ids: TokenIds) -> int | None:
    if value in ids.moved:
        return ids.moved[value]
    if value in ids.gone or (ids.rows is not None and value >= ids.rows):
        return ids.roles.get(key)
    return value
