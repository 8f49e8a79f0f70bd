"""Streaming (chunks.py) gives the same bits as the whole-tensor merge, for every
method that streams; the exact top-k and the piecewise sum behind it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mergepkg.methods import METHODS, sparsify
from mergepkg.methods.kernels import chunks
from mergepkg.methods.kernels.reduce import BLOCK, Total, total

# moe's `stream` copies one tensor's stored bytes (tests/test_moe.py checks them): no merge arithmetic to chunk
STREAMING = sorted(name for name, spec in METHODS.items() if spec.stream and name != "moe")
# 3 chunks and a ragged end; a tensor of one block or less; one entry
SHAPES = [(2 * chunks.CHUNK // 1000 + 7, 1000), (97, 13), (1,)]


def test_the_benchmarked_methods_stream():
    assert {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"} <= set(STREAMING)


def inputs(shape, dtype, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    # bfloat16 deltas repeat values: many ties at any top-k threshold
    return [(base + (0.002 * torch.randn(shape, generator=g) if i else 0)).to(dtype) for i in range(n)]


def params(spec, count):
    values = {"weight": [0.5, 0.3, 0.2][:count], "density": [0.5, 0.5, 0.3][:count], "t": 0.3}
    out = {}
    for p in spec.params:
        if p.name in values:
            out[p.arg] = values[p.name][:count] if p.per_input else values[p.name]
        elif not p.required:
            out[p.arg] = [p.default] * count if p.per_input else p.default
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("name", STREAMING)
def test_stream_equals_merge(name, dtype, shape):
    spec = METHODS[name]
    models = inputs(shape, dtype)
    base, tensors = (models[0], models[1:]) if spec.base != "none" else (None, models[1:])
    if spec.max_inputs:
        tensors = tensors[: spec.max_inputs]
    kwargs = params(spec, len(tensors))
    if spec.random:
        kwargs["rng"] = lambda i: torch.Generator().manual_seed(7 + i)
    compute = torch.float32
    whole = spec.merge(base.to(compute) if base is not None else None, [t.to(compute) for t in tensors], **kwargs)
    for rescale in [False, True] if "rescale" in kwargs else [None]:
        if rescale is not None:
            kwargs["rescale"] = rescale
            whole = spec.merge(base.to(compute), [t.to(compute) for t in tensors], **kwargs)
        streamed = spec.stream(base, tensors, compute=compute, out_dtype=dtype, **kwargs)
        assert streamed.dtype == dtype and streamed.shape == shape
        assert torch.equal(streamed.view(-1).view(torch.uint8), whole.to(dtype).view(-1).view(torch.uint8))


@pytest.mark.parametrize("density", [0.5, 0.3, 0.01, 0.999])
def test_top_k_is_exact_and_breaks_ties_by_index(density):
    g = torch.Generator().manual_seed(1)
    delta = torch.randint(-20, 21, (300, 700), generator=g).float()  # 41 distinct values: ties everywhere
    kept = sparsify.magnitude(delta, density)
    n, k = delta.numel(), sparsify.top_k(density, delta.numel())
    a = delta.abs().reshape(-1)
    threshold = a.kthvalue(n - k + 1).values
    chosen = sparsify.TopK(lambda s: a[s], n, k, chunks.spans(n, BLOCK)).keep(slice(0, n), a)
    assert int(chosen.sum()) == k  # exactly k, whatever the ties
    assert bool((a[chosen] >= threshold).all()) and bool((a[~chosen] <= threshold).all())
    ties = (a == threshold).nonzero().squeeze(1)
    kept_ties = chosen[ties]
    assert bool((kept_ties[:-1].int() >= kept_ties[1:].int()).all())  # lowest indexes first
    assert torch.equal((kept != 0).reshape(-1), chosen & (a != 0))  # magnitude() keeps the same entries


def test_top_k_falls_back_when_the_sample_misleads():
    # the strided sample sees only zeros; the large values hide between its points
    n = 1 << 20
    a = torch.zeros(n)
    a[1::2] = torch.arange(n // 2, dtype=torch.float32)
    rule = sparsify.TopK(lambda s: a[s], n, 1000, chunks.spans(n))
    chosen = rule.keep(slice(0, n), a)
    assert int(chosen.sum()) == 1000 and float(a[chosen].min()) == n // 2 - 1000


def test_several_top_ks_are_each_found_alone():
    # found together on two threads (brackets, passes, selections a step at a time): a
    # vector of ties, a plain one, and one whose sample misleads (searched again)
    g = torch.Generator().manual_seed(7)
    n = 2 * chunks.CHUNK + 77
    hidden = torch.zeros(n)
    hidden[1::2] = torch.arange(n // 2, dtype=torch.float32)
    vectors = [torch.randint(0, 9, (n,), generator=g).float(), torch.randn(n, generator=g).abs(), hidden]
    ks = [n // 3, n // 2, 1000]
    spans = chunks.spans(n)
    chunks.set_threads(2)
    try:
        together = sparsify.TopK.several(
            [(lambda s, a=a: a[s], n, k, spans, None) for a, k in zip(vectors, ks)], chunks.parallel
        )
    finally:
        chunks.set_threads(chunks.cpu_count())
    for a, k, rule in zip(vectors, ks, together):
        alone = sparsify.TopK(lambda s, a=a: a[s], n, k, spans)
        assert bool(rule.threshold == alone.threshold) and rule.cut == alone.cut
        assert int(rule.keep(slice(0, n), a).sum()) == k


@pytest.mark.parametrize("n", [1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 3, 3 * chunks.CHUNK + 11])
def test_total_in_pieces_equals_total(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    t = Total()
    for span in chunks.spans(n, 2 * BLOCK):
        t.add(x[span])
    assert torch.equal(t.result(), total(x))


def test_totals_of_consecutive_pieces_join_into_one():
    # what parallel streams rest on: pieces summed by several workers, joined in order
    n = 5 * chunks.CHUNK + 11
    x = torch.randn(n, generator=torch.Generator().manual_seed(3))
    spans = chunks.spans(n)
    parts = []
    for group in (spans[:2], spans[2:3], spans[3:]):
        t = Total()
        for span in group:
            t.add(x[span])
        parts.append(t)
    assert torch.equal(Total.joined(parts).result(), total(x))
    small = Total()
    small.add(x[:100])
    assert torch.equal(Total.joined([small, Total()]).result(), total(x[:100]))


@pytest.mark.parametrize("name", ["linear", "slerp"])
def test_streams_on_one_or_two_threads_agree(name):
    spec = METHODS[name]
    models = inputs((3 * chunks.CHUNK // 1000 + 7, 1000), torch.bfloat16)
    base, tensors = (models[0], models[1:2]) if spec.base != "none" else (None, models[:2])
    kwargs = params(spec, len(tensors))
    results = []
    for n in (1, 2):
        chunks.set_threads(n)
        results.append(spec.stream(base, tensors, compute=torch.float32, out_dtype=torch.bfloat16, **kwargs))
    chunks.set_threads(chunks.cpu_count())
    assert torch.equal(results[0].view(torch.int16), results[1].view(torch.int16))


def test_parallel_keeps_order_shares_items_with_the_caller_and_waits_out_a_failure():
    chunks.set_threads(2)
    try:
        ran, both = [], threading.Barrier(2, timeout=30)

        def double(x):
            both.wait()  # an item ends only with both threads in one: they take turns
            ran.append(threading.current_thread().name)
            return x * 2

        assert chunks.parallel(double, range(8)) == [0, 2, 4, 6, 8, 10, 12, 14]
        # dealt as the threads free up: the caller drains beside the helper, half each
        assert ran.count(threading.current_thread().name) == 4
        assert sum(n.startswith("mergepkg-chunks") for n in ran) == 4

        started, finished = [], []

        def fail_first(x):
            started.append(x)
            if x == 0:
                raise ValueError("first")
            time.sleep(0.05)
            finished.append(x)

        with pytest.raises(ValueError, match="first"):
            chunks.parallel(fail_first, range(6))
        assert sorted(finished) == sorted(x for x in started if x != 0)  # nothing left running
        assert len(started) < 6  # and no item taken after the failure was known
    finally:
        chunks.set_threads(chunks.cpu_count())
