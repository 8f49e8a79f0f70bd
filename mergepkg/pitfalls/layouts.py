"""Pitfalls a step's layout shows (MP2xx): what its models' configs, tensor headers and
tokenizers say, with the parameters the layout resolved for each output tensor. No
tensor data is read: `validate` checks every step, and `build` every step it lays out,
before the first byte is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mergepkg.layout.align import rows_of, vocab_of
from mergepkg.layout.types import ModelInfo, StepLayout, architecture
from mergepkg.pitfalls.pitfall import Pitfall, model_at, written_name

# MP201: a random density whose expected kept entries of a tensor (density x entries) are
# fewer than this leaves that tensor's task vector to chance: a handful of entries,
# rescaled by 1/density, stand for all of them (their relative spread is about 1/sqrt(kept))
MIN_KEPT = 5.0
SHOWN = 3  # MP203: the tokens a message names


def layout_pitfalls(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> list[Pitfall]:
    """What MP201, MP202 and MP203 find in one step's layout; `infos`: what is known of its models."""
    step = layout.step
    if step.moe is not None or step.adapter is not None:  # no merge of inputs: experts, an adapter
        return []
    return _architectures(layout, infos) + _kept(layout) + _tokens_past_rows(layout, infos)


def _architectures(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> list[Pitfall]:
    """MP202: models of different architectures whose tensors matched (else the layout fails)."""
    step = layout.step
    ref = step.base or step.models[0]
    want = architecture(infos[ref].config)
    found = []
    for model in step.models:
        got = architecture(infos[model].config)
        if got != want:
            name, against = written_name(step, model), written_name(step, ref)
            found.append(
                Pitfall(
                    "MP202",
                    f"{name!r} is {_arch(got)} but {against!r} is {_arch(want)}: their tensors match, so they "
                    f"merge and the output is loaded as {_arch(architecture(layout.config))}",
                    "merge models of one architecture (fine-tunes of one base); if these share their weights' "
                    "meaning (a renamed class, a variant), allow MP202 in [package] allow",
                    step=step.name,
                    at=model_at(step, model),
                )
            )
    return found


def _kept(layout: StepLayout) -> list[Pitfall]:
    """MP201: per input, the tensors where its random density keeps under MIN_KEPT entries."""
    step = layout.step
    if not layout.method.random or layout.method.param("density") is None:
        return []
    sparse: dict[str, list[tuple[float, float, int, str]]] = {}  # model -> (kept, density, entries, tensor)
    for out in layout.tensors:
        entries = math.prod(out.info.shape)
        for part, density in zip(out.inputs, out.params.get("density", ())):
            kept = density * entries
            if kept < MIN_KEPT:
                sparse.setdefault(part.model, []).append((kept, density, entries, out.name))
    found = []
    for model, tensors in sparse.items():
        kept, density, entries, name = min(tensors)
        shown = written_name(step, model)
        more = f", and {len(tensors) - 1} more tensor{'s' if len(tensors) > 2 else ''} under {MIN_KEPT:g}"
        found.append(
            Pitfall(
                "MP201",
                f"density {density:g} keeps on average {kept:.2g} of the {entries} entries of {name}"
                f"{more if len(tensors) > 1 else ''}: what survives, scaled by 1/density, is chance",
                f"raise the density of {shown!r} for small tensors (a filter condition), or use a method that "
                "keeps the largest entries (ties, breadcrumbs), which always keeps at least one",
                step=step.name,
                at=model_at(step, model),
            )
        )
    return found


def _tokens_past_rows(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> list[Pitfall]:
    """MP203: an output tokenizer with tokens whose ids are past the output's embedding rows.

    A tokenizer named as the source (`"base"`, a model) is copied whole, added tokens and
    all, while the rows are cut to the tokens that model has rows for (mergekit does the
    same), so a tokenizer with added tokens past its model's rows (ChatML tokens added
    without resizing the embedding) gives the output ids past vocab_size: the model fails
    on any text with them. A union keeps such tokens with rows from the models that have
    them, so it never shows this."""
    info = layout.info
    vocab, rows = vocab_of(info), rows_of(info)
    if vocab is None or rows is None:
        return []
    past = sorted((i, t) for t, i in vocab.ids.items() if i >= rows)
    if not past:
        return []
    step = layout.step
    tokens = {t for _, t in past}
    having = []  # models of the step with rows for some of them
    for model in step.models:
        own = vocab_of(infos[model])
        if own is not None and tokens & own.within(rows_of(infos[model])).keys():
            having.append(written_name(step, model))
    shown = ", ".join(f"{t!r} (id {i})" for i, t in past[:SHOWN])
    more = f" and {len(past) - SHOWN} more" if len(past) > SHOWN else ""
    source = written_name(step, layout.tokenizer_from)
    if having:
        hint = (
            f'set tokenizer = "union" on the step: the union gives those tokens the rows of {having[0]!r}, which '
            'has them (a tokens table in it, { source = "union", tokens = { ... } }, picks other rows); '
            "see docs/tokenizers.md"
        )
    else:
        hint = (
            f"no model of the step has rows for them ({source!r} fails on them too): take the tokenizer of a "
            "model whose embedding covers its tokens; if those tokens are never used, allow MP203 in [package] allow"
        )
    count = f"{len(past)} token{'s' if len(past) > 1 else ''}"
    return [
        Pitfall(
            "MP203",
            f"the output gets the tokenizer of {source!r}, with {count} past the output's {rows} embedding rows "
            f"({shown}{more}): text with them encodes to ids past vocab_size, and the model fails on it",
            hint,
            step=step.name,
            at="tokenizer" if step.tokenizer is not None else "",
        )
    ]


def _arch(value) -> str:
    """An architecture as a config names it: a list of class names, or a model type."""
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "unnamed"
    return str(value) if value else "unnamed"
