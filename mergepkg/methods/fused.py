"""The task-vector family on the CPU in fused, compiled loops (numba), on every core.

`task_vectors.stream_task_vectors` runs TIES as ~15 torch operations per chunk, each
one a trip through memory, on one thread's worth of chunk at a time. Here one compiled
loop does an entry's whole formula while its inputs sit in registers, and the chunks
are shared out among threads (numba releases the GIL, as torch does).

Same bits: every float operation is the one `merge_task_vectors` does, in float32, in
the same order; numba, without fastmath, neither fuses nor reorders them. The sums
over inputs start at +0.0 and run in input order, which is what torch's sum over dim 0
does for up to four inputs (tests check it, signed zeros included); more inputs take
the torch path. The loops read each input in its stored dtype and write the result in
the saved one, converting as torch's conversions do (kernels/dtypes.py: `_read`, `_store`).

Half-precision compute (bfloat16, float16) runs on the same loops. torch's CPU
arithmetic in those dtypes computes each operation in float32 and rounds its result
(to nearest, ties to even); its sums over dim 0 accumulate in float32 and round once;
a Python scalar (lambda) multiplies as a float32. The kernels round where torch does
(kernels/dtypes.py); the quantities computed once per tensor (the weights, the divisor, the
top-k threshold, the L1 rescale factor) are computed by torch in the compute dtype,
as the torch stream computes them.

Used on the CPU for float32, bfloat16 or float16 compute, 1-4 inputs, and the thinners
top-k (TIES) and Bernoulli (DARE) or none; `usable` decides. `tests/methods/test_fused.py`
holds it to the whole-tensor merge and to the torch stream bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

from mergepkg._lazy import lazy_import, torch, uninterrupted
from mergepkg.methods import sparsify
from mergepkg.methods.kernels import chunks
from mergepkg.methods.kernels.reduce import BLOCK, total_of_blocks

spherical = lazy_import("mergepkg.methods.kernels.spherical")  # slerp's loops; imports numba: on first use

MAX_INPUTS = 4  # torch sums up to four inputs in order; past that its order is its own
DTYPES = ("float32", "bfloat16", "float16")  # stored dtypes the loops read and write, and compute dtypes


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bfloat16", as DTYPES names them."""
    return str(dtype).removeprefix("torch.")


def covers(compute, inputs: int, device: str = "cpu") -> bool:
    """Whether a task-vector step with `inputs` models besides the base runs here."""
    return torch.device(device).type == "cpu" and dtype_name(compute) in DTYPES and 1 <= inputs <= MAX_INPUTS


def usable(base, tensors, compute, planner, rescale: bool = False) -> bool:
    """Whether this tensor's merge runs here (else on task_vectors' torch stream)."""
    return (
        base is not None
        and covers(compute, len(tensors), base.device)
        and base.numel() > 0
        and all(dtype_name(t.dtype) in DTYPES for t in [base, *tensors])
        and planner in (None, "magnitude", "bernoulli")
        and (not rescale or sums_agree())
    )


