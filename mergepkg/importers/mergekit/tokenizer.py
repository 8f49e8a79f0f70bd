"""Which tokenizer the output gets: mergekit's `tokenizer_source` and `tokenizer` block
(source, tokens and their embeddings, pad_to_multiple_of) as the step's `tokenizer`, and
its `chat_template` as the step's."""

from __future__ import annotations

from typing import Any

from mergepkg.importers.mergekit.context import Context, Step
from mergepkg.importers.mergekit.refs import Refs
from mergepkg.recipe.chat import AUTO, builtin_names, is_template_text
from mergepkg.recipe.tables import show


def tokenizer_source(
    ctx: Context, refs: Refs, step: Step, value: Any, base: str | None, key: str = "tokenizer_source"
) -> None:
    """`tokenizer_source`: "union", "base" or one of the models merged here."""
    if value is None:
        return
    if value == "union":
        step.union = True
        ctx.note(
            "union: the other models' ordinary tokens join the base's tokenizer model without merges "
            "(mergekit adds them as added tokens), so text encodes as the base encodes it; those of one "
            "character the base lacks are left out, as they would change that; see docs/tokenizers.md",
            key,
        )
        return
    if value == "base":
        if step.base is not None:
            step.tokenizer = step.base
        elif base is not None and base in step.models:
            step.tokenizer = base
        elif step.models:  # mergekit: the first of its referenced models (a set, so its pick may differ)
            step.tokenizer = step.models[0]
            ctx.note(
                "tokenizer source base without a base_model: the first model of the step; mergekit takes "
                "the first of its referenced models, which it keeps in a set, so its pick may differ "
                "(name the model to be sure)",
                key,
            )
    else:
        name = refs.model_ref(value, key)
        if name not in step.models:
            raise ctx.error(
                key,
                f"tokenizer_source {value!r} is not one of the models merged here",
                "mergepkg copies the tokenizer of the base or of an input",
            )
        step.tokenizer = name


def tokenizer_block(ctx: Context, refs: Refs, step: Step, value: Any, base: str | None) -> None:
    """mergekit's `tokenizer: { source, tokens: { tok: { source, force } } }`."""
    if value is None:
        return
    key = "tokenizer"
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a mapping with `source` and `tokens`, got {show(value)}")
    ctx.only_keys(value, ("source", "tokens", "pad_to_multiple_of"), key)
    pad = value.get("pad_to_multiple_of")
    if pad is not None:
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
            raise ctx.error(f"{key}.pad_to_multiple_of", f"expected a positive integer, got {show(pad)}")
        step.pad_to_multiple_of = pad
    source = value.get("source", "union")  # mergekit's default
    tokenizer_source(ctx, refs, step, source, base, f"{key}.source")
    tokens = value.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise ctx.error(f"{key}.tokens", f"expected a mapping of tokens, got {show(tokens)}")
    for token, entry in tokens.items():
        tkey = f"{key}.tokens.{token}"
        if not isinstance(entry, dict) or entry.get("source") is None:
            raise ctx.error(tkey, "expected { source: <model> } (and `force`)")
        ctx.only_keys(entry, ("source", "force"), tkey)
        out: dict[str, Any] = {"source": _token_source(ctx, refs, step, entry["source"], f"{tkey}.source")}
        force = entry.get("force", False)
        if not isinstance(force, bool):
            raise ctx.error(f"{tkey}.force", f"expected true or false, got {show(force)}")
        if force:
            out["force"] = True
        step.tokens[str(token)] = out


def _token_source(ctx: Context, refs: Refs, step: Step, src: Any, key: str) -> Any:
    """A model merged here, { kind: zero } or { kind: model_token, model, token | token_id }."""
    if isinstance(src, dict) and src.get("kind") == "zero":
        ctx.only_keys(src, ("kind",), key)
        return {"kind": "zero"}
    if isinstance(src, dict):
        ctx.only_keys(src, ("kind", "model", "token", "token_id"), key)
        if src.get("kind") != "model_token":
            raise ctx.error(f"{key}.kind", f"unknown kind {src.get('kind')!r}", 'expected "zero" or "model_token"')
        if (src.get("token") is None) == (src.get("token_id") is None):
            raise ctx.error(key, "expected exactly one of `token` or `token_id`")
        token_id = src.get("token_id")
        if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0):
            raise ctx.error(f"{key}.token_id", f"expected a token id (an integer from 0), got {show(token_id)}")
        name = _token_model(ctx, refs, step, src.get("model"), f"{key}.model")
        which = {"token": str(src["token"])} if src.get("token") is not None else {"token_id": src["token_id"]}
        return {"model": name, **which}
    return _token_model(ctx, refs, step, src, key)


def _token_model(ctx: Context, refs: Refs, step: Step, value: Any, key: str) -> str:
    """The name of a model merged here that a token's embedding comes from."""
    if value is None:
        raise ctx.error(key, "missing the model")
    name = refs.model_ref(value, key)
    if name not in step.models:
        raise ctx.error(
            key,
            f"{value!r} is not one of the models merged here",
            "a token's embedding comes from the base or an input",
        )
    return name


def chat_template(ctx: Context, value: Any, key: str = "chat_template") -> str | None:
    """`chat_template`: "auto", a built-in template's name or the template's Jinja text."""
    if value is None or value == "":
        return None  # mergekit sets no template for an empty one either
    if not isinstance(value, str):
        raise ctx.error(key, f"expected a chat template (auto, a built-in name or Jinja text), got {show(value)}")
    if value == AUTO:
        ctx.note(
            "chat_template auto: the template most of the step's models have; a tie goes to the first "
            "model in the step (mergekit's pick among tied templates is arbitrary)",
            key,
        )
    elif value in builtin_names():
        ctx.note(
            f"chat_template {value!r}: mergepkg's own template of the {value} format, written from its published "
            "description (mergekit ships its own file of that name; the two may differ in whitespace)",
            key,
        )
    elif not is_template_text(value):
        raise ctx.error(
            key,
            f"invalid chat template {value!r}",
            "expected auto, a built-in name (" + ", ".join(builtin_names()) + ") or a Jinja template; "
            "mergekit refuses this too",
        )
    return value
