"""Masks that thin out a task vector, shared by TIES, DARE, breadcrumbs and DELLA.

Every function takes a delta in the compute dtype and returns a tensor of the same shape.
`rescale=True` multiplies the kept entries so the L1 norm matches the input's (as
mergekit 0.1.5 does for every method that rescales).
"""

from __future__ import annotations

from mergepkg._lazy import torch
from mergepkg.methods.reduce import total


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `kept` so that |kept|_1 == |delta|_1; unchanged when either norm is ~0."""
    before, after = total(delta.abs()), total(kept.abs())
    if before < eps or after < eps:
        return kept
    return kept.mul_(before / after)


def _finish(delta, mask, rescale):
    kept = delta * mask
    return rescale_l1(delta, kept) if rescale else kept


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the k = max(1, int(density * n)) largest-magnitude entries (TIES trimming)."""
    if density >= 1:
        return delta
    n = delta.numel()
    if n == 0:
        return delta
    k = max(1, int(density * n))
    flat = delta.reshape(-1).abs()
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[torch.topk(flat, k, sorted=False).indices] = True  # exact k, no full sort
    return _finish(delta, mask.view_as(delta), rescale)


def outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs: drop the top `gamma` fraction by magnitude, then the smallest,
    keeping int(density * n) entries. With int(gamma * n) == 0 only the smallest are
    dropped (older mergekit sliced `[n_bot:-0]` and dropped everything)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - keep - n_top)
    order = torch.argsort(delta.reshape(-1).abs(), stable=True)  # ascending magnitude
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[n_bot : n_bot + keep]] = True
    return _finish(delta, mask.view_as(delta), rescale)


def bernoulli(delta: torch.Tensor, density: float, rng: torch.Generator, rescale: bool = False) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, drawn from `rng`."""
    if density >= 1:
        return delta
    mask = torch.rand(delta.shape, generator=rng, device=delta.device, dtype=torch.float32) < density
    return _finish(delta, mask, rescale)


def magprune(delta: torch.Tensor, density: float, epsilon: float, rng: torch.Generator,
             rescale: bool = False) -> torch.Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    density - epsilon (smallest) to density + epsilon (largest). A row of one entry
    gets probability `density` (mergekit divides by zero there and produces NaN)."""
    if density >= 1:
        return delta
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(
            f"della needs density ± epsilon inside (0, 1); got density={density:g}, epsilon={epsilon:g}"
        )
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    # rank of each entry's magnitude within its row: 0 (smallest) .. width-1 (largest)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, stable=True), dim=1).to(torch.float32)
    spread = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + spread * (2 * epsilon)
    mask = torch.rand(probs.shape, generator=rng, device=delta.device) < probs
    return _finish(delta, mask.view_as(delta), rescale)
