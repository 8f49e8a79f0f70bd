"""Invariants from the math of each method, on plain tensors."""

from __future__ import annotations

import pytest
import torch

from mergepkg.errors import MergeError
from mergepkg.methods import METHODS, sparsify

g = torch.Generator().manual_seed(0)
BASE = torch.randn(16, 24, generator=g)
A = BASE + 0.1 * torch.randn(16, 24, generator=g)
B = BASE + 0.1 * torch.randn(16, 24, generator=g)
C = BASE + 0.1 * torch.randn(16, 24, generator=g)


def merge(name, base, tensors, seed=0, **params):
    spec = METHODS[name]
    defaults = {
        p.arg: ([p.default] * len(tensors) if p.per_input else p.default) for p in spec.params if not p.required
    }
    if "lambda" in params:
        params["lambda_"] = params.pop("lambda")
    kwargs = {**defaults, **params}
    if spec.random:
        kwargs["rng"] = lambda i: torch.Generator().manual_seed(seed * 100 + i)
    return spec.merge(base, [t.clone() for t in tensors], **kwargs)


def test_every_method_is_registered_with_doc_and_params():
    assert set(METHODS) == {
        "linear",
        "slerp",
        "nuslerp",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "model_stock",
        "passthrough",
        "moe",
    }
    import importlib

    for spec in METHODS.values():
        module = importlib.import_module(f"mergepkg.methods.{spec.name}")
        assert module.SPEC is spec and "http" in module.__doc__  # docstring cites the paper
        assert spec.summary and all(p.doc for p in spec.params)


# -- linear -----------------------------------------------------------------------
def test_linear_weights_one_zero_return_first():
    torch.testing.assert_close(merge("linear", None, [A, B], weight=[1.0, 0.0]), A, rtol=0, atol=0)


def test_linear_normalize_is_scale_invariant():
    x = merge("linear", None, [A, B, C], weight=[1.0, 2.0, 3.0])
    y = merge("linear", None, [A, B, C], weight=[2.0, 4.0, 6.0])
    torch.testing.assert_close(x, y)
    torch.testing.assert_close(x, (A + 2 * B + 3 * C) / 6)


def test_linear_without_normalize_is_weighted_sum():
    torch.testing.assert_close(merge("linear", None, [A, B], weight=[0.5, 2.0], normalize=False), 0.5 * A + 2 * B)


def test_linear_weights_summing_to_zero_is_an_error():
    with pytest.raises(MergeError, match="sum to 0"):
        merge("linear", None, [A, B], weight=[1.0, -1.0])


# -- slerp / nuslerp --------------------------------------------------------------
def test_slerp_endpoints():
    torch.testing.assert_close(merge("slerp", BASE, [A], t=0.0), BASE)
    torch.testing.assert_close(merge("slerp", BASE, [A], t=1.0), A)


def test_slerp_preserves_norm_of_unit_vectors_and_falls_back_to_lerp():
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = merge("slerp", u, [v], t=0.5)
    torch.testing.assert_close(mid.norm(), torch.tensor(1.0))
    near = u + 1e-5 * v  # colinear: the lerp fallback
    torch.testing.assert_close(merge("slerp", u, [near], t=0.5), torch.lerp(u, near, 0.5))


@pytest.mark.parametrize("base", [None, BASE])
def test_nuslerp_weights_one_zero_return_first(base):
    torch.testing.assert_close(merge("nuslerp", base, [A, B], weight=[1.0, 0.0]), A, atol=1e-5, rtol=1e-5)


