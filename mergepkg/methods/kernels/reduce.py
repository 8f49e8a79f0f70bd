"""Reductions whose result does not depend on the number of threads.

torch splits a reduction to one scalar across threads, and the split changes the
order of float additions, so `x.sum()` can differ in the last bit between
`--threads 1` and `--threads 2`. Here a long vector is summed in fixed blocks, each
block by one thread (torch parallelises over the block sums, not inside them), then
the block sums the same way, until one value is left. Reductions over the last
dimension of a matrix with several rows are already computed row by row.

Half-precision vectors (bfloat16, float16) are summed in float32 and the result rounded
once, as torch sums them: a partial sum rounded to bfloat16 at every block would lose
bits torch keeps (and that mergekit's bytes carry).
"""

from __future__ import annotations

from mergepkg._lazy import torch

BLOCK = 8192  # below torch's grain size (32768): a block is never split across threads


def _wide(x: torch.Tensor) -> torch.Tensor:
    """`x` as its sums accumulate: half precision in float32 (as torch accumulates it)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def total(x: torch.Tensor) -> torch.Tensor:
    """sum(x), identical for any thread count."""
    dtype, x = x.dtype, _wide(x.reshape(-1))
    return _blocks(x).to(dtype)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    while x.numel() > BLOCK:
        whole = x.numel() - x.numel() % BLOCK
        parts = x[:whole].view(-1, BLOCK).sum(dim=1)
        x = torch.cat([parts, x[whole:].sum().reshape(1)]) if whole < x.numel() else parts
    return x.sum()


def total_of_blocks(sums: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """total() of a vector given the sums of its consecutive BLOCK-entry blocks (the last
    may be shorter) in float32, each with torch's bits (a kernel's: torch_sum.sums): the
    same bits, rounded to `dtype`, which the vector's values hold."""
    return _blocks(sums).to(dtype)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """x.sum(dim=-1, keepdim=True), identical for any thread count."""
    if x.dim() > 1 and x.shape[:-1].numel() > 1:
        return x.sum(dim=-1, keepdim=True)
    return total(x).reshape(*x.shape[:-1], 1)


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each row (x.norm(dim=-1, keepdim=True)), identical for any thread
    count; half precision squared and summed in float32, rounded once (as torch.norm)."""
    wide = _wide(x)
    return row_sum(wide * wide).sqrt().to(x.dtype)


class Total:
    """total() of a vector that arrives in consecutive pieces (each a multiple of BLOCK
    long, except the last): the same block sums in the same order, so the same bits."""

    def __init__(self):
        self._parts: list[torch.Tensor] = []
        self._tail: torch.Tensor | None = None
        self._small: torch.Tensor | None = None  # the whole vector, while it fits one block
        self._count = 0
        self._dtype = torch.float32  # of the pieces: the result's

    def add(self, piece: torch.Tensor, holds=None) -> None:
        """`holds`: the dtype whose values `piece` holds, widened to float32 already (a
        kernel's output); the result is rounded to it. Default: the piece's own dtype."""
        self._dtype = holds or piece.dtype
        piece = _wide(piece.reshape(-1))
        if self._tail is not None:
            raise ValueError("only the last piece may end inside a block")
        self._count += piece.numel()
        # a copy: the caller may reuse the piece's buffer for the next one
        self._small = piece.clone() if self._count == piece.numel() and self._count <= BLOCK else None
        whole = piece.numel() - piece.numel() % BLOCK
        if whole:
            self._parts.append(piece[:whole].view(-1, BLOCK).sum(dim=1))
        if whole < piece.numel():
            self._tail = piece[whole:].sum().reshape(1)

    @classmethod
    def joined(cls, totals) -> Total:
        """One Total of the consecutive pieces several Totals were given, in order: the
        same block sums as one Total given every piece, so the same bits."""
        totals = [t for t in totals if t._count]
        if len(totals) == 1:
            return totals[0]
        joined = cls()
        for t in totals:
            if joined._tail is not None:
                raise ValueError("only the last piece may end inside a block")
            joined._parts += t._parts
            joined._tail, joined._count, joined._dtype = t._tail, joined._count + t._count, t._dtype
        return joined

    def result(self) -> torch.Tensor:
        if self._count <= BLOCK:  # total() sums a short vector directly
            return (self._small.sum() if self._small is not None else torch.zeros(())).to(self._dtype)
        return _blocks(torch.cat(self._parts + ([self._tail] if self._tail is not None else []))).to(self._dtype)
