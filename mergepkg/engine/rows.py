"""Vocabulary rows moved as they are read: a layout's `RowMap` (layout/align.py) applied
to the tensors of one embedding or output head, so the method merges row by row on one
vocabulary and never sees a tokenizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mergepkg._lazy import torch
from mergepkg.layout.types import RowMap


def align_rows(m: RowMap, tensors: list, done: Callable[[Any], None] | None = None) -> list:
    """The tensors of one vocabulary tensor's parts, each as `m.rows` aligned rows
    ([rows, *rest], in the parts' promoted dtype, as mergekit promotes them).

    `tensors` is consumed: once its aligned copy is made, each input is let go (its entry
    set to None, and passed to `done`, which may reuse its buffer), so a mapped input is
    unmapped before the next copy is made. Under `--max-memory` a union vocabulary then
    holds the inputs not yet aligned and the copies made, not all of both
    (`engine/memory.Budget.loading` counts it so)."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    wide = torch.promote_types(dtype, torch.float32)  # a mean of bf16 rows is summed in float32
    rest = tuple(tensors[0].shape[1:])
    # each fallback row once, as a sum of source rows over their count: one row / 1 is exact
    picks: list[tuple[list[int], list[int]]] = [([], []) for _ in tensors]  # per part: (fallback, its row)
    count = []
    for k, (_, how) in enumerate(m.fallbacks):
        members = [how[1:]] if how[0] == "row" else how[1] if how[0] == "mean" else ()
        for p, r in members:
            picks[p][0].append(k)
            picks[p][1].append(r)
        count.append(max(1, len(members)))
    fill = torch.zeros((len(m.fallbacks), *rest), dtype=wide)
    for (ks, rs), t in zip(picks, tensors):
        if ks:
            fill.index_add_(0, torch.tensor(ks), t[torch.tensor(rs)].to(wide))
    fill = (fill / torch.tensor(count, dtype=wide).view(-1, *[1] * len(rest))).to(dtype)
    pad_from = m.rows if m.pad_from is None else m.pad_from
    index = torch.full((m.rows,), -1, dtype=torch.long)  # output row -> its fallback in `fill`
    index[torch.tensor([row for row, _ in m.fallbacks], dtype=torch.long)] = torch.arange(len(m.fallbacks))
    out = []
    for i, own in enumerate(m.own):
        t, tensors[i] = tensors[i], None
        new, keep = _own_rows(t, torch.tensor(own, dtype=torch.long), dtype)
        if done is not None:
            done(t)
        del t
        missing = ~keep
        missing[pad_from:] = False
        new[missing] = fill[index[missing]]
        if pad_from < m.rows:  # padding rows: this model's mean row, as mergekit pads
            new[pad_from:] = new[:pad_from].to(wide).mean(0).to(dtype)
        out.append(new)
    return out


def _own_rows(t, own, dtype) -> tuple:
    """A model's own rows moved to their output ids (`own`: its row for each output row, -1
    where it has none, those rows left to fill), and which rows it gave. Where no conversion
    is needed the rows are gathered straight into the new tensor: no second copy of them."""
    keep = own >= 0
    if t.dtype == dtype and t.shape[0] > 0:
        return torch.index_select(t, 0, own.clamp(min=0)), keep  # rows without one: overwritten
    new = torch.empty((len(own), *t.shape[1:]), dtype=dtype)
    new[keep] = t[own[keep]].to(dtype)
    return new, keep
