"""A step's `tokenizer` setting: whose tokenizer the output gets ("base", "union" or an
input), and `tokens`: where single tokens' embedding rows come from (docs/tokenizers.md)."""

from __future__ import annotations

from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import TokenSource
from mergepkg.recipe.tables import TableReader, show


def tokenizer_setting(
    r: TableReader, value: Any, key: str, models: tuple[str, ...], base: str | None
) -> tuple[str | None, tuple[TokenSource, ...], int | None]:
    """`tokenizer = "<source>"` or `{ source = ..., tokens = { "<tok>" = { source = ... } } }`
    -> (source, tokens, pad_to_multiple_of). The table's source defaults to "union", as mergekit's does;
    "base" in a step without a base is its first model, as mergekit's (`Step.tokenizer_model`)."""
    if value is None:
        return None, (), None
    table = value if isinstance(value, dict) else None
    pad = None
    if table is not None:
        r.only_keys(table, ("source", "tokens", "pad_to_multiple_of"), key)
        value = table.get("source", "union")
        if "pad_to_multiple_of" in table:
            pad = r.expect(table["pad_to_multiple_of"], int, f"{key}.pad_to_multiple_of", "a positive integer")
            if pad < 1:
                raise r.error(f"{key}.pad_to_multiple_of", f"expected a positive integer, got {pad}")
    skey = f"{key}.source" if table is not None else key
    r.expect(value, str, skey, '"base", "union" or the name of a model of this step')
    if value != "base" and value not in models and value != "union":  # "base" without a base: the first model
        raise r.error(skey, f"{value!r} is not a model of this step", did_you_mean(value, ["base", "union", *models]))
    tokens = []
    for token, entry in r.expect((table or {}).get("tokens", {}), dict, f"{key}.tokens", "a table of tokens").items():
        tkey = f"{key}.tokens.{key_name(token)}"
        r.expect(entry, dict, tkey, '{ source = "<model>" }')
        r.only_keys(entry, ("source", "force"), tkey)
        force = r.expect(entry.get("force", False), bool, f"{tkey}.force", "true or false")
        tokens.append(token_source(r, token, entry.get("source"), force, f"{tkey}.source", models, base))
    return value, tuple(tokens), pad


def token_source(
    r: TableReader, token: str, src: Any, force: bool, key: str, models: tuple[str, ...], base: str | None
) -> TokenSource:
    """`"<model>"`, mergekit's `{ kind = "zero" }` or `{ model = ..., token = ... | token_id = ... }`."""
    from_token = from_id = None
    if isinstance(src, dict):
        r.only_keys(src, ("kind", "model", "token", "token_id"), key)
        kind = src.get("kind", "model_token")
        if kind == "zero":
            if len(src) > 1:
                raise r.error(key, 'a { kind = "zero" } source takes no other keys')
            return TokenSource(token, None, force=force)
        if kind != "model_token":
            raise r.error(f"{key}.kind", f"unknown kind {kind!r}", 'expected "zero" or "model_token"')
        if ("token" in src) == ("token_id" in src):
            raise r.error(
                key, "expected exactly one of `token` or `token_id`", 'e.g. { model = "chat", token = "<|im_end|>" }'
            )
        if "token" in src:
            from_token = r.expect(src["token"], str, f"{key}.token", "a token")
        elif type(src["token_id"]) is not int or src["token_id"] < 0:
            raise r.error(f"{key}.token_id", f"expected a row index >= 0, got {show(src['token_id'])}")
        else:
            from_id = src["token_id"]
        model, key = src.get("model"), f"{key}.model"
    else:
        model = src
    model = r.expect(model, str, key, "the name of a model of this step")
    if model == "base" and base and "base" not in models:
        model = base
    if model not in models:
        raise r.error(key, f"{model!r} is not a model of this step", did_you_mean(model, models))
    return TokenSource(token, model, from_token, from_id, force)
