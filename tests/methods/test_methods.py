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
        "karcher",
        "sce",
        "arcee_fusion",
        "nearswap",
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


def test_linear_divides_by_the_weights_sum_in_the_compute_dtype():
    """As mergekit: 0.6 + 0.3 summed in float32 is 0.90000004, not 0.9 (Python's sum)."""
    got = merge("linear", None, [A, B], weight=[0.6, 0.3])
    weighted = torch.mul(A, 0.6).add_(B, alpha=0.3)
    assert torch.equal(got, weighted / torch.tensor([0.6, 0.3]).sum())
    assert not torch.equal(got, weighted / 0.9)


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


def test_della_inputs_at_density_one_need_no_band():
    """Density 1 (the default) prunes nothing, as mergekit's MagPrune: any epsilon goes."""
    from mergepkg.methods.della import band_problem

    assert band_problem({"density": [1.0, 0.5], "epsilon": [0.15, 0.15]}) is None
    problem = band_problem({"density": [1.0, 0.9], "epsilon": [0.15, 0.15]})
    assert problem is not None and problem.message.startswith("input 2:")
    delta = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sparsify.magprune(delta, 1.0, 0.15, rng=torch.Generator()), delta)


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


# -- karcher ------------------------------------------------------------------------
def test_karcher_one_input_is_returned_and_identical_inputs_give_that_input():
    assert merge("karcher", None, [A]) is not None
    torch.testing.assert_close(merge("karcher", None, [A]), A, rtol=0, atol=0)
    torch.testing.assert_close(merge("karcher", None, [A, A, A]), A)


def test_karcher_same_direction_gives_the_mean_norm():
    out = merge("karcher", None, [A, 3 * A])
    torch.testing.assert_close(out, 2 * A)


def test_karcher_orthogonal_unit_vectors_meet_at_the_midpoint_of_the_arc():
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = merge("karcher", None, [u, v])
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]) / 2**0.5)
    w = torch.tensor([0.0, 0.0, 1.0])  # three orthogonal directions: the diagonal, norm 1
    out3 = merge("karcher", None, [torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), w])
    torch.testing.assert_close(out3, torch.ones(3) / 3**0.5)


def test_karcher_is_the_fixed_point_on_the_sphere():
    """The result's direction m satisfies sum_i log_m(u_i) = 0 (the Karcher mean)."""
    out = merge("karcher", None, [A, B, C], max_iter=50, tol=0.0)
    m = (out / out.norm()).reshape(-1).double()
    tangent = torch.zeros_like(m)
    for x in (A, B, C):
        u = (x / x.norm()).reshape(-1).double()
        cos = (m @ u).clamp(-1, 1)
        theta = torch.arccos(cos)
        tangent += theta / torch.sin(theta) * (u - cos * m)
    assert tangent.norm() < 1e-5
    mean_norm = sum(x.norm() for x in (A, B, C)) / 3
    torch.testing.assert_close(out.norm(), mean_norm)


def test_karcher_zero_inputs_take_no_part_in_the_direction():
    zero = torch.zeros_like(A)
    out = merge("karcher", None, [A, zero])
    torch.testing.assert_close(out, A / 2)  # A's direction, the mean norm (|A| + 0) / 2
    assert torch.equal(merge("karcher", None, [zero, zero]), zero)


def test_karcher_max_iter_must_be_whole():
    check = METHODS["karcher"].check
    assert check is not None
    assert check({"max_iter": 5.0, "tol": 1e-5}) is None
    problem = check({"max_iter": 5.5, "tol": 1e-5})
    assert problem is not None and "whole number" in problem.message


# -- sce -----------------------------------------------------------------------------
def test_sce_one_input_returns_it_and_base_inputs_return_the_base():
    torch.testing.assert_close(merge("sce", BASE, [A]), A)
    torch.testing.assert_close(merge("sce", BASE, [BASE, BASE]), BASE, rtol=0, atol=0)


def test_sce_weights_by_mean_square_among_agreeing_signs():
    base = torch.zeros(3)
    a, b = torch.tensor([1.0, 1.0, -3.0]), torch.tensor([-2.0, 3.0, 1.0])
    wa, wb = (a * a).mean(), (b * b).mean()  # matrix-level weights: 11/3 and 14/3
    out = merge("sce", base, [a, b])
    # entry 0: sum -1 -> only b; entry 1: both agree -> weighted mean; entry 2: sum -2 -> only a
    want = torch.tensor([-2.0, (wa * 1 + wb * 3) / (wa + wb), -3.0])
    torch.testing.assert_close(out, want)


