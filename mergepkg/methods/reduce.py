"""Reductions whose result does not depend on the number of threads.

torch splits a reduction to one scalar across threads, and the split changes the
order of float additions, so `x.sum()` can differ in the last bit between
`--threads 1` and `--threads 2`. Here a long vector is summed in fixed blocks, each
block by one thread (torch parallelises over the block sums, not inside them), then
the block sums the same way, until one value is left. Reductions over the last
dimension of a matrix with several rows are already computed row by row.
"""

from __future__ import annotations

from mergepkg._lazy import torch

BLOCK = 8192  # below torch's grain size (32768): a block is never split across threads


def total(x: torch.Tensor) -> torch.Tensor:
    """sum(x), identical for any thread count."""
    x = x.reshape(-1)
    while x.numel() > BLOCK:
        whole = x.numel() - x.numel() % BLOCK
        parts = x[:whole].view(-1, BLOCK).sum(dim=1)
        x = torch.cat([parts, x[whole:].sum().reshape(1)]) if whole < x.numel() else parts
    return x.sum()


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """x.sum(dim=-1, keepdim=True), identical for any thread count."""
    if x.dim() > 1 and x.shape[:-1].numel() > 1:
        return x.sum(dim=-1, keepdim=True)
    return total(x).reshape(*x.shape[:-1], 1)


def row_norm(x: torch.Tensor) -> torch.Tensor:
    return row_sum(x * x).sqrt()
