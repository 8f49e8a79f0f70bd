"""methods/fused_slerp.py and kernels/spherical.py: slerp on compiled loops gives the
whole-tensor merge's bits, for every stored and saved dtype, size, t and thread count,
on both of its branches (slerp and lerp); and the facts about torch they rest on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mergepkg.methods import METHODS, fused_slerp, slerp
from mergepkg.methods.kernels import chunks, spherical
from mergepkg.methods.kernels.reduce import BLOCK

SLERP = METHODS["slerp"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SIZES = [1, 7, BLOCK + 3, chunks.CHUNK + 8195]  # one entry; a few; past a block; past a chunk, ragged
T = [0.0, 0.3, 0.5, 0.7, 1.0, -0.2, 1.4]  # both sides of lerp's 0.5, and extrapolation


def pair(n: int, how: str, dtype, seed: int = 0):
    """(base, other): a fine-tune (nearly colinear: lerp), an unrelated vector (slerp), the
    base itself, a zero base, or an opposite one."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g) * 0.02
    other = {
        "fine-tune": base + 0.002 * torch.randn(n, generator=g),
        "unrelated": torch.randn(n, generator=g) * 0.02,
        "same": base.clone(),
        "opposite": -base * 0.5 + 0.001 * torch.randn(n, generator=g),
    }[how]
    if how == "zero base":
        base = torch.zeros(n)
    return base.to(dtype), other.to(dtype)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request):
    chunks.set_threads(request.param)
    yield request.param
    chunks.set_threads(chunks.cpu_count())


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("how", ["fine-tune", "unrelated", "same", "opposite"])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_slerp_equals_merge(dtype, out_dtype, how, threads, monkeypatch):
    ran, stand_in = [], slerp.fused  # slerp.py's lazy stand-in for fused_slerp
    monkeypatch.setattr(stand_in, "combine", lambda *a, _real=fused_slerp.combine, **k: ran.append(1) or _real(*a, **k))
    for n in SIZES:
        base, other = pair(n, how, dtype, seed=n)
        assert fused_slerp.usable(base, other, torch.float32, out_dtype)
        for t in T:
            streamed = SLERP.stream(base, [other], compute=torch.float32, out_dtype=out_dtype, t=t)
            expected = SLERP.merge(base.float(), [other.float()], t=t).to(out_dtype)
            assert torch.equal(bits(streamed), bits(expected)), (n, t)
    assert len(ran) == len(SIZES) * len(T)  # every one on the loops


def test_a_zero_base_and_non_finite_values_give_the_merge_s_bits():
    """A zero vector falls back to lerp (its norm counted as 1); a NaN makes the sums NaN,
    and every entry NaN, as the torch merge does (NaNs compared as NaNs: their payload is
    the conversion's, as in test_fused.py)."""
    n = BLOCK * 2 + 5
    g = torch.Generator().manual_seed(3)
    other = torch.randn(n, generator=g).bfloat16()
    for base in (torch.zeros(n).bfloat16(), other.clone()):
        base[17] = float("nan") if base.any() else 0.0
        for t in (0.25, 0.75):
            streamed = SLERP.stream(base, [other], compute=torch.float32, out_dtype=torch.bfloat16, t=t)
            expected = SLERP.merge(base.float(), [other.float()], t=t).bfloat16()
            assert torch.equal(streamed.isnan(), expected.isnan())
            assert torch.equal(bits(streamed.nan_to_num(0)), bits(expected.nan_to_num(0)))
        assert bool(streamed.isnan().all()) == bool(base.isnan().any())


def test_the_loops_need_float32_compute_on_the_cpu_and_contiguous_inputs():
    a, b = pair(100, "unrelated", torch.bfloat16)
    assert fused_slerp.usable(a, b, torch.float32, torch.bfloat16)
    assert not fused_slerp.usable(a, b, torch.float64, torch.bfloat16)
    assert not fused_slerp.usable(a, b, torch.float32, torch.float64)
    assert not fused_slerp.usable(a[::2], b[::2], torch.float32, torch.bfloat16)
    wide = a.double().view(10, 10)
    t = SLERP.stream(wide, [b.double().view(10, 10)], compute=torch.float64, out_dtype=torch.float64, t=0.3)
    assert torch.equal(t, SLERP.merge(wide, [b.double().view(10, 10)], t=0.3))  # the torch stream


def test_torch_rounds_its_multiply_add_and_lerp_once():
    """What spherical.py rests on: torch.mul(a, c0).add_(b, alpha=c1) and torch.lerp round
    once (a fused multiply-add), so the same arithmetic rounded twice differs from them on
    these values, where the loops do not."""
    a, b = (x.float() for x in pair(chunks.CHUNK + 21, "unrelated", torch.float32, seed=5))
    c0, c1 = np.float32(0.6180339), np.float32(0.4142135)
    torch_mix = torch.mul(a, float(c0)).add_(b, alpha=float(c1))
    twice = torch.from_numpy(a.numpy() * c0 + b.numpy() * c1)  # numpy: two roundings
    assert not torch.equal(torch_mix, twice)
    like = fused_slerp.fused.compute_marker(torch.float32)
    out = np.empty(a.numel(), np.float32)
    spherical.slerp_mix(a.numpy(), b.numpy(), out, c0, c1, like)
    assert torch.equal(bits(torch_mix), bits(torch.from_numpy(out)))
    for weight in (0.3, 0.7):
        w = np.float32(weight)
        unfused = torch.from_numpy(a.numpy() + w * (b.numpy() - a.numpy()))
        assert not torch.equal(torch.lerp(a, b, weight), unfused)
        spherical.lerp(a.numpy(), b.numpy(), out, w, like)
        assert torch.equal(bits(torch.lerp(a, b, weight)), bits(torch.from_numpy(out)))


@pytest.mark.slow  # a fresh interpreter loads numba and the kernels: seconds
def test_a_slerp_step_loads_the_loops_it_runs_and_no_others():
    """MethodSpec.kernels: a fresh interpreter loads slerp's loops for its dtypes (float32
    compute over bfloat16, saved as bfloat16), then slerp runs, on both branches, without
    compiling or loading any other specialization."""
    code = """
import torch
from mergepkg.methods import METHODS, fused
from mergepkg.methods.kernels import spherical, torch_sum
names = [(spherical, k) for k in spherical.KERNELS] + [(torch_sum, "sums")]
def loaded():
    return [len(getattr(m, k).signatures) for m, k in names]
fused.load(["float32"], ["bfloat16"], METHODS["slerp"].kernels, ["bfloat16"])
before = loaded()
g = torch.Generator().manual_seed(0)
base = (torch.randn(50_000, generator=g) * 0.02).bfloat16()
for other in (base.float() + 0.001 * torch.randn(50_000, generator=g), torch.randn(50_000, generator=g)):
    METHODS["slerp"].stream(base, [other.bfloat16()], compute=torch.float32, out_dtype=torch.bfloat16, t=0.3)
print(before, loaded())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    before, after = r.stdout.strip().split("] [")
    assert before + "]" == "[" + after and "0" not in before, r.stdout  # each loaded, none more
