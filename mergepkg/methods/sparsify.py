"""Masks that thin out a task vector, shared by TIES, DARE, breadcrumbs and DELLA.

Every function takes a delta in the compute dtype and returns a tensor of the same shape.
`rescale=True` multiplies the kept entries so the L1 norm matches the input's (as
mergekit 0.1.5 does for every method that rescales).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable

from mergepkg._lazy import torch
from mergepkg.methods.kernels import chunks
from mergepkg.methods.kernels.reduce import Total, total

RESCALE_EPS = 1e-7


def rescale_factor(before: torch.Tensor, after: torch.Tensor, eps: float = RESCALE_EPS) -> torch.Tensor | None:
    """What scales kept entries of L1 norm `after` back to the delta's `before`; None
    (leave them) when either norm is ~0."""
    return None if before < eps or after < eps else before / after


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Scale `kept` so that |kept|_1 == |delta|_1; unchanged when either norm is ~0."""
    factor = rescale_factor(total(delta.abs()), total(kept.abs()))
    return kept if factor is None else kept.mul_(factor)


def _finish(delta, mask, rescale):
    kept = delta * mask.to(delta.dtype)  # as floats: the same bits as a bool mask, faster
    return rescale_l1(delta, kept) if rescale else kept


class TopK:
    """Which entries are among the k largest magnitudes of a flat vector of n entries,
    found without sorting it: a sorted strided sample brackets the k-th largest value
    in a narrow band, one pass counts the entries above the band and collects those in
    it, and the k-th largest is selected inside the band (exact; when the sample
    misleads, the whole vector is searched instead). Entries equal to the k-th largest
    are kept lowest index first, so exactly k are kept whatever the ties.

    NaN counts as larger than every number, +inf too, as torch's sort and topk take it
    (so mergekit's argsort): a NaN magnitude is among the k largest, and with k NaN or
    more no number is kept. A NaN entry's own mask does not matter: the mask multiplies
    the delta, and NaN times 0 is NaN.

    `magnitudes(span)` returns |entries| of a slice (also a strided one) in float32 or
    wider, possibly in a buffer it reuses on the next call; `spans` cover range(n) in order.
    `band(span, lo, hi)`, when given, does the pass over one span faster (fused.py):
    it returns what `in_band` below does. `map` may run the spans' passes in parallel.
    Order statistics go through `kth` and `select`, which fused.py overrides with numpy's
    sort (several times faster than torch.kthvalue and nonzero on a CPU thread).
    """

    SAMPLE = 1 << 16

    def __init__(self, magnitudes, n: int, k: int, spans: list[slice], band=None, map=map):
        self._bracket(magnitudes, n, k, spans, band)
        self._settle(self._pass(self._band, spans, self._lo, self._hi, map), map)

    @classmethod
    def several(cls, vectors: list[tuple], map=map) -> list[TopK]:
        """TopK(*v) for each v in `vectors` (magnitudes, n, k, spans, band), each step for
        all of them at once: the brackets, one a vector, then every pass over a span in
        one `map`, then the selections, one a vector. On threads, the vectors are
        bracketed side by side and selected side by side, and their passes share the
        threads: three waits for the slowest item in all, not three a vector."""
        rules = list(map(lambda v: cls.__new__(cls)._bracket(*v), vectors))
        jobs = [(rule, span) for rule in rules for span in rule._spans]
        parts = iter(map(lambda job: job[0]._band(job[1], job[0]._lo, job[0]._hi), jobs))
        passes = [cls._joined([next(parts) for _ in rule._spans]) for rule in rules]
        # a sample that misled searches again on the thread that found it out, span by span
        list(map(lambda pair: pair[0]._settle(pair[1], builtins.map), zip(rules, passes)))
        return rules

    def _bracket(self, magnitudes, n: int, k: int, spans: list[slice], band=None) -> TopK:
        """The band [lo, hi] the k-th largest lies in, from a sorted strided sample."""
        self._band = band or (lambda span, lo, hi: in_band(magnitudes(span), span.start, lo, hi))
        self._n, self._k, self._spans = n, k, spans
        sample = magnitudes(slice(0, n, max(1, n // self.SAMPLE)))
        m = sample.numel()
        rank = (n - k) * m // n  # where the k-th largest sits in the ascending sample
        q = (n - k) / n
        margin = int(6 * math.sqrt(m * q * (1 - q))) + 16  # 6 sigma of a sampled rank
        # the band [lo, hi] (two order statistics of the sample); past the sample's ends it
        # reaches 0 (magnitudes are >= 0) or +inf
        self._lo = _number(self.kth(sample, rank - margin + 1)) if rank - margin >= 0 else 0.0
        self._hi = _number(self.kth(sample, rank + margin + 1)) if rank + margin < m else math.inf
        return self

    def _settle(self, passed: tuple[int, torch.Tensor, torch.Tensor], map=map) -> None:
        """threshold and cut, from the pass over the band (or everything, when the sample misled)."""
        above, values, index = passed
        need = self._k - above  # how many of the k largest lie in the band
        exact = 0 < need <= values.numel()
        if not exact:  # the sample misled (or NaN fill the k largest): search everything
            above, values, index = self._pass(self._band, self._spans, 0.0, math.inf, map)
            need = self._k - above  # the NaN among them: above +inf
        if need <= 0:  # k NaN or more: no number is among the k largest
            self.threshold, self.cut = values.new_tensor(math.nan), 0
            return
        # when the band is one repeated value, that value is the threshold
        single = self._hi if exact and self._lo == self._hi else None
        self.threshold, self.cut = self.select(values, index, need, self._n, single)

    @staticmethod
    def kth(values: torch.Tensor, i: int) -> torch.Tensor:
        """The i-th smallest of `values` (1-based; NaN largest), a 0-dim tensor."""
        return torch.kthvalue(values, i).values

    @classmethod
    def select(cls, values, index, need: int, n: int, single: float | None = None) -> tuple[torch.Tensor, int]:
        """(threshold, cut): the need-th largest of the band's `values` (or `single`), and
        one past the index of the last entry equal to it that is kept (n: all of them),
        equal entries kept lowest index first."""
        threshold = values.new_tensor(single) if single is not None else cls.kth(values, values.numel() - need + 1)
        equal = (values == threshold).nonzero().squeeze(1)
        quota = need - int((values > threshold).sum())  # ties to keep: 1 .. equal
        return threshold, n if quota >= equal.numel() else int(index[equal[quota - 1]]) + 1

    @classmethod
    def _pass(cls, band, spans, lo, hi, map):
        """Entries above hi (a count), and the magnitudes in [lo, hi] with their indexes, in order."""
        return cls._joined(list(map(lambda span: band(span, lo, hi), spans)))

    @staticmethod
    def _joined(parts: list) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The passes over consecutive spans as one pass over all of them."""
        return sum(p[0] for p in parts), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])

    def keep(self, span: slice, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Mask of the kept entries of `span`, given their magnitudes `a`: boolean, or
        1.0/0.0 written into `out` (a float tensor like `a`)."""
        if self.cut >= span.stop:
            return torch.ge(a, self.threshold, out=out)
        if self.cut <= span.start:
            return torch.gt(a, self.threshold, out=out)
        index = torch.arange(span.start, span.stop, device=a.device)
        mask = (a > self.threshold) | ((a == self.threshold) & (index < self.cut))
        return mask if out is None else out.copy_(mask)


def in_band(a: torch.Tensor, start: int, lo: float, hi: float) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(entries of `a` above hi, those in [lo, hi], their indexes + start). NaN is above
    any hi: larger than every number, as torch sorts it."""
    below = a <= hi  # False for NaN
    index = ((a >= lo) & below).nonzero().squeeze(1)
    return a.numel() - int(below.sum()), a[index], index.add_(start)


def _number(x) -> float:
    """A band's end from a sampled order statistic: a NaN one (the sample's NaN, sorted
    last) is +inf, so that NaN entries fall above the band, never inside it."""
    x = float(x)
    return math.inf if math.isnan(x) else x


def top_k(density: float, n: int) -> int:
    return max(1, int(density * n))


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the k = max(1, int(density * n)) largest-magnitude entries (TIES trimming);
    among equal magnitudes at the cut, the lowest indexes."""
    if density >= 1 or delta.numel() == 0:
        return delta
    flat = delta.reshape(-1)
    n = flat.numel()
    whole = slice(0, n)
    rule = TopK(lambda span: flat[span].abs(), n, top_k(density, n), [whole])
    return _finish(delta, rule.keep(whole, flat.abs()).view_as(delta), rescale)


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


# DARE's draws (version 2): entry j of a task vector is kept when the top 24 bits of
# splitmix64's output number j+1 from the input's seed are below density * 2**24. A
# number per entry, from its index alone: the same masks on any device, thread count or
# chunking, and a compiled loop draws them in parallel (kernels.py does, bit for bit).
# Version 1 drew from torch's generator, one thread at a time, and masks differed by device.
DRAW_BITS = 24
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def draw_limit(density: float) -> int:
    """Draws below this are kept: P(keep) = limit / 2**24, the nearest above density."""
    return min(1 << DRAW_BITS, math.ceil(density * (1 << DRAW_BITS)))


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c  # a uint64 constant as torch's int64 holds it


def _shift(z: torch.Tensor, k: int) -> torch.Tensor:
    """z >> k on the uint64 bits of an int64 tensor (torch shifts signed ints arithmetically)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def draws(seed: int, start: int, n: int, device=None) -> torch.Tensor:
    """The draws of entries start .. start+n-1 from `seed` (int64, 0 .. 2**24-1); int64
    arithmetic wraps as uint64 does."""
    z = torch.arange(start + 1, start + n + 1, dtype=torch.int64, device=device)
    z = z.mul_(_signed(_GOLDEN)).add_(_signed(seed % (1 << 64)))
    z = (z ^ _shift(z, 30)).mul_(_signed(_MIX1))
    z = (z ^ _shift(z, 27)).mul_(_signed(_MIX2))
    return _shift(z ^ _shift(z, 31), 64 - DRAW_BITS)


def bernoulli(delta: torch.Tensor, density: float, rng: torch.Generator, rescale: bool = False) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, by its draw from the seed of `rng`."""
    if density >= 1:
        return delta
    mask = draws(rng.initial_seed(), 0, delta.numel(), delta.device) < draw_limit(density)
    return _finish(delta, mask.view(delta.shape), rescale)


def magprune(
    delta: torch.Tensor, density: float, epsilon: float, rng: torch.Generator, rescale: bool = False
) -> torch.Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    density - epsilon (smallest) to density + epsilon (largest). A row of one entry
    gets probability `density` (mergekit divides by zero there and produces NaN); a
    tensor of no entries is returned as it is (its rows cannot be reshaped)."""
    if density >= 1 or delta.numel() == 0:
        return delta
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise ValueError(f"della needs density ± epsilon inside (0, 1); got density={density:g}, epsilon={epsilon:g}")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    # rank of each entry's magnitude within its row: 0 (smallest) .. width-1 (largest)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, stable=True), dim=1).to(torch.float32)
    spread = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + spread * (2 * epsilon)
    mask = torch.rand(probs.shape, generator=rng).to(probs.device) < probs  # drawn on the CPU: the same on any device
    return _finish(delta, mask.view_as(delta), rescale)


def l1_rescale(flat: chunks.Flat, i: int, keep: Callable[[slice, torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """The L1 rescale factor (or None) of input i's thinned task vector, its sums taken
    chunk by chunk in fixed blocks (reduce.Total); `keep(span, delta)` is 1 where kept."""
    before, after = Total(), Total()
    for span in flat.spans():
        delta = flat.delta_at(i, span)
        before.add(torch.abs(delta, out=flat.scratch.get("before", delta.shape, delta.dtype)))
        kept = torch.mul(delta, keep(span, delta), out=flat.scratch.get("after", delta.shape, delta.dtype))
        after.add(kept.abs_())
    return rescale_factor(before.result(), after.result())