@functools.cache
def sums_agree() -> bool:
    """Whether the kernels' sums (torch_sum.sums, in the L1 rescale) have torch's bits on
    this machine: they follow torch's CPU kernel for its vector width on x86 and ARM's
    NEON. Checked once, on magnitudes of many scales over two blocks and a short third;
    where they differ, rescaling steps take the torch stream."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * BLOCK + 1001, generator=g).mul_(torch.randn(1, generator=g).exp_() * 8).abs_()
    x[torch.rand(x.shape, generator=g) < 0.3] = 0  # as thinned entries are
    mine = np.empty(3, np.float32)
    _kernels().sums(x.numpy(), mine)
    theirs = torch.cat([x[: 2 * BLOCK].view(2, BLOCK).sum(dim=1), x[2 * BLOCK :].sum().reshape(1)])
    return bool(np.array_equal(mine.view(np.int32), theirs.numpy().view(np.int32)))


def _kernels():
    """kernels/compiled.py, imported on first use (it imports numba); an import
    statement, under the import lock, as several threads may ask first. Ctrl-C waits for
    it (`_lazy.uninterrupted`)."""
    with uninterrupted():
        from mergepkg.methods.kernels import compiled

    return compiled


# The kernels (compiled.py) a stream may run, by its thinner (`planner`); an input at
# density 1 takes merge_weighted. A rescaling step also runs its thinner's L1 pass, and
# `sums` once per process (sums_agree).
KERNELS = {
    None: ("merge_weighted",),
    "magnitude": ("merge_weighted", "band", "merge_top_k"),
    "bernoulli": ("merge_weighted", "merge_drawn", "draw_bits"),
}
L1_PASS = {"magnitude": "l1_top_k", "bernoulli": "l1_drawn"}


def kernels(thinner: str | None, rescale: bool) -> tuple[str, ...]:
    """The kernels a stream with this thinner runs, rescaling or not."""
    return KERNELS[thinner] + ((L1_PASS[thinner], "sums") if rescale and thinner in L1_PASS else ())


def load(
    compute: Iterable[str] = DTYPES,
    stored: Iterable[str] = ("float32", "bfloat16"),
    kernels: Iterable[str] | None = None,
    results: Iterable[str] = ("float32", "bfloat16"),
    counts: Iterable[int] | None = None,
) -> None:
    """Import numba and load the compiled kernels now, for the `compute` dtypes over inputs
    stored as `stored`, writing `results`, the merges' loops for `counts` inputs (None:
    1 to MAX_INPUTS). Each is compiled the first time on a machine (0.5-2 s; slerp's set
    took 3.8 s), then loaded from numba's cache (2-4 ms each after numba's own set-up), so
    a step loads those it runs (`kernels`): one missed here is loaded, or compiled, on
    first use. `kernels` None: every one a task-vector stream runs. Names of
    kernels/spherical.py's loops (slerp's, float32 compute) are loaded from there."""
    inputs, outputs = tuple(d for d in stored if d in DTYPES), tuple(d for d in results if d in DTYPES)
    names = None if kernels is None else tuple(kernels)
    _kernels().warm(tuple(compute), inputs, names, outputs, None if counts is None else tuple(counts))
    if names:
        spherical.warm(names, inputs, outputs)  # those of spherical.py


def uncached_warning() -> str | None:
    """Where the loaded kernels could not be cached on disk (kernels/jit.py: no writable
    folder), what that costs and what to do."""
    if not _kernels().jit.UNCACHED:
        return None
    return (
        "numba found no writable folder for the merge kernels' cache, so they were compiled for this run"
        " and will be for every run (seconds each); set NUMBA_CACHE_DIR to a writable folder"
    )


def compute_marker(compute) -> np.ndarray:
    """The array whose type names the compute dtype to the kernels (dtypes.MARKERS)."""
    return _kernels().MARKERS[dtype_name(compute)]


def raw(t) -> np.ndarray:
    """A contiguous CPU tensor in its stored dtype as the numpy view the kernels read
    (dtypes.STORED: bfloat16 and float16 bits as 16-bit integers)."""
    if t.dtype == torch.float32:
        return t.numpy()
    return t.view(torch.int16).numpy().view(_kernels().STORED[dtype_name(t.dtype)])


def top_k(base, t, density: float, spans: list[slice], compute=torch.float32) -> sparsify.TopK:
    """sparsify.TopK of |t - base| (computed in `compute`), its pass through the band fused."""
    return top_ks(base, [t], [density], spans, compute)[0]


def top_ks(base, ts: list, densities: list[float], spans: list[slice], compute=torch.float32) -> list:
    """top_k of each of `ts` at its density, found together on the threads (TopK.several)."""
    like = _kernels().MARKERS[dtype_name(compute)]
    bs = raw(base)  # once: a numpy slice a chunk costs far less GIL than a tensor's

    def vector(t, density: float) -> tuple:
        xs = raw(t)

        def magnitudes(span):
            return torch.sub(t[span].to(compute), base[span].to(compute)).abs_().float()

        def band(span, lo, hi):
            s = chunks.thread_scratch()
            size = span.stop - span.start
            values = s.get("values", (size,), torch.float32)
            index = s.get("index", (size,), torch.int64)
            lo_, hi_ = np.float32(lo), np.float32(hi)
            above, count = _kernels().band(xs[span], bs[span], lo_, hi_, values.numpy(), index.numpy(), like)
            return above, values[:count].clone(), index[:count] + span.start

        n = t.numel()
        return magnitudes, n, sparsify.top_k(density, n), spans, band

    return _TopK.several([vector(t, d) for t, d in zip(ts, densities)], map=chunks.parallel)


class _TopK(sparsify.TopK):
    """TopK with its order statistics by numpy's sort (vectorized where the CPU has
    AVX-512): on a band of 868K magnitudes with many repeats, 0.6 ms against 17 ms for
    torch.kthvalue (6 ms for np.partition); NaN sorts last, as in torch."""

    @staticmethod
    def kth(values, i: int):
        return torch.tensor(np.sort(values.numpy())[i - 1])

    @classmethod
    def select(cls, values, index, need: int, n: int, single: float | None = None):
        v = values.numpy()
        ordered = np.sort(v)
        threshold = ordered[v.size - need] if single is None else np.float32(single)
        first, last = np.searchsorted(ordered, threshold, "left"), np.searchsorted(ordered, threshold, "right")
        quota = need - (v.size - last)  # ties to keep: 1 .. last - first
        cut = n if quota >= last - first else int(index[np.flatnonzero(v == threshold)[quota - 1]]) + 1
        return torch.tensor(threshold), cut


def _bytes(start: int, stop: int) -> slice:
    """The bytes of a keep mask (one bit an entry) that hold entries start..stop (start a
    multiple of 8, as every chunk's is)."""
    return slice(start // 8, -(-stop // 8))


def stream(
    base,
    tensors,
    *,
    compute,
    out_dtype,
    weight,
    normalize,
    lambda_=1.0,
    density=None,
    rescale=False,
    rng=None,
    elect_sign: bool,
    planner: str | None,
    out=None,
):
    """task_vectors.stream_task_vectors on fused kernels: the same bits, in float32,
    bfloat16 or float16 compute."""
    flat_base = base.reshape(-1)
    flat = [t.reshape(-1) for t in tensors]
    inputs, n = len(flat), flat_base.numel()
    # the kernels' views, made once: the threads slice these a chunk at a time, holding
    # the GIL for a numpy slice rather than a tensor's slice, view and conversion
    raw_base, raw_flat = raw(flat_base), [raw(t) for t in flat]
    spans = chunks.spans(n)
    # per input, padded to four: TopK's threshold (-inf keeps all) and cut, or DARE's seed
    # and draw limit (2**24 keeps all); the L1 factor; the weight
    threshold = np.full(MAX_INPUTS, -np.inf, np.float32)
    cut = np.zeros(MAX_INPUTS, np.int64)
    seed = np.zeros(MAX_INPUTS, np.uint64)
    limit = np.full(MAX_INPUTS, 1 << sparsify.DRAW_BITS, np.uint64)
    factor = np.ones(MAX_INPUTS, np.float32)  # x * 1.0 == x, bit for bit: "no rescale"
    weights = np.zeros(MAX_INPUTS, np.float32)
    # as merge_task_vectors rounds them: torch.tensor(weight, dtype=compute)
    w = torch.tensor(list(weight), dtype=compute)
    weights[:inputs] = w.float().numpy()
    thinned = [i for i in range(inputs) if planner and density[i] < 1]
    kernels = _kernels()
    like = kernels.MARKERS[dtype_name(compute)]
    if planner == "magnitude":
        rules = top_ks(flat_base, [flat[i] for i in thinned], [density[i] for i in thinned], spans, compute)
        for i, rule in zip(thinned, rules):
            threshold[i], cut[i] = float(rule.threshold), rule.cut
    elif planner == "bernoulli":
        for i in thinned:
            seed[i], limit[i] = rng(i).initial_seed(), sparsify.draw_limit(density[i])

    # DARE's keep masks (draws.draw_bits), one bit an entry: drawn by the L1 pass where
    # it runs, else a chunk's just before its merge
    masks = [np.empty(-(-n // 8), np.uint8) for _ in thinned] if planner == "bernoulli" else []
    if rescale and thinned:
        # the L1 sums of each thinned task vector before and after thinning, as the torch
        # stream takes them (sparsify.l1_rescale): in reduce.Total's blocks, each block
        # summed by the kernel with torch's bits; the chunks shared among the threads
        l1 = np.empty((len(thinned), 2, -(-n // BLOCK)), np.float32)  # per input: before, after; per block

        def sums(group: list[slice]) -> None:
            for span in group:
                b, at = raw_base[span], span.start // BLOCK
                for row, i in enumerate(thinned):
                    x, before, after = raw_flat[i][span], l1[row, 0, at:], l1[row, 1, at:]
                    if planner == "magnitude":
                        kernels.l1_top_k(x, b, span.start, threshold[i], cut[i], before, after, like)
                    else:
                        bits = masks[row][_bytes(span.start, span.stop)]
                        kernels.l1_drawn(x, b, span.start, seed[i], limit[i], before, after, like, bits)

        chunks.parallel(sums, chunks.groups(spans))
        for row, i in enumerate(thinned):
            f = sparsify.rescale_factor(*(total_of_blocks(torch.from_numpy(l1[row, k]), compute) for k in (0, 1)))
            factor[i] = 1.0 if f is None else float(f)
    # as merge_task_vectors computes it: the weights' sum, ~0 replaced by 1 (no sign election)
    divisor = w.view(-1, 1).sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    divisor = np.float32(divisor.item())
    lam = np.float32(lambda_)  # torch multiplies by a Python scalar as a float32, in half precision too
    if np.isnan(lam):  # the plain NaN: the kernels' NaNs keep their low bits clear (dtypes.py: KERNEL NANS)
        lam = np.float32(np.nan)

    out = chunks.output(out, base.shape, out_dtype, base.device)
    dest = out.view(-1)

    rest = (elect_sign, normalize, divisor, lam, like)
    if thinned and planner == "bernoulli":
        by_input = dict(zip(thinned, masks))
        if len(by_input) < inputs:
            whole = np.full(-(-n // 8), 0xFF, np.uint8)  # an input kept whole: every bit set
            by_input.update({i: whole for i in range(inputs) if i not in by_input})
        per_input = [by_input[i] for i in range(inputs)]
        per_input += per_input[-1:] * (MAX_INPUTS - inputs)

        def run(xs, b, into, start: int) -> None:
            at = _bytes(start, start + len(b))
            if not rescale:
                for row, i in enumerate(thinned):
                    kernels.draw_bits(seed[i], start, limit[i], masks[row][at])
            kernels.merge_drawn(*xs, inputs, b, into, *(m[at] for m in per_input), factor, weights, *rest)
    elif thinned:

        def run(xs, b, into, start: int) -> None:
            kernels.merge_top_k(*xs, inputs, b, into, start, threshold, cut, factor, weights, *rest)
    else:  # every input kept whole: the loop without keep rules or rescale, the same bits

        def run(xs, b, into, start: int) -> None:
            kernels.merge_weighted(*xs, inputs, b, into, weights, *rest)

    # a dtype the kernels store: they round to it and write the result in place
    raw_dest = raw(dest) if dtype_name(out.dtype) in DTYPES else None
    spare = MAX_INPUTS - inputs  # the spare inputs: the last again, ignored

    def merge_group(group: list[slice]):
        result = chunks.thread_scratch().get("result", (min(chunks.CHUNK, n),), torch.float32)
        for span in group:
            xs = [x[span] for x in raw_flat]
            xs += xs[-1:] * spare
            if raw_dest is not None:
                run(xs, raw_base[span], raw_dest[span], span.start)
            else:
                into = result[: span.stop - span.start]
                run(xs, raw_base[span], into.numpy(), span.start)
                dest[span].copy_(into)

    chunks.parallel(merge_group, chunks.groups(spans))
    return out
