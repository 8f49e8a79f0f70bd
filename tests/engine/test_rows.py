"""Vocabulary rows moved as they are read (`engine/rows.align_rows`): each input let go once
its rows are moved, and the same bytes as aligning them all at once."""

from __future__ import annotations

import functools

import pytest
import torch

from mergepkg.engine.rows import align_rows
from mergepkg.layout.types import RowMap


def aligned_at_once(m: RowMap, tensors: list) -> list:
    """align_rows as it was, every input held until every copy was made: the reference."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    wide = torch.promote_types(dtype, torch.float32)
    rest = tuple(tensors[0].shape[1:])
    picks: list[tuple[list[int], list[int]]] = [([], []) for _ in tensors]
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
    index = torch.full((m.rows,), -1, dtype=torch.long)
    index[torch.tensor([row for row, _ in m.fallbacks], dtype=torch.long)] = torch.arange(len(m.fallbacks))
    out = []
    for own, t in zip(m.own, tensors):
        own = torch.tensor(own, dtype=torch.long)
        new = torch.empty((m.rows, *rest), dtype=dtype)
        keep = own >= 0
        new[keep] = t[own[keep]].to(dtype)
        missing = ~keep
        missing[pad_from:] = False
        new[missing] = fill[index[missing]]
        if pad_from < m.rows:
            new[pad_from:] = new[:pad_from].to(wide).mean(0).to(dtype)
        out.append(new)
    return out


# part 0 has rows 0..5 of the output (its row 2 given twice, output row 3 missing), part 1
# all 8 in reverse; output row 3 is part 1's row, row 5 a mean of both, rows 6..7 padding
ROW_MAP = RowMap(
    8,
    ((0, 1, 2, -1, 2, -1, -1, -1), (7, 6, 5, 4, 3, 2, 1, 0)),
    ((3, ("row", 1, 4)), (5, ("mean", ((0, 4), (1, 2))))),
    pad_from=6,
)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
def test_each_input_is_let_go_once_aligned_and_the_bytes_do_not_change(dtypes):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn((5, 3), generator=gen).to(dtypes[0]), torch.randn((8, 3), generator=gen).to(dtypes[1])]
    want = aligned_at_once(ROW_MAP, tensors)
    given = list(tensors)
    done: list = []
    got = align_rows(ROW_MAP, given, done=done.append)
    assert given == [None, None]  # nothing holds an input past its copy
    assert [d.data_ptr() for d in done] == [t.data_ptr() for t in tensors]
    assert all(g.dtype == w.dtype and g.view(torch.uint8).equal(w.view(torch.uint8)) for g, w in zip(got, want))
