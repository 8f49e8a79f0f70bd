"""A PEFT LoRA adapter applied to one tensor of its base model, as peft's
`merge_and_unload` applies it (and mergekit, which calls it for `base+adapter`).

Not a merge method a recipe names: the method of the implicit step a `base+adapter`
reference makes (recipe/adapters.py), laid out by `layout/lora.py`, which gives each
output tensor its `kind` and numbers. Inputs arrive in float32 (the spec's `fp32`: the
engine converts half-precision tensors, as peft upcasts a half-precision adapter's
weights to float32 when it loads one), and the arithmetic is peft's, operation for
operation, so the bytes are the same (tests hold it to peft and mergekit bit for bit):

- `linear`: W + (B @ A) * scaling, the product transposed first for `fan_in_fan_out`
  (GPT-2's Conv1D), added in float32 and rounded once to W's dtype;
- `embedding`: W + ((B @ A)^T * scaling rounded to W's dtype), as peft's Embedding merges;
- `bias`: b + lora_B.bias * scaling (`lora_bias`);
- `copy`: the adapter's own copy of the tensor (`modules_to_save`, a saved
  `base_layer`), which peft loads into the base's dtype.

`dtype` is the tensor's saved dtype: W (the base's, or the adapter's copy) is rounded to
it first, which changes only a copy.
"""

from __future__ import annotations

from mergepkg._lazy import torch
from mergepkg.methods.spec import MethodSpec

KINDS = ("linear", "embedding", "bias", "copy")


def merge(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    *,
    kind: str = "copy",
    scaling: float = 1.0,
    transpose: bool = False,
    dtype: str | None = None,
) -> torch.Tensor:
    """`base` with the adapter's `tensors` ([A, B]; [lora_B.bias] for `bias`; none for `copy`) applied."""
    saved = getattr(torch, dtype) if dtype else base.dtype
    w = base.to(saved).to(base.dtype)  # a copy from the adapter, loaded in the base's dtype
    if kind == "copy":
        return w
    if kind == "bias":
        return w + tensors[0] * scaling
    a, b = tensors
    delta = b @ a
    if transpose or kind == "embedding":
        delta = delta.T
    delta = delta * scaling
    if kind == "embedding":  # peft's Embedding adds the delta rounded to the weight's dtype
        delta = delta.to(saved).to(w.dtype)
    return w + delta


SPEC = MethodSpec(
    name="lora",
    merge=merge,
    params=(),  # nothing a recipe sets: every number comes from the adapter (layout/lora.py)
    summary="A PEFT LoRA adapter applied to its base model: W + scaling * (B @ A), as peft's merge_and_unload does.",
    paper="https://arxiv.org/abs/2106.09685",
    version=2,  # 2: the layout follows peft on tied heads and per-module fan_in_fan_out (layout/lora.py)
    base="required",
    min_inputs=1,
    max_inputs=1,
    fp32=True,
)
