"""slerp on the CPU in fused, compiled loops (kernels/spherical.py), on every core.

Its torch stream converts each chunk of both inputs to float32 into buffers, then runs
three products and sums over them, and a multiply and an add (or a lerp), each a trip
through memory; here one loop a pass reads the stored inputs (and writes the stored
result), and the chunks are shared out to threads as the task-vector family's are
(fused.py). Same bits: the loops do torch's float32 operations in torch's order, fused
multiply-adds where torch's kernels use them (spherical.py), and the three sums in
reduce.Total's blocks with torch's bits (torch_sum.py's sum, checked against torch once
per process: `fused.sums_agree`). The coefficients between the passes are slerp.py's.

Used on the CPU for float32 compute (slerp computes in at least float32), inputs and
result stored as float32, bfloat16 or float16; `usable` decides, else the torch stream
runs. tests/methods/test_fused_slerp.py holds it to the whole-tensor merge bit for bit.
"""

from __future__ import annotations

import numpy as np

from mergepkg._lazy import lazy_import, torch
from mergepkg.methods import fused
from mergepkg.methods.kernels import chunks
from mergepkg.methods.kernels.reduce import BLOCK, total_of_blocks

spherical = lazy_import("mergepkg.methods.kernels.spherical")  # imports numba: on first use


def usable(a, b, compute, out_dtype) -> bool:
    """Whether slerp of `a` and `b` runs on the loops (the sums need torch's bits here:
    `fused.sums_agree`)."""
    return (
        a.device.type == "cpu"
        and compute == torch.float32
        and a.numel() > 0
        and all(fused.dtype_name(t.dtype) in fused.DTYPES and t.is_contiguous() for t in (a, b))
        and fused.dtype_name(out_dtype) in fused.DTYPES
        and fused.sums_agree()
    )


def _each_chunk(n: int, run) -> None:
    """run(span) for each chunk of range(n), the chunks shared out to the threads."""

    def group(spans: list[slice]) -> None:
        for span in spans:
            run(span)

    chunks.parallel(group, chunks.groups(chunks.spans(n)))


def sums(a, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a.a, b.b, a.b) over the flattened tensors, in float32, with reduce.total's bits."""
    x, y = fused.raw(a.reshape(-1)), fused.raw(b.reshape(-1))
    n = x.shape[0]
    blocks = np.empty((3, -(-n // BLOCK)), np.float32)  # per block: a.a, b.b, a.b
    like = fused.compute_marker(torch.float32)

    def run(span: slice) -> None:
        at = span.start // BLOCK
        spherical.slerp_sums(x[span], y[span], blocks[0, at:], blocks[1, at:], blocks[2, at:], like)

    _each_chunk(n, run)
    aa, bb, ab = (total_of_blocks(torch.from_numpy(s), torch.float32) for s in blocks)
    return aa, bb, ab


def combine(a, b, t: float, coefficients, *, out_dtype, out=None):
    """a * c0 + b * c1 for coefficients (c0, c1), or torch.lerp(a, b, t) for None: as
    methods/slerp.py's `_combine`."""
    x, y = fused.raw(a.reshape(-1)), fused.raw(b.reshape(-1))
    out = chunks.output(out, a.shape, out_dtype, a.device)
    dest, like = fused.raw(out.view(-1)), fused.compute_marker(torch.float32)
    if coefficients is None:
        weight = np.float32(t)

        def run(span: slice) -> None:
            spherical.lerp(x[span], y[span], dest[span], weight, like)

    else:
        c0, c1 = (np.float32(c) for c in coefficients)

        def run(span: slice) -> None:
            spherical.slerp_mix(x[span], y[span], dest[span], c0, c1, like)

    _each_chunk(dest.shape[0], run)
    return out
