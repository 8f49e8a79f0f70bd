"""methods/fused.py and kernels/compiled.py (with dtypes.py, draws.py, torch_sum.py): the
task-vector family on compiled kernels gives the same bits as the whole-tensor merge, for
every input count, dtype, parameter and thread count they accept; and the facts about
torch they rest on."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from mergepkg.methods import METHODS, fused, sparsify
from mergepkg.methods.kernels import chunks, compiled, draws, dtypes, torch_sum
from mergepkg.methods.kernels.reduce import BLOCK

FUSED = sorted(name for name, spec in METHODS.items() if spec.fused)
SIZES = [1, 7, chunks.CHUNK + 8195]  # one entry; a ragged few; more than a chunk, ragged


def test_the_task_vector_streams_are_fused():
    assert {"task_arithmetic", "ties", "dare_ties", "dare_linear"} <= set(FUSED)


def models(n: int, count: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g) * 0.02
    # bfloat16 deltas repeat values: many ties at a top-k threshold; some zero deltas
    tensors = [base + 0.002 * torch.randn(n, generator=g) for _ in range(count)]
    for t in tensors:
        t[::11] = base[::11]
    return base.to(dtype), [t.to(dtype) for t in tensors]


def whole(spec, base, tensors, kwargs):
    return spec.merge(base.float(), [t.float() for t in tensors], **kwargs)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request):
    chunks.set_threads(request.param)
    yield request.param
    chunks.set_threads(chunks.cpu_count())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("name", FUSED)
def test_fused_equals_merge(name, count, dtype, threads):
    spec = METHODS[name]
    for n in SIZES:
        base, tensors = models(n, count, dtype, seed=n + count)
        kwargs = {"weight": [0.5, -0.3, 0.6, 0.25][:count], "normalize": n % 2 == 1, "lambda_": [1.5, 0.3][n % 2]}
        if spec.param("density"):
            kwargs.update(density=[0.5, 0.3, 1.0, 0.9][:count], rescale=count % 2 == 1)
        if spec.random:
            kwargs["rng"] = lambda i: torch.Generator().manual_seed(7 + i)
        assert fused.usable(base, tensors, torch.float32, "bernoulli" if spec.random else "magnitude")
        streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=dtype, **kwargs)
        expected = whole(spec, base, tensors, kwargs).to(dtype)
        assert torch.equal(streamed.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), (n, kwargs)


@pytest.mark.parametrize("normalize", [True, False])
def test_no_agreeing_delta_and_zero_weights(normalize):
    # equal inputs: every delta is 0, nothing agrees; weights summing to 0 without election
    base = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    spec = METHODS["ties"]
    kwargs = {"weight": [1.0, -1.0], "normalize": normalize, "density": [0.5, 0.5]}
    streamed = spec.stream(base, [base.clone(), base.clone()], compute=torch.float32, out_dtype=torch.float32, **kwargs)
    assert torch.equal(streamed, whole(spec, base, [base, base], kwargs))
    spec = METHODS["task_arithmetic"]
    kwargs = {"weight": [1.0, -1.0], "normalize": normalize}
    t = [base + 1, base + 2]
    assert torch.equal(
        spec.stream(base, t, compute=torch.float32, out_dtype=torch.float32, **kwargs), whole(spec, base, t, kwargs)
    )


def test_nan_and_inf_travel_as_in_torch():
    base, tensors = models(5000, 3, torch.float32)
    tensors[0][10], tensors[1][20], tensors[2][30] = float("nan"), float("inf"), -float("inf")
    for name in ("ties", "task_arithmetic"):
        spec = METHODS[name]
        kwargs = {"weight": [0.5, 0.3, 0.2], "normalize": True}
        if spec.param("density"):
            kwargs["density"] = [1.0, 1.0, 1.0]  # a NaN magnitude has no rank: keep all
        streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.float32, **kwargs)
        expected = whole(spec, base, tensors, kwargs)
        assert torch.equal(streamed.isnan(), expected.isnan())
        assert torch.equal(streamed.nan_to_num(0), expected.nan_to_num(0))


def test_a_nan_lambda_with_any_payload_makes_every_entry_nan():
    # a double NaN whose float32 has every payload bit set: rounded as it is, NaN * x would
    # carry past the sign to 0.0 (dtypes.py: KERNEL NANS); the plain NaN goes in instead
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0x7FFFFFFFE0000000))[0]
    base, tensors = models(5000, 2, torch.bfloat16)
    spec = METHODS["task_arithmetic"]
    for compute in (torch.bfloat16, torch.float32):
        kwargs = {"weight": [0.5, 0.3], "normalize": False, "lambda_": odd_nan}
        streamed = spec.stream(base, tensors, compute=compute, out_dtype=torch.bfloat16, **kwargs)
        assert bool(streamed.isnan().all()), compute


def test_what_it_does_not_cover_takes_the_torch_path():
    base, tensors = models(100, 5, torch.bfloat16)
    assert not fused.usable(base, tensors, torch.float32, "magnitude")  # five inputs
    assert not fused.usable(base, tensors[:2], torch.float64, "magnitude")  # float64 arithmetic
    assert not fused.usable(base.double(), [t.double() for t in tensors[:2]], torch.float32, None)  # stored float64
    assert not fused.usable(base, tensors[:2], torch.float32, "outliers")  # another thinner
    assert not fused.covers(torch.float32, 2, "cuda")
    spec = METHODS["ties"]
    kwargs = {"weight": [0.2] * 5, "normalize": True, "density": [0.5] * 5}
    streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.bfloat16, **kwargs)
    assert torch.equal(streamed, whole(spec, base, tensors, kwargs).to(torch.bfloat16))


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_torch_sums_up_to_four_inputs_in_order(count):
    # what the kernels' sums rest on, for the sizes a chunk can have: from +0.0, in order
    g = torch.Generator().manual_seed(count)
    for n in [1, 3, 15, 16, 17, 31, 33, 1000, 8192, 8197, chunks.CHUNK]:
        x = torch.randn(count, n, generator=g) * torch.logspace(-4, 4, count).view(-1, 1)
        x[:, ::7] = -0.0  # a sum of negative zeros is +0.0
        x[1:, 1::7] = 0.0
        in_order = torch.zeros(n)
        for row in x:
            in_order = in_order + row
        assert torch.equal(torch.sum(x, dim=0).view(torch.int32), in_order.view(torch.int32)), n


def test_signed_zeros_come_out_as_in_torch():
    # a base entry of -0.0 whose deltas are all signed zeros: dropped (v * 0), weighted
    # by a negative weight, or equal inputs
    base = torch.zeros(64)
    base[::2] = -0.0
    tensors = [base.clone(), base.clone()]
    tensors[0][::3] = -1.0
    tensors[1][1::3] = 2.0
    for name, kwargs in [
        ("ties", {"weight": [1.0, 1.0], "density": [0.5, 0.5], "normalize": True}),
        ("dare_ties", {"weight": [1.0, 1.0], "density": [0.01, 0.01], "normalize": False}),
        ("task_arithmetic", {"weight": [-0.5, -0.5], "normalize": False}),
    ]:
        spec = METHODS[name]
        if spec.random:
            kwargs["rng"] = lambda i: torch.Generator().manual_seed(i)
        for dtype in (torch.float32, torch.bfloat16):
            streamed = spec.stream(
                base.to(dtype), [t.to(dtype) for t in tensors], compute=torch.float32, out_dtype=dtype, **kwargs
            )
            expected = whole(spec, base, tensors, kwargs).to(dtype)
            assert torch.equal(streamed.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), name


@pytest.mark.parametrize("weight", [[1e-8], [-1e-8], [9.99999994e-09], [5e-9, 5e-9], [0.3, -0.3]])
@pytest.mark.parametrize("lambda_", [1.0, 0.3])
def test_weight_sums_near_zero_and_lambda(weight, lambda_):
    base, tensors = models(20_000, len(weight), torch.float32)
    for name in ("task_arithmetic", "dare_linear"):
        spec = METHODS[name]
        for normalize in (True, False):
            kwargs = {"weight": weight, "normalize": normalize, "lambda_": lambda_}
            if spec.random:
                kwargs.update(density=[0.5] * len(weight), rescale=True, rng=lambda i: torch.Generator().manual_seed(i))
            streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.float32, **kwargs)
            expected = whole(spec, base, tensors, kwargs)
            assert torch.equal(streamed.view(torch.int32), expected.view(torch.int32)), (name, kwargs)


@pytest.mark.parametrize("name", FUSED)
def test_nan_and_inf_with_thinning(name):
    spec = METHODS[name]
    base, tensors = models(30_000, 3, torch.float32, seed=5)
    tensors[0][10], tensors[1][20], tensors[2][30] = float("nan"), float("inf"), -float("inf")
    base[40] = float("nan")
    kwargs = {"weight": [0.5, 0.3, 0.2], "normalize": False}
    if spec.param("density"):
        kwargs.update(density=[0.5, 0.7, 1.0], rescale=name != "ties")
    if spec.random:
        kwargs["rng"] = lambda i: torch.Generator().manual_seed(i)
    streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.float32, **kwargs)
    expected = whole(spec, base, tensors, kwargs)
    assert torch.equal(streamed.isnan(), expected.isnan())
    assert torch.equal(streamed.nan_to_num(0).view(torch.int32), expected.nan_to_num(0).view(torch.int32))


@pytest.mark.parametrize("density", [0.5, 0.3, 0.01, 0.999])
def test_fused_top_k_equals_top_k(density):
    base, (t,) = models(3 * chunks.CHUNK + 5, 1, torch.bfloat16)
    n = t.numel()
    spans = chunks.spans(n)
    a = (t.float() - base.float()).abs()
    expected = sparsify.TopK(lambda s: a[s], n, sparsify.top_k(density, n), spans)
    got = fused.top_k(base, t, density, spans)
    assert bool(got.threshold == expected.threshold) and got.cut == expected.cut


def test_fused_top_ks_equal_torch_top_k_of_each():
    # found together on two threads, each held to sparsify.TopK over torch's magnitudes
    base, ts = models(2 * chunks.CHUNK + 5, 3, torch.bfloat16)
    n, densities = base.numel(), [0.5, 0.3, 0.01]
    spans = chunks.spans(n)
    chunks.set_threads(2)
    try:
        together = fused.top_ks(base, ts, densities, spans)
    finally:
        chunks.set_threads(chunks.cpu_count())
    for t, density, got in zip(ts, densities, together):
        a = (t.float() - base.float()).abs()
        expected = sparsify.TopK(lambda s, a=a: a[s], n, sparsify.top_k(density, n), spans)
        assert bool(got.threshold == expected.threshold) and got.cut == expected.cut


@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.999])
@pytest.mark.parametrize("spread", [0, 1, 6], ids=["one-magnitude", "two-magnitudes", "few-magnitudes"])
def test_fused_top_k_selects_as_torch_among_repeats(density, spread):
    # a handful of distinct magnitudes: thousands equal the threshold (numpy's sort and
    # counts against torch's kthvalue and nonzero), a band of one value, and none above it
    g = torch.Generator().manual_seed(spread)
    n = chunks.CHUNK + 8195
    base = torch.zeros(n, dtype=torch.bfloat16)
    t = (torch.randint(-spread, spread + 1, (n,), generator=g) * 0.25 + (0.5 if spread == 0 else 0)).bfloat16()
    spans = chunks.spans(n)
    a = (t.float() - base.float()).abs()
    expected = sparsify.TopK(lambda s: a[s], n, sparsify.top_k(density, n), spans)
    got = fused.top_k(base, t, density, spans)
    assert bool(got.threshold == expected.threshold) and got.cut == expected.cut


@pytest.mark.parametrize("scale", [1e-6, 1.0, 3e4])
def test_kernel_sums_have_torchs_bits(scale):
    """torch_sum.sums: each BLOCK-entry run (the last shorter) summed as torch sums it, for
    lengths below a vector, around the cascade's steps and ragged tails."""
    g = torch.Generator().manual_seed(int(scale * 7) + 1)
    lengths = [*range(1, 70), 127, 128, 129, 511, 512, 513, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 4099]
    for n in lengths + torch.randint(1, 3 * BLOCK, (20,), generator=g).tolist():
        x = torch.randn(n, generator=g).abs_() * scale
        x[torch.rand(n, generator=g) < 0.4] = 0
        whole = n - n % BLOCK
        expected = [x[:whole].view(-1, BLOCK).sum(dim=1)] + ([x[whole:].sum().reshape(1)] if whole < n else [])
        got = torch.empty(-(-n // BLOCK))
        torch_sum.sums(x.numpy(), got.numpy())
        assert torch.equal(got.view(torch.int32), torch.cat(expected).view(torch.int32)), n


def test_rescaling_runs_fused_where_the_sums_agree(monkeypatch):
    """The L1 rescale's sums follow torch's kernel on x86 (CI's machines) and take the
    fused path; where they would differ, a rescaling step takes the torch stream, with
    the same bits."""
    assert fused.sums_agree()
    spec = METHODS["dare_ties"]
    base, tensors = models(chunks.CHUNK + 8195, 3, torch.bfloat16, seed=5)
    kwargs = {"weight": [0.5, 0.3, 0.2], "normalize": True, "density": [0.5, 0.3, 0.9], "rescale": True}
    kwargs["rng"] = lambda i: torch.Generator().manual_seed(3 + i)
    assert fused.usable(base, tensors, torch.float32, "bernoulli", rescale=True)
    streamed = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.bfloat16, **kwargs)
    monkeypatch.setattr(fused, "sums_agree", lambda: False)
    assert not fused.usable(base, tensors, torch.float32, "bernoulli", rescale=True)
    assert fused.usable(base, tensors, torch.float32, "bernoulli")
    on_torch = spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.bfloat16, **kwargs)
    assert torch.equal(streamed.view(torch.int16), on_torch.view(torch.int16))
    assert torch.equal(streamed, whole(spec, base, tensors, kwargs).bfloat16())