def test_nuslerp_row_wise_differs_from_flattened_but_keeps_endpoints():
    flat = merge("nuslerp", None, [A, B], weight=[1.0, 1.0])
    rows = merge("nuslerp", None, [A, B], weight=[1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    assert not torch.allclose(flat, rows)
    torch.testing.assert_close(
        merge("nuslerp", None, [A, B], weight=[0.0, 1.0], nuslerp_flatten=False), B, atol=1e-5, rtol=1e-5
    )


# -- task-vector family ------------------------------------------------------------
def test_task_arithmetic_is_base_plus_weighted_deltas():
    out = merge("task_arithmetic", BASE, [A, B], weight=[0.5, 0.3])
    torch.testing.assert_close(out, BASE + 0.5 * (A - BASE) + 0.3 * (B - BASE))
    torch.testing.assert_close(merge("task_arithmetic", BASE, [A], weight=[1.0]), A)
    torch.testing.assert_close(merge("task_arithmetic", BASE, [A], weight=[0.0]), BASE)


def test_task_arithmetic_lambda_scales_the_merged_vector():
    out = merge("task_arithmetic", BASE, [A], weight=[1.0], **{"lambda": 0.5})
    torch.testing.assert_close(out, BASE + 0.5 * (A - BASE))


def test_ties_one_input_density_one_equals_task_arithmetic():
    ties = merge("ties", BASE, [A], weight=[0.7], density=[1.0], normalize=False)
    ta = merge("task_arithmetic", BASE, [A], weight=[0.7])
    torch.testing.assert_close(ties, ta)


def test_ties_keeps_exactly_top_k_by_magnitude():
    out = merge("ties", BASE, [A], weight=[1.0], density=[0.25])
    delta = (out - BASE).flatten()
    k = int(0.25 * delta.numel())
    assert int((delta != 0).sum()) == k
    kept = (A - BASE).flatten().abs()[delta != 0]
    dropped = (A - BASE).flatten().abs()[delta == 0]
    assert kept.min() >= dropped.max()


def test_ties_sign_election_drops_disagreeing_deltas():
    base = torch.zeros(3)
    a, b = torch.tensor([1.0, 1.0, -3.0]), torch.tensor([-2.0, 1.0, 1.0])
    out = merge("ties", base, [a, b], weight=[1.0, 1.0], density=[1.0, 1.0])
    # entry 0: sum -1 -> negative wins -> only b's -2 (normalized by its weight 1)
    # entry 1: both agree -> mean 1; entry 2: sum -2 -> only a's -3
    torch.testing.assert_close(out, torch.tensor([-2.0, 1.0, -3.0]))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_density_one_equals_task_arithmetic(name):
    out = merge(name, BASE, [A, B], weight=[0.5, 0.5], density=[1.0, 1.0])
    torch.testing.assert_close(
        out,
        merge("task_arithmetic", BASE, [A, B], weight=[0.5, 0.5])
        if name == "dare_linear"
        else merge("ties", BASE, [A, B], weight=[0.5, 0.5], density=[1.0, 1.0], normalize=False),
    )


def test_dare_keeps_density_fraction_and_rescales_l1():
    delta = torch.randn(200, 200, generator=torch.Generator().manual_seed(1))
    kept = sparsify.bernoulli(delta, 0.3, torch.Generator().manual_seed(2), rescale=True)
    frac = (kept != 0).float().mean().item()
    assert abs(frac - 0.3) < 0.01
    torch.testing.assert_close(kept.abs().sum(), delta.abs().sum())


def test_random_methods_depend_only_on_their_seed():
    x = merge("dare_ties", BASE, [A, B], seed=3, weight=[1.0, 1.0], density=[0.5, 0.5])
    y = merge("dare_ties", BASE, [A, B], seed=3, weight=[1.0, 1.0], density=[0.5, 0.5])
    z = merge("dare_ties", BASE, [A, B], seed=4, weight=[1.0, 1.0], density=[0.5, 0.5])
    assert torch.equal(x, y) and not torch.equal(x, z)


def test_breadcrumbs_drops_top_outliers_and_smallest():
    delta = torch.arange(1.0, 101.0)
    kept = sparsify.outliers(delta, density=0.5, gamma=0.1)
    nz = delta[kept != 0]
    assert nz.tolist() == list(map(float, range(41, 91)))  # 10 outliers and 40 smallest dropped


def test_breadcrumbs_with_zero_top_count_keeps_the_largest():
    delta = torch.arange(1.0, 11.0)
    kept = sparsify.outliers(delta, density=0.5, gamma=0.01)  # int(0.01 * 10) == 0
    assert (kept != 0).sum() == 5 and kept[-1] == 10.0


def test_della_probabilities_follow_magnitude_rank():
    delta = torch.arange(1.0, 1001.0).repeat(200, 1)
    kept = sparsify.magprune(delta, density=0.5, epsilon=0.3, rng=torch.Generator().manual_seed(0))
    frac = (kept != 0).float().mean(dim=0)
    assert frac[:100].mean() < 0.3 and frac[-100:].mean() > 0.7
    single = sparsify.magprune(torch.ones(5, 1), 0.5, 0.1, rng=torch.Generator().manual_seed(0))
    assert torch.isfinite(single).all()  # one-entry rows: no division by zero


def test_della_rejects_epsilon_outside_density_band():
    with pytest.raises(ValueError, match="density"):
        sparsify.magprune(torch.ones(4, 4), 0.1, 0.2, rng=torch.Generator())


# -- model stock / passthrough -------------------------------------------------------
def test_model_stock_identical_finetunes_return_the_finetune():
    torch.testing.assert_close(merge("model_stock", BASE, [A, A]), A, atol=1e-5, rtol=1e-5)


def test_model_stock_orthogonal_deltas_keep_the_base():
    base = torch.zeros(2)
    out = merge("model_stock", base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    torch.testing.assert_close(out, base)  # cos = 0 -> t = 0


def test_passthrough_copies_and_scales():
    assert merge("passthrough", None, [A]) is not None
    torch.testing.assert_close(merge("passthrough", None, [A]), A, rtol=0, atol=0)
    torch.testing.assert_close(merge("passthrough", None, [A], scale=[0.5]), A * 0.5)
