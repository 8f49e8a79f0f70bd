"""methods/sparsify.py's exact top-k (TopK) where a task vector holds NaN: NaN counts as
larger than every number, +inf too, as torch's sort and topk take it, so ties and sce keep
what mergekit 0.1.5 keeps (its argsort and topk put NaN first), on the whole-tensor merge,
the chunked torch stream and the fused kernels, from one NaN to every entry NaN.

mergekit's argsort is run stable here: among equal magnitudes mergepkg keeps the lowest
indexes (docs/methods.md), and with a stable sort mergekit does too, so any other
difference is the NaN rule's.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mergepkg.methods import METHODS, fused, sparsify

SHAPE = (300, 500)  # more entries than TopK.SAMPLE: the band is bracketed from a sample
FRACTIONS = [0.0, 1 / 150_000, 0.6, 1.0]  # none, one entry, most, every entry NaN
DTYPES = [torch.float32, torch.bfloat16]


def models(fraction: float, dtype, count: int = 2):
    g = torch.Generator().manual_seed(round(fraction * 1000) + count)
    base = torch.randn(SHAPE, generator=g) * 0.02
    tensors = [base + 0.005 * torch.randn(SHAPE, generator=g) for _ in range(count)]
    nan = torch.rand(SHAPE, generator=g) < fraction
    nan.view(-1)[12_345] |= fraction > 0  # one NaN at least
    tensors[0][nan] = math.nan
    return base.to(dtype), [t.to(dtype) for t in tensors]


def mergekit_merge(name: str, base, tensors, monkeypatch, **params) -> torch.Tensor:
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup

    monkeypatch.setattr(torch, "argsort", functools.partial(torch.argsort, stable=True))
    group = TensorGroup.from_tensors([base, *tensors], base_index=0, name="w")
    (result,) = get(name)((group,), parameters=params, dtype=base.dtype)
    monkeypatch.undo()
    return result


def same(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal bits, NaN aside (payloads are not values): NaN in the same entries."""
    nan = theirs.isnan()
    return torch.equal(ours.isnan(), nan) and torch.equal(ours.masked_fill(nan, 0), theirs.masked_fill(nan, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fraction", FRACTIONS, ids=lambda f: f"nan-{f:g}")
@pytest.mark.parametrize("path", ["merge", "stream", "fused"])
def test_ties_counts_nan_among_the_k_largest_as_mergekit(path, fraction, dtype, monkeypatch):
    base, tensors = models(fraction, dtype)
    params = {"weight": [0.6, 0.4], "density": [0.5, 0.3]}
    theirs = mergekit_merge("ties", base, tensors, monkeypatch, weight=[0.6, 0.4], density=[0.5, 0.3])
    spec = METHODS["ties"]
    kwargs = {"normalize": True, "rescale": False, "lambda_": 1.0, **params}
    if path == "merge":
        ours = spec.merge(base, [t.clone() for t in tensors], **kwargs)
    else:  # in the step's dtype, as mergekit computes
        assert fused.usable(base, tensors, dtype, "magnitude")
        if path == "stream":  # the chunked torch stream, as on a GPU
            monkeypatch.setattr(fused, "usable", lambda *a, **k: False)
        ours = spec.stream(base, tensors, compute=dtype, out_dtype=dtype, **kwargs)
    assert same(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fraction", FRACTIONS[1:], ids=lambda f: f"nan-{f:g}")
def test_sce_selects_with_nan_as_mergekit(fraction, dtype, monkeypatch):
    base, tensors = models(fraction, dtype, count=3)
    theirs = mergekit_merge("sce", base, tensors, monkeypatch, select_topk=0.5)
    ours = METHODS["sce"].merge(base, [t.clone() for t in tensors], select_topk=0.5)
    assert same(ours, theirs)


@pytest.mark.parametrize("nans", [0, 1, 979, 980, 981, 1961])
def test_top_k_keeps_k_minus_the_nan_count_of_numbers(nans):
    # mergekit keeps the k = 980 largest of 1961, NaN first: k - nans numbers, none past k
    g = torch.Generator().manual_seed(nans)
    delta = torch.randn(1961, generator=g)
    delta[torch.randperm(1961, generator=g)[:nans]] = math.nan
    kept = sparsify.magnitude(delta, 0.5)
    numbers = ~delta.isnan()
    assert int((kept[numbers] != 0).sum()) == max(0, 980 - nans)
    assert bool(kept[~numbers].isnan().all())
    if 0 < nans < 980:  # the numbers kept are the largest
        smallest_kept = delta[numbers & (kept != 0)].abs().min()
        assert bool((delta[numbers & (kept == 0)].abs() <= smallest_kept).all())
