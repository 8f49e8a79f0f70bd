"""Pitfalls in tensor values (MP3xx), watched while a step streams: every input tensor
checked once for NaN and inf, and each input's task vector measured against the base.

Both run on tensors the engine has read already, never reading anything again:
finiteness is one sum per tensor (a NaN or inf entry makes the sum NaN or inf, so a
finite sum clears every entry; a faster pass than `aminmax`, no memory), and the norms
come from a sample of at most `SAMPLE` entries of each matrix, in contiguous blocks, so
they cost nothing next to the merge. The counts are exact only on the rare tensor whose
sum is not finite (its entries are then counted; a sum that merely overflowed finds none).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from mergepkg._lazy import torch
from mergepkg.io.tensors import TensorInfo
from mergepkg.layout.types import OutputTensor, StepLayout
from mergepkg.pitfalls.pitfall import Pitfall, model_at, written_name
from mergepkg.recipe.model import Step

SAMPLE = 1 << 16  # entries of a tensor the task-vector norms are measured on
BLOCK = 1 << 10  # ... in blocks this long: a strided gather missed the cache on every entry (3x slower)
# MP301: an input whose task vector (input - base), over the step's matrices, is this many
# times as long as the base's weights. Fine-tunes move weights by a small fraction of their
# norm; two models trained from different starts are nearly orthogonal, so their difference
# is sqrt(|a|^2 + |b|^2) long: 1.41 times the base's when their norms match (docs/warnings.md).
FOREIGN_RATIO = 1.25


@dataclass
class _Bad:
    """Non-finite values found in one model's tensors."""

    tensor: str  # the first tensor they were found in
    nan: int
    inf: int
    entries: int


class ValueWatch:
    """What the MP3xx checks saw of one step's inputs; `pitfalls()` says it at the end.
    `loaded` and `aligned` may be called from the reader thread and the merging thread."""

    def __init__(self, layout: StepLayout, infos: Mapping[str, Mapping[str, TensorInfo]]):
        step, method = layout.step, layout.method
        self.step, self.infos = step, infos  # infos: every model's tensor headers (whole sizes)
        # task vectors mean something where a base is merged against (not experts, not an adapter)
        self.measure = step.base is not None and method.base != "none" and step.moe is None and step.adapter is None
        self.bad: dict[str, _Bad] = {}  # model -> what was found
        # (model, tensor) with non-finite values -> the read that counts them: (output tensor,
        # part index). A frankenmerge reads a layer for several outputs, or twice for one;
        # only that read's blocks of rows are counted, so each entry is counted once
        self.counted: dict[tuple[str, str], tuple[str, int]] = {}
        self.delta: dict[str, float] = {}  # input -> sum of squares of its task vector (estimated)
        self.base: dict[str, float] = {}  # input -> sum of squares of the base where it was measured
        self.lock = threading.Lock()

    def loaded(self, out: OutputTensor, tensors: list) -> None:
        """Tensors (or blocks of rows) of `out`'s parts, as read: each checked for NaN and inf."""
        for i, (part, t) in enumerate(zip(out.parts, tensors)):
            if not t.is_floating_point() or not t.numel():
                continue
            nan, inf = _counts(t)
            if nan or inf:
                with self.lock:
                    self._count(part.model, part.tensor, (out.name, i), nan, inf)

    def _count(self, model: str, tensor: str, read: tuple[str, int], nan: int, inf: int) -> None:
        """Add what one read (a tensor, or a block of its rows) of `model`'s `tensor` holds,
        unless another read counts that tensor already: the same rows read again (a layer
        reused) would count its NaN twice, past the tensor's size. Under `lock`."""
        if self.counted.setdefault((model, tensor), read) != read:
            return
        bad = self.bad.get(model)
        if bad is None:
            self.bad[model] = _Bad(tensor, nan, inf, math.prod(self.infos[model][tensor].shape))
        elif bad.tensor == tensor:  # another block of rows of the same tensor
            bad.nan, bad.inf = bad.nan + nan, bad.inf + inf

    def aligned(self, out: OutputTensor, tensors: list) -> None:
        """`out`'s inputs (base first) on one shape: each input's task vector measured on a
        sample of the entries, where `out` is a matrix merged against the base."""
        if not self.measure or out.base is None or len(tensors) < 2 or tensors[0].dim() < 2:
            return
        base = tensors[0]
        if not base.is_floating_point() or not base.is_contiguous() or not base.numel():
            return  # a tensor of no entries (a dimension of size 0) has no norm to sample
        b = _sample(base).double()
        scale = base.numel() / b.numel()  # the sample stands for the whole tensor
        base_sq = float(b.square().sum()) * scale
        for part, t in zip(out.inputs, tensors[1:]):
            if t.shape != base.shape or not t.is_contiguous():
                continue
            d = _sample(t).double() - b
            delta_sq = float(d.square().sum()) * scale
            if not (math.isfinite(delta_sq) and math.isfinite(base_sq)):
                continue  # NaN or inf: MP302 says it
            with self.lock:
                self.delta[part.model] = self.delta.get(part.model, 0.0) + delta_sq
                self.base[part.model] = self.base.get(part.model, 0.0) + base_sq

    def pitfalls(self) -> list[Pitfall]:
        """MP301 for each input that looks fine-tuned from another base, MP302 for each
        model with NaN or inf, in the step's order of models."""
        found = []
        for model in self.step.models:
            if (bad := self.bad.get(model)) is not None:
                tensors = sum(m == model for m, _ in self.counted)  # of the model's with some
                found.append(_non_finite(self.step, model, bad, tensors))
        for model in self.step.models:
            base_sq, delta_sq = self.base.get(model, 0.0), self.delta.get(model, 0.0)
            if base_sq > 0 and math.sqrt(delta_sq / base_sq) > FOREIGN_RATIO:
                found.append(_foreign(self.step, model, math.sqrt(delta_sq / base_sq)))
        return found


