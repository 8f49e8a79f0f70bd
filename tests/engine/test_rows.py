"""Vocabulary rows moved as they are read (`engine/rows.align_rows`): each input let go once
its rows are moved, and the rows the row map says, bit for bit."""

from __future__ import annotations

import pytest
import torch

from mergepkg.engine.rows import align_rows
from mergepkg.layout.types import RowMap

# part 0 has rows 0..5 of the output (its row 2 given twice, output rows 3 and 5 missing),
# part 1 all 8 in reverse; output row 3 falls back to part 1's row 4, row 5 to the mean of
# part 0's row 4 and part 1's row 2; rows 6..7 are padding
ROW_MAP = RowMap(
    8,
    ((0, 1, 2, -1, 2, -1, -1, -1), (7, 6, 5, 4, 3, 2, 1, 0)),
    ((3, ("row", 1, 4)), (5, ("mean", ((0, 4), (1, 2))))),
    pad_from=6,
)


def expected(tensors: list) -> list:
    """ROW_MAP's rows written out one by one, in the promoted dtype (float32 for both cases):
    a fallback mean summed and divided in float32, padding each model's mean row."""
    t0, t1 = (t.to(torch.float32) for t in tensors)
    a = torch.stack([t0[0], t0[1], t0[2], t1[4], t0[2], (t0[4] + t1[2]) / 2])
    b = t1[[7, 6, 5, 4, 3, 2]]
    return [torch.cat([x, x.mean(0).expand(2, -1)]) for x in (a, b)]


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
def test_each_input_is_let_go_once_aligned_and_the_bytes_do_not_change(dtypes):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn((5, 3), generator=gen).to(dtypes[0]), torch.randn((8, 3), generator=gen).to(dtypes[1])]
    want = expected(tensors)
    given = list(tensors)
    done: list = []
    got = align_rows(ROW_MAP, given, done=done.append)
    assert given == [None, None]  # nothing holds an input past its copy
    assert [d.data_ptr() for d in done] == [t.data_ptr() for t in tensors]
    assert all(g.dtype == w.dtype and g.view(torch.uint8).equal(w.view(torch.uint8)) for g, w in zip(got, want))
