"""Passthrough: copy one input's tensor, optionally scaled. With slices this stacks
layers of several models into a deeper one (a "frankenmerge"); the engine renumbers
layers and updates the layer count in config.json.

Layer stacking as in SOLAR's depth up-scaling, Kim et al., https://arxiv.org/abs/2312.15166;
semantics as mergekit's "passthrough". Invariant (tests): the output equals the input (or
input * scale) byte for byte, layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods.spec import MethodSpec, Param


def passthrough(base, tensors: Sequence[torch.Tensor], *, scale: Sequence[float | None]) -> torch.Tensor:
    (x,), (s,) = tensors, scale
    return x if s is None else x * s


SPEC = MethodSpec(
    name="passthrough",
    merge=passthrough,
    params=(Param("scale", None, per_input=True, doc="multiply the copied tensor by this"),),
    summary="Copy one model's tensors; with slices, stack layers of several models.",
    paper="https://arxiv.org/abs/2312.15166",
    base="none",
    min_inputs=1,
    max_inputs=1,
)