def _foreign(step: Step, model: str, ratio: float) -> Pitfall:
    """MP301 for `model`, whose task vector is `ratio` times as long as the base."""
    assert step.base is not None  # measured only against a base
    name, base = written_name(step, model), written_name(step, step.base)
    return Pitfall(
        "MP301",
        f"{name!r} minus the base {base!r} is {ratio:.2f} times as large as {base!r} itself (over the step's "
        "matrices): it does not look fine-tuned from that base, so its task vector is a whole other model's weights",
        f"use the model {name!r} was fine-tuned from as the base, or merge models of one base; "
        "if the difference is meant, allow MP301 in [package] allow",
        step=step.name,
        at=model_at(step, model),
    )


def _non_finite(step: Step, model: str, bad: _Bad, tensors: int) -> Pitfall:
    """MP302 for `model`: where its first non-finite values are, how many, and in how
    many of its `tensors`."""
    if bad.nan == bad.entries:
        what = "every value is NaN"
    else:
        counts = [f"{n} {word}" for n, word in ((bad.nan, "NaN"), (bad.inf, "inf")) if n]
        what = f"{' and '.join(counts)} among its {bad.entries} values"
    more = f" (and {tensors - 1} more of its tensors)" if tensors > 1 else ""
    return Pitfall(
        "MP302",
        f"{written_name(step, model)!r} tensor {bad.tensor}: {what}{more}; NaN and inf spread through the merge",
        "the model is damaged or was saved from a diverged run: download it again, or use another checkpoint",
        step=step.name,
        at=model_at(step, model),
        tensor=bad.tensor,
    )


def _counts(t: torch.Tensor) -> tuple[int, int]:
    """How many entries of `t` are NaN and how many are inf: (0, 0) at the cost of one sum
    where the sum is finite (NaN and inf make any sum NaN or inf), counted where it is not
    (finite entries whose sum passes the dtype's range, 65504 in float16, count (0, 0)).
    The sum in `t`'s dtype: torch accumulates half precision in float32 anyway, and asked
    for a float32 sum of bfloat16 it converted first, 25x slower."""
    if math.isfinite(float(t.sum())):
        return 0, 0
    return int(t.isnan().sum()), int(t.isinf().sum())


def _sample(t: torch.Tensor) -> torch.Tensor:
    """At most SAMPLE entries of a contiguous matrix, the same ones for any tensor of its
    shape: blocks of BLOCK entries spread over it, each starting in another column."""
    n, row = t.numel(), t.shape[-1]
    flat = t.reshape(-1)
    if n <= SAMPLE:
        return flat
    blocks = SAMPLE // BLOCK
    # the last block ends inside the tensor; a step sharing no factor with the row length
    # starts the blocks in columns spread over the row, not all in the first one
    step = (n - BLOCK) // (blocks - 1)
    while step > BLOCK and math.gcd(step, row) != 1:
        step -= 1
    return flat.as_strided((blocks, BLOCK), (step, 1))  # [blocks, BLOCK], a view
