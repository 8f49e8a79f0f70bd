"""MoE: a mixture of experts composed from dense models, as mergekit-moe does.

Attention, norms, embeddings and head are copied from the base; each expert's MLP
(gate_proj, up_proj, down_proj) becomes one expert of every layer; each layer's router
gets one row per expert, computed from the expert's prompts (`gate_mode`, see
`mergepkg/engine/routers.py` and docs/moe.md). Llama/Mistral inputs give a Mixtral model,
Qwen2 inputs a Qwen2-MoE model (which also has a shared expert).

Mixtral: Jiang et al., "Mixtral of Experts", https://arxiv.org/abs/2401.04088;
composition from dense models: mergekit-moe, https://github.com/arcee-ai/mergekit/blob/main/docs/moe.md
Invariants (tests): every copied tensor equals its source tensor byte for byte (same
dtype); each router row has unit L2 norm in the prompt-based gate modes.

The layout (which tensors exist, the config) is `mergepkg/layout/moe.py`; the step's
recipe part is `mergepkg/recipe/moe.py`, its key's part `mergepkg/resolve/keys.py`.
Per tensor, the method only copies: a copied tensor's one part, or a router the
engine computed before streaming (the layout's tensors without parts).
"""

from __future__ import annotations

from collections.abc import Sequence

from mergepkg._lazy import torch
from mergepkg.methods.spec import MethodSpec, Param

GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random")
PROMPTED = ("hidden", "cheap_embed")  # gate modes that read the prompts


def copy(base, tensors: Sequence[torch.Tensor], **settings) -> torch.Tensor:
    """One tensor, as it is. `settings` (experts_per_token, gate_mode) shape the layout
    and the routers, not any copied tensor."""
    (x,) = tensors
    return x


def stream_copy(base, tensors: Sequence[torch.Tensor], *, compute, out_dtype, out=None, **settings) -> torch.Tensor:
    """The stored bytes, never through the compute dtype: a bfloat16 `dtype` (set for the
    gate forward pass) must not round the copied weights. A copy, since the engine
    reuses input buffers once a streaming method returns."""
    (x,) = tensors
    return x.to(dtype=out_dtype, copy=True) if out is None else out.copy_(x)


SPEC = MethodSpec(
    name="moe",
    version=2,  # 2: cheap_embed rows summed in mergekit-moe's order (their last bits changed)
    merge=copy,
    params=(
        Param("experts_per_token", 2, kind=int, low=1, doc="experts each token is routed to"),
        Param(
            "gate_mode",
            "hidden",
            kind=str,
            choices=GATE_MODES,
            doc="how router rows are made: hidden states, token embeddings of the prompts, or seeded noise "
            "(normal, or uniform as torch.nn.Linear initialises)",
        ),
    ),
    summary="Mixture of experts: the base's attention, each expert's MLP, routers from prompts.",
    paper="https://arxiv.org/abs/2401.04088",
    base="required",
    min_inputs=1,
    stream=stream_copy,
    copies=True,  # `dtype` is the gate forward pass's
)