@pytest.mark.parametrize("seed", [0, 1, 2**62 + 12345, 2**63 - 1])
def test_drawn_masks_equal_torch_draws(seed):
    start, n = 1 << 33, 100_003  # past 2**32: the index arithmetic is 64-bit
    for density in (0.5, 0.1, 0.999):
        limit = sparsify.draw_limit(density)
        out = torch.empty(n)
        draws.drawn(seed, start, limit, out.numpy())
        assert torch.equal(out.bool(), sparsify.draws(seed, start, n) < limit)


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_keep_masks_hold_the_draws_bit_by_bit(seed):
    # draw_bits and the L1 pass write entry start + 8q + i at bit i of byte q; unpacked
    # gives them back as 0/1 bytes, as merge_drawn reads them; a ragged end zero-padded
    start, n, limit = (1 << 33) + 8 * BLOCK, 2 * BLOCK + 13, sparsify.draw_limit(0.4)
    kept = torch.empty(n)
    draws.drawn(seed, start, limit, kept.numpy())
    bits = np.empty(-(-n // 8), np.uint8)
    draws.draw_bits(seed, start, limit, bits)
    back = np.empty(bits.size * 8, np.uint8)
    draws.unpacked(bits, back)
    assert np.array_equal(back[:n], kept.numpy().astype(np.uint8))
    assert np.array_equal(np.unpackbits(bits, bitorder="little")[:n], back[:n])
    x, b = np.arange(n, dtype=np.float32) + 1, np.zeros(n, np.float32)  # every delta nonzero
    before, after = np.empty(3, np.float32), np.empty(3, np.float32)
    from_l1 = np.full(bits.size, 0xAA, np.uint8)
    compiled.l1_drawn(x, b, start, np.uint64(seed), np.uint64(limit), before, after, dtypes.MARKERS["float32"], from_l1)
    padded = np.unpackbits(from_l1, bitorder="little")
    assert np.array_equal(padded[:n], back[:n]) and not padded[n:].any()  # past the end: 0


def test_draws_are_splitmix64_and_uniform():
    # splitmix64's published first output for seed 0 (its state after one step)
    z = (0 + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    z ^= z >> 31
    assert z == 0xE220A8397B1DCDAF
    assert int(sparsify.draws(0, 0, 1)[0]) == z >> 40
    d = sparsify.draws(7, 0, 1 << 20).double() / (1 << sparsify.DRAW_BITS)
    assert abs(float(d.mean()) - 0.5) < 0.002 and abs(float(d.var()) - 1 / 12) < 0.001
    # neighbouring seeds (inputs of one tensor) draw unrelated masks
    a, b = sparsify.draws(7, 0, 1 << 20) < (1 << 23), sparsify.draws(8, 0, 1 << 20) < (1 << 23)
    assert abs(float((a & b).double().mean()) - 0.25) < 0.003
    assert sparsify.draw_limit(1.0) == 1 << 24 and sparsify.draw_limit(0.5) == 1 << 23


# --- half-precision compute: the kernels round where torch's arithmetic rounds --------

HALF = [torch.bfloat16, torch.float16]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaNs aside (their payloads are not values): equal where either is NaN."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    return torch.equal(bits(a.masked_fill(nan, 0)), bits(b.masked_fill(nan, 0)))


def three_ways(spec, base, tensors, compute, kwargs, monkeypatch) -> tuple:
    """(fused stream, torch stream, whole-tensor merge in `compute`), all as `compute`."""
    assert fused.usable(base, tensors, compute, "bernoulli" if spec.random else "magnitude")
    streamed = spec.stream(base, tensors, compute=compute, out_dtype=compute, **kwargs)
    with monkeypatch.context() as m:  # the torch stream: the reference for bytes
        m.setattr(fused, "usable", lambda *_: False)
        m.setattr(fused, "stream", None)  # (not called)
        on_torch = spec.stream(base, tensors, compute=compute, out_dtype=compute, **kwargs)
    whole = spec.merge(base.to(compute), [t.to(compute) for t in tensors], **kwargs)
    return streamed, on_torch, whole


def half_kwargs(spec, count: int, variant: int) -> dict:
    kwargs = {
        "weight": [[0.5, -0.3, 0.6, 0.25], [1.0, 0.3, -0.7, 0.1]][variant % 2][:count],
        "normalize": variant % 2 == 1,
        "lambda_": [1.0, 0.3, 1.5][variant % 3],  # 0.3 is no bfloat16: torch multiplies by its float32
    }
    if spec.param("density"):
        kwargs.update(density=[[0.5, 0.3, 1.0, 0.9], [0.3, 0.5, 0.7, 0.5]][variant % 2][:count], rescale=variant < 2)
    if spec.random:
        kwargs["rng"] = lambda i: torch.Generator().manual_seed(7 + i + variant)
    return kwargs


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", FUSED)
def test_fused_half_precision_equals_torch(name, dtype, monkeypatch):
    # inputs stored in the compute dtype, as the engine hands them over (rounded to the step's dtype)
    spec = METHODS[name]
    for count in (1, 2, 3, 4):
        for variant, n in enumerate([1, 7, 8195, chunks.CHUNK + 8195] if count > 2 else [1, 7, 8195]):
            base, tensors = models(n, count, dtype, seed=10 * count + variant)
            kwargs = half_kwargs(spec, count, variant)
            streamed, on_torch, whole = three_ways(spec, base, tensors, dtype, kwargs, monkeypatch)
            assert streamed.dtype == dtype
            assert torch.equal(bits(streamed), bits(on_torch)), (count, n, kwargs)
            assert torch.equal(bits(streamed), bits(whole)), (count, n, kwargs)


@pytest.mark.parametrize("stored", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("compute", HALF, ids=str)
def test_fused_half_precision_from_another_stored_dtype(stored, compute, threads, monkeypatch):
    # inputs rounded to the compute dtype chunk by chunk, as the torch stream does; two spans, threads
    base, tensors = models(chunks.CHUNK + 77, 3, torch.float32, seed=3)
    base, tensors = base.to(stored), [t.to(stored) for t in tensors]
    for name in ("ties", "dare_ties"):
        spec = METHODS[name]
        streamed, on_torch, whole = three_ways(spec, base, tensors, compute, half_kwargs(spec, 3, 1), monkeypatch)
        assert torch.equal(bits(streamed), bits(on_torch)) and torch.equal(bits(streamed), bits(whole)), name


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_fused_half_precision_ties_at_the_threshold(dtype, monkeypatch):
    # small integer deltas: a few distinct magnitudes, thousands equal to each top-k threshold
    g = torch.Generator().manual_seed(4)
    base = (torch.randint(-8, 9, (40_000,), generator=g) * 0.125).to(dtype)
    tensors = [(base.float() + torch.randint(-6, 7, (40_000,), generator=g) * 0.25).to(dtype) for _ in range(3)]
    for name, density in [("ties", [0.5, 0.3, 0.77]), ("ties", [0.01, 0.999, 0.5]), ("dare_ties", [0.5, 0.3, 0.9])]:
        spec = METHODS[name]
        kwargs = {"weight": [0.7, -0.4, 0.35], "normalize": True, "density": density, "rescale": True}
        if spec.random:
            kwargs["rng"] = lambda i: torch.Generator().manual_seed(i)
        streamed, on_torch, whole = three_ways(spec, base, tensors, dtype, kwargs, monkeypatch)
        assert torch.equal(bits(streamed), bits(on_torch)) and torch.equal(bits(streamed), bits(whole)), name


@pytest.mark.parametrize(
    "dtype, scale",
    [
        (torch.float16, 1e-6),  # float16 subnormals (below 6.1e-5), down to zero
        (torch.float16, 2e4),  # past 65504: inf, and inf - inf
        (torch.bfloat16, 1e-38),  # float32's (and bfloat16's) subnormals
        (torch.bfloat16, 1e38),  # past bfloat16's largest: inf
    ],
)
def test_fused_half_precision_at_the_ends_of_the_range(dtype, scale, monkeypatch):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(20_000, generator=g) * scale
    tensors = [(base + torch.randn(20_000, generator=g) * scale).to(dtype) for _ in range(3)]
    base = base.to(dtype)
    for name in FUSED:
        spec = METHODS[name]
        kwargs = half_kwargs(spec, 3, 0) | {"lambda_": 1.5, "normalize": name != "dare_linear"}
        streamed, on_torch, whole = three_ways(spec, base, tensors, dtype, kwargs, monkeypatch)
        assert same(streamed, on_torch) and same(streamed, whole), name


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("weight", [[1e-8], [-1e-8], [5e-9, 5e-9], [0.3, -0.3], [1e-4, -1e-4]])
def test_fused_half_precision_weight_sums_near_zero(dtype, weight, monkeypatch):
    # the weights are rounded to the compute dtype first (1e-8 is 0 in float16), then summed and tested
    base, tensors = models(5_000, len(weight), dtype, seed=6)
    for name in ("task_arithmetic", "dare_linear"):
        spec = METHODS[name]
        for normalize in (True, False):
            kwargs = {"weight": weight, "normalize": normalize, "lambda_": 0.3}
            if spec.random:
                kwargs.update(density=[0.5] * len(weight), rescale=True, rng=lambda i: torch.Generator().manual_seed(i))
            streamed, on_torch, whole = three_ways(spec, base, tensors, dtype, kwargs, monkeypatch)
            assert same(streamed, on_torch) and same(streamed, whole), (name, normalize)


def special_floats() -> torch.Tensor:
    """float32 bit patterns where rounding to bfloat16 or float16 decides: every exponent and
    top mantissa bits, with the low bits just below, at and above each halfway point; and
    random patterns (subnormals, inf and NaN included)."""
    high = torch.arange(1 << 16, dtype=torch.int64) << 16  # sign, exponent, 7 mantissa bits
    low = torch.tensor([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xFFFF])
    patterns = (high.view(-1, 1) | low.view(1, -1)).reshape(-1)
    g = torch.Generator().manual_seed(8)
    patterns = torch.cat([patterns, torch.randint(0, 1 << 32, (1 << 20,), generator=g)])
    return patterns.to(torch.int64).sub_((patterns >= 1 << 31).long() << 32).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize(
    "dtype, like",
    [
        (torch.bfloat16, dtypes.MARKERS["bfloat16"]),
        (torch.float16, dtypes.MARKERS["float16"]),  # F16C's conversion where the CPU has it
        (torch.float16, dtypes.FLOAT16_BY_ARITHMETIC),  # the arithmetic used where it has not
    ],
    ids=["bfloat16", "float16", "float16-arithmetic"],
)
def test_rounding_is_torchs_conversion(dtype, like):
    x = kernel_nans(special_floats())
    out = torch.empty_like(x)
    dtypes.rounded(x.numpy(), out.numpy(), like)
    assert same(out, x.to(dtype).float())
    dtypes.rounded(x.numpy(), out.numpy(), dtypes.MARKERS["float32"])
    assert torch.equal(out.view(torch.int32), x.view(torch.int32))  # float32: no rounding at all


def kernel_nans(x: torch.Tensor) -> torch.Tensor:
    """x with its NaNs as the kernels' NaNs are (dtypes.py: KERNEL NANS): every sign and
    high payload, quiet, the low 16 bits clear."""
    bits = x.view(torch.int32)
    quiet = (bits | 0x00400000) & -0x10000  # (-0x10000: 0xFFFF0000 as an int32)
    return torch.where(x.isnan(), quiet, bits).view(torch.float32)


def test_rounding_keeps_every_kernel_nan_a_nan():
    # the bfloat16 rounding of the kernels' results has no NaN select: any NaN with its low
    # bits clear comes through as a NaN (one with low bits set could round to inf or 0.0)
    high = torch.arange(1 << 16, dtype=torch.int32)
    nans = kernel_nans((high << 16).view(torch.float32))
    nans = nans[nans.isnan()]
    out = torch.empty_like(nans)
    dtypes.rounded(nans.numpy(), out.numpy(), dtypes.MARKERS["bfloat16"])
    assert bool(out.isnan().all())


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_storing_a_rounded_result_is_torchs_conversion(compute):
    # a merge kernel's last rounding and its store, as torch rounds an operation's result
    # and converts it to the saved dtype (bfloat16 into bfloat16: the bits, no second rounding)
    dtype, like = COMPUTE[compute]
    x = kernel_nans(special_floats())
    for saved in (torch.bfloat16, torch.float16, torch.float32):
        out = torch.empty(x.numel(), dtype=saved)
        dtypes.stored_result(x.numpy(), fused.raw(out), like)
        assert same(out.float(), x.to(dtype).to(saved).float()), saved
        if saved == torch.bfloat16:  # a NaN as torch stores it
            assert bool((out.view(torch.int16)[out.isnan()] == 0x7FC0).all())


COMPUTE = {
    "float32": (torch.float32, dtypes.MARKERS["float32"]),
    "bfloat16": (torch.bfloat16, dtypes.MARKERS["bfloat16"]),
    "float16": (torch.float16, dtypes.MARKERS["float16"]),  # F16C's conversions where the CPU has them
    "float16-arithmetic": (torch.float16, dtypes.FLOAT16_BY_ARITHMETIC),  # the arithmetic used where it has not
}


@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_reading_a_stored_input_is_torchs_conversion(stored, compute):
    # every 16-bit pattern (subnormals, inf, NaN) and float32 patterns where rounding decides,
    # read in their stored dtype and in the compute dtype, as the torch stream converts them
    dtype, like = COMPUTE[compute]
    if stored == torch.float32:
        x = special_floats()
    else:
        x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(stored)
    out = torch.empty(x.numel())
    dtypes.read(fused.raw(x), out.numpy(), like)
    assert same(out, x.to(dtype).float() if dtype != torch.float32 else x.float())
    if stored == dtype:  # no rounding: the same bits, NaN payloads included
        assert torch.equal(out.view(torch.int32), x.float().view(torch.int32))
    if dtype == torch.bfloat16:  # the NaNs a kernel starts from (dtypes.py: KERNEL NANS)
        assert bool((out.view(torch.int32)[out.isnan()] & 0xFFFF == 0).all())


@pytest.mark.parametrize("compute", COMPUTE)
def test_writing_a_result_is_torchs_conversion(compute):
    # a float32 result stored as the saved dtype (the marker picks float16's F16C or arithmetic)
    dtype, like = COMPUTE[compute]
    x = special_floats()
    out = torch.empty(x.numel(), dtype=dtype)
    dtypes.stored(x.numpy(), fused.raw(out), like)
    assert same(out.float(), x.to(dtype).float())
    assert out.isnan().equal(x.isnan())  # a NaN stays a NaN (its payload aside)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_torch_half_arithmetic_rounds_each_operation(dtype):
    # what the half-precision kernels rest on: each operation in float32, its result rounded
    # (to nearest, ties to even); a Python scalar as a float32; sums over dim 0 of up to
    # four inputs from +0.0 in input order, in float32, rounded once
    g = torch.Generator().manual_seed(9)
    scales = torch.logspace(-6, 3, 40_000).to(torch.float32)
    a = (torch.randn(40_000, generator=g) * scales).to(dtype)
    b = (torch.randn(40_000, generator=g) * scales.flip(0)).to(dtype)
    a[::13], b[::17] = -0.0, 0.0

    def rnd(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).float()

    fa, fb = a.float(), b.float()
    for got, want in [
        (a - b, rnd(fa - fb)),
        (a + b, rnd(fa + fb)),
        (a * b, rnd(fa * fb)),
        (a / b, rnd(fa / fb)),
        (a * 0.3, rnd(fa * torch.tensor(0.3, dtype=torch.float32))),
        (a / b[:1], rnd(fa / fb[:1])),  # a one-entry divisor, as the weights' sum
    ]:
        assert same(got.float(), want)
    for count in (1, 2, 3, 4):
        for n in [1, 3, 15, 16, 17, 31, 33, 1000, 8197]:
            x = torch.stack([(torch.randn(n, generator=g) * 10.0**-i).to(dtype) for i in range(count)])
            x[:, ::7] = -0.0
            in_order = torch.zeros(n)
            for row in x.float():
                in_order = in_order + row
            assert torch.equal(bits(torch.sum(x, dim=0).float()), bits(rnd(in_order))), (count, n)


@pytest.mark.slow  # a fresh interpreter loads numba and the kernels: seconds
def test_a_merge_kernel_runs_and_loads_the_loop_of_its_input_count():
    """compiled.Counted: `n` picks the entry point whose loop has that count frozen in, and
    fused.load(counts=...) loads only those counts' loops (a fresh interpreter, so nothing
    loaded any before)."""
    code = """
import numpy as np
from mergepkg.methods import fused
from mergepkg.methods.kernels import compiled
def loaded():
    return [len(e.signatures) for e in compiled.merge_weighted.entries]
fused.load(["float32"], ["float32"], ["merge_weighted"], ["float32"], counts=[2])
print(loaded())
b = np.zeros(3, np.float32)
ones, twos, out = b + 1, b + 2, np.empty(3, np.float32)
weights, like = np.ones(4, np.float32), compiled.MARKERS["float32"]
for n in (2, 3):
    compiled.merge_weighted(ones, twos, twos, twos, n, b, out, weights, False, False, np.float32(1), np.float32(1), like)
    print(out.tolist(), loaded())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert r.stdout.splitlines() == ["[0, 1, 0, 0]", "[3.0, 3.0, 3.0] [0, 1, 0, 0]", "[5.0, 5.0, 5.0] [0, 1, 1, 0]"]


@pytest.mark.slow  # a fresh interpreter loads numba and the kernels: seconds
def test_a_step_loads_the_kernels_its_method_runs_and_no_others():
    """fused.kernels by MethodSpec.thinner: a fresh interpreter loads them for one dtype, then
    each fused method runs (thinned, rescaled, and at density 1) without loading any other
    kernel or specialization, and the kernels no method of that thinner runs stay unloaded."""
    code = """
import torch
from mergepkg.methods import METHODS, fused
from mergepkg.methods.kernels import compiled, draws
names = sorted({k for ks in fused.KERNELS.values() for k in ks} | set(fused.L1_PASS.values()) | {"drawn", "sums"})
def loaded():
    return {k: len(getattr(compiled if hasattr(compiled, k) else draws, k).signatures) for k in names}
g = torch.Generator().manual_seed(0)
base = (torch.randn(50_000, generator=g) * 0.02).bfloat16()
tensors = [(base.float() + 0.002 * torch.randn(50_000, generator=g)).bfloat16() for _ in range(3)]
for name in sorted(n for n, spec in METHODS.items() if spec.fused):
    spec = METHODS[name]
    before = loaded()
    fused.load(["bfloat16"], ["bfloat16"], fused.kernels(spec.thinner, rescale=spec.param("rescale") is not None), ["bfloat16"])
    after = loaded()
    grew = sorted(k for k in names if after[k] > before[k])
    for density in ([0.5, 0.3, 1.0], [1.0, 1.0, 1.0]):
        kwargs = {"weight": [0.5, 0.3, 0.2], "normalize": True}
        if spec.param("density"):
            kwargs.update(density=density)
        if spec.param("rescale"):
            kwargs["rescale"] = True
        if spec.random:
            kwargs["rng"] = lambda i: torch.Generator().manual_seed(7 + i)
        spec.stream(base, tensors, compute=torch.bfloat16, out_dtype=torch.bfloat16, **kwargs)
    ran = sorted(k for k in names if loaded()[k] > after[k])
    print(name, spec.thinner, ",".join(grew) or "-", ",".join(ran) or "-")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert {"task_arithmetic", "ties", "dare_ties", "dare_linear"} <= set(rows)
    for name, (thinner, grew, ran) in rows.items():
        assert ran == "-", f"{name} ran kernels it did not load: {ran}"
        thinner = None if thinner == "None" else thinner
        assert set(grew.split(",")) - {"-"} <= {*fused.KERNELS[thinner], fused.L1_PASS.get(thinner), "sums"}, name
    # in the order they ran: DARE's kernels, then nothing new for task_arithmetic, then TIES'
    assert rows["dare_linear"] == ["bernoulli", "draw_bits,l1_drawn,merge_drawn,merge_weighted,sums", "-"]
    assert rows["task_arithmetic"] == ["None", "-", "-"]
    assert rows["ties"] == ["magnitude", "band,l1_top_k,merge_top_k", "-"]  # sums: loaded already