def test_sce_select_topk_keeps_the_highest_variance_entries():
    out = merge("sce", BASE, [A, B, C], select_topk=0.25)
    moved = (out != BASE).reshape(-1)
    variance = torch.var(torch.stack([A - BASE, B - BASE, C - BASE]), dim=0, unbiased=False).reshape(-1)
    k = int(0.25 * variance.numel())
    assert int(moved.sum()) <= k  # entries where every delta is erased stay at the base too
    assert variance[moved].min() >= variance.topk(k).values.min()
    # one input has no variance anywhere: nothing is selected, the base comes back (as mergekit)
    torch.testing.assert_close(merge("sce", BASE, [A], select_topk=0.5), BASE, rtol=0, atol=0)
    torch.testing.assert_close(merge("sce", BASE, [A, B], select_topk=0.0), BASE, rtol=0, atol=0)


# -- arcee_fusion --------------------------------------------------------------------
def test_arcee_fusion_takes_entries_at_or_above_the_threshold():
    from mergepkg.methods import arcee_fusion

    out = merge("arcee_fusion", BASE, [A])
    scores = arcee_fusion.importance(A, BASE)
    q1, median, q3 = (scores.reshape(-1).sort().values[int(q * (scores.numel() - 1))] for q in (0.25, 0.5, 0.75))
    taken = scores >= median + 1.5 * (q3 - q1)
    assert 0 < int(taken.sum()) < taken.numel()
    torch.testing.assert_close(out[taken], A[taken])
    assert torch.equal(out[~taken], BASE[~taken])
    assert torch.equal(merge("arcee_fusion", BASE, [BASE.clone()]), BASE)  # no change, nothing to take


def test_arcee_fusion_importance_is_change_times_row_divergence():
    from mergepkg.methods import arcee_fusion

    scores = arcee_fusion.importance(A, BASE)
    p, q = torch.softmax(A, dim=-1) + 1e-8, torch.softmax(BASE, dim=-1) + 1e-8
    torch.testing.assert_close(scores, (A - BASE).abs() * (p * (p / q).log()).sum(dim=-1, keepdim=True))
    vector = arcee_fusion.importance(A[0], BASE[0])  # a 1-D tensor is one row
    torch.testing.assert_close(vector, scores[0])


# -- nearswap --------------------------------------------------------------------------
def test_nearswap_takes_near_entries_and_moves_far_ones_by_t():
    t = 0.05
    out = merge("nearswap", BASE, [A], t=t)
    near = (A - BASE).abs() <= t
    assert 0 < int(near.sum()) < near.numel()
    assert torch.equal(out[near], A[near])
    moved = (out - BASE)[~near]
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, t))  # by t, towards the other input
    assert bool((moved.sign() == (A - BASE)[~near].sign()).all())
    assert torch.equal(merge("nearswap", BASE, [A], t=0.0), BASE)


# every thinner at work (not skipped at density 1), every required parameter given
EMPTY_PARAMS = {"density": 0.5, "epsilon": 0.1, "gamma": 0.1, "select_topk": 0.5, "t": 0.3, "weight": 0.5}


@pytest.mark.parametrize("shape", [(0, 16), (16, 0), (0,)], ids=str)
@pytest.mark.parametrize("name", sorted(n for n in METHODS if n not in ("moe", "arcee_fusion")))
def test_a_tensor_of_no_entries_merges_to_one_of_that_shape(name, shape):
    """As mergekit 0.1.5 writes them (della's (0, n) failed here: its rows could not be
    reshaped; mergekit fails on della's (n, 0), whose row minimum has no entry)."""
    spec = METHODS[name]
    base = torch.zeros(shape)
    inputs = [base.clone() for _ in range(min(spec.max_inputs or 2, 2))]
    params = {
        p.arg: [value] * len(inputs) if p.per_input else value
        for p in spec.params
        if (value := EMPTY_PARAMS.get(p.name)) is not None
    }
    out = merge(name, None if spec.base == "none" else base, inputs, **params)
    assert out.shape == shape
