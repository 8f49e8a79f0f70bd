"""The layout of an `moe` step: which tensors the mixture has and its config.json,
from the inputs' configs and headers alone, like every other step's layout.

Output families (as mergekit-moe, whose default is Mixtral wherever it applies):

- llama / mistral inputs -> `MixtralForCausalLM`: per layer, expert e's
  `block_sparse_moe.experts.e.w1|w2|w3.weight` = that expert's `mlp.gate_proj|down_proj|up_proj.weight`,
  and the router `block_sparse_moe.gate.weight` (experts x hidden);
- qwen2 inputs -> `Qwen2MoeForCausalLM`: `mlp.experts.e.gate_proj|up_proj|down_proj.weight`,
  the router `mlp.gate.weight`, the always-on `mlp.shared_expert.*` (from `shared_expert`)
  and its gate `mlp.shared_expert_gate.weight` (1 x hidden).

Every other tensor is the base's. Names are those transformers' own `save_pretrained`
writes (transformers 5 fuses experts in memory and converts on load, in both directions).
Invariant (tests): transformers loads the output with no missing or unexpected key.
"""

from __future__ import annotations

import importlib.util

from mergepkg.errors import ModelMismatchError, RecipeError
from mergepkg.io.tensors import TensorInfo
from mergepkg.layout.configs import with_saved_dtype
from mergepkg.layout.types import (
    LAYER,
    ModelInfo,
    OutputTensor,
    Part,
    StepLayout,
    ordered,
    saved_dtype,
)
from mergepkg.methods import get_method
from mergepkg.recipe.model import MoE, Recipe, Step

FAMILY = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe"}
PROJ = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_NAME = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
SHARED_GATE = "shared_expert_gate.weight"  # Qwen2-MoE: the shared expert's (1 x hidden) gate


class MoeLayout:
    """The layout of an `moe` step: the base's tensors, each expert's MLP, the routers."""

    def __init__(self, recipe: Recipe, step: Step, infos: dict[str, ModelInfo]):
        assert step.moe is not None and step.base is not None
        self.step, self.infos = step, infos
        self.moe: MoE = step.moe
        self.base: str = step.base
        where = recipe.written(step.name)  # an imported step reports errors in its own file
        self.key, self.error = where.key, where.error

    def members(self) -> list[tuple[str, str]]:
        """(key path, model) of every expert, then the shared expert."""
        out = [(f"{self.key}.experts[{i}].model", e.model) for i, e in enumerate(self.moe.experts)]
        if self.moe.shared_expert:
            out.append((f"{self.key}.shared_expert.model", self.moe.shared_expert.model))
        return out

    def layout(self) -> StepLayout:
        step, moe = self.step, self.moe
        base = self.infos[self.base]
        family = self.family(base)
        self.check_members(base)
        prefix = next((m["prefix"] for n in base.tensors if (m := LAYER.match(n))), "model.layers.")
        layers = base.num_layers
        outputs: list[OutputTensor] = []
        for name in base.tensors:
            m = LAYER.match(name)
            if not (m and m["rest"].startswith("mlp.")):
                outputs.append(self.copy(name, self.base, name, base.tensors[name]))
        for i in range(layers):
            mlp = f"{prefix}{i}.mlp."
            like = base.tensors[mlp + "gate_proj.weight"]  # routers take the dtype of the base's MLP
            hidden = like.shape[1]
            for e, expert in enumerate(moe.experts):
                for proj in PROJ:
                    out = (
                        f"{prefix}{i}.block_sparse_moe.experts.{e}.{MIXTRAL_NAME[proj]}.weight"
                        if family == "mixtral"
                        else f"{mlp}experts.{e}.{proj}.weight"
                    )
                    outputs.append(
                        self.copy(out, expert.model, f"{mlp}{proj}.weight", base.tensors[f"{mlp}{proj}.weight"])
                    )
            router = f"{prefix}{i}.block_sparse_moe.gate.weight" if family == "mixtral" else f"{mlp}gate.weight"
            outputs.append(self.computed(router, (len(moe.experts), hidden), like))
            if family == "qwen2_moe":
                shared = moe.shared_expert
                assert shared is not None  # family() refuses qwen2 inputs without one
                for proj in PROJ:
                    outputs.append(
                        self.copy(
                            f"{mlp}shared_expert.{proj}.weight",
                            shared.model,
                            f"{mlp}{proj}.weight",
                            base.tensors[f"{mlp}{proj}.weight"],
                        )
                    )
                outputs.append(self.computed(mlp + SHARED_GATE, (1, hidden), like))
        order = {n: k for k, n in enumerate(ordered(t.name for t in outputs))}
        outputs.sort(key=lambda t: order[t.name])
        config = self.config(base, family, base.tensors[f"{prefix}0.mlp.gate_proj.weight"].shape[0])
        bytes_in = sum(self.infos[p.model].tensors[p.tensor].nbytes for t in outputs for p in t.parts)
        # the output has the base's tokenizer files, so the base's vocabulary (steps after it align against it)
        return StepLayout(
            step,
            get_method("moe"),
            tuple(outputs),
            config,
            self.base,
            step.tokenizer_model,
            bytes_in,
            self.infos[self.base].vocab,
        )

    def family(self, base: ModelInfo) -> str:
        model_type = base.config.get("model_type")
        family = FAMILY.get(model_type) if isinstance(model_type, str) else None
        if family is None:
            raise self.error(
                ModelMismatchError,
                f"{self.key}.base",
                f"method 'moe' makes Mixtral models from llama or mistral models and Qwen2-MoE models "
                f"from qwen2 models; {self.step.base!r} is {model_type!r}",
                "use a base and experts of one of those families",
            )
        if family == "mixtral":
            if self.moe.shared_expert:
                raise self.error(
                    RecipeError,
                    f"{self.key}.shared_expert",
                    f"a Mixtral model (from {model_type!r} inputs) has no shared expert",
                    "remove shared_expert: it is for Qwen2 inputs",
                )
            for flag in ("attention_bias", "mlp_bias"):
                if base.config.get(flag):
                    raise self.error(
                        ModelMismatchError,
                        f"{self.key}.base",
                        f"{self.step.base!r} has {flag} = true, and Mixtral layers have no biases",
                        "use models without attention or MLP biases",
                    )
        else:
            if importlib.util.find_spec("transformers.models.qwen2_moe") is None:
                raise self.error(
                    ModelMismatchError,
                    f"{self.key}.base",
                    "qwen2 inputs make a Qwen2-MoE model, and the installed transformers has no Qwen2-MoE",
                    "install a transformers release with Qwen2MoeForCausalLM (4.40 or later)",
                )
            if self.moe.shared_expert is None:
                raise self.error(
                    RecipeError,
                    self.key,
                    "a Qwen2-MoE model (from qwen2 inputs) needs a shared expert",
                    'add shared_expert = { model = "<name>", prompts = ["..."] }: the MLP every token uses',
                )
        return family

    def check_members(self, base: ModelInfo) -> None:
        step = self.step
        want = base.config.get("architectures") or base.config.get("model_type")
        prefix = next((m["prefix"] for n in base.tensors if (m := LAYER.match(n))), "model.layers.")
        for i in range(base.num_layers):
            for proj in PROJ:
                name = f"{prefix}{i}.mlp.{proj}.weight"
                if name not in base.tensors:
                    raise self.error(
                        ModelMismatchError,
                        f"{self.key}.base",
                        f"{step.base!r} has no tensor {name}",
                        "an moe step needs gate_proj, up_proj and down_proj in every layer's MLP",
                    )
        extra = sorted(
            n
            for n in base.tensors
            if (m := LAYER.match(n))
            and m["rest"].startswith("mlp.")
            and m["rest"].removeprefix("mlp.").removesuffix(".weight") not in PROJ
        )
        if extra:
            raise self.error(
                ModelMismatchError,
                f"{self.key}.base",
                f"{step.base!r} has MLP tensor {extra[0]}, which an MoE expert has no place for",
                "use models whose MLP is gate_proj, up_proj and down_proj without biases",
            )
        for key, model in self.members():
            info = self.infos[model]
            got = info.config.get("architectures") or info.config.get("model_type")
            if got != want:
                raise self.error(
                    ModelMismatchError,
                    key,
                    f"architecture of {model!r} ({got}) differs from the base {step.base!r} ({want})",
                    "experts must share the base's architecture",
                )
            if info.num_layers != base.num_layers:
                raise self.error(
                    ModelMismatchError,
                    key,
                    f"{model!r} has {info.num_layers} layers but the base {step.base!r} has {base.num_layers}",
                    "experts must have the base's layers",
                )
            for i in range(base.num_layers):
                for proj in PROJ:
                    name = f"{prefix}{i}.mlp.{proj}.weight"
                    have = info.tensors.get(name)
                    if have is None:
                        raise self.error(
                            ModelMismatchError,
                            key,
                            f"{model!r} has no tensor {name}",
                            "experts must share the base's architecture and tensor names",
                        )
                    if have.shape != base.tensors[name].shape:
                        raise self.error(
                            ModelMismatchError,
                            key,
                            f"tensor {name}: {model!r} has shape {list(have.shape)} but the base "
                            f"{step.base!r} has {list(base.tensors[name].shape)}",
                            "experts need the base's MLP shapes",
                        )

    def copy(self, out: str, model: str, tensor: str, like: TensorInfo) -> OutputTensor:
        """`out` is `model`'s `tensor`, saved in the dtype of the base's tensor `like`."""
        shape = self.infos[model].tensors[tensor].shape
        return OutputTensor(
            out, TensorInfo(saved_dtype(self.step.out_dtype, like.dtype), shape), None, (Part(model, tensor),)
        )

    def computed(self, out: str, shape: tuple[int, ...], like: TensorInfo) -> OutputTensor:
        return OutputTensor(out, TensorInfo(saved_dtype(self.step.out_dtype, like.dtype), shape), None, ())

    def config(self, base: ModelInfo, family: str, intermediate: int) -> dict:
        config, moe = dict(base.config), self.moe
        if family == "mixtral":  # as mergekit-moe's Mixtral output
            for key in ("attention_bias", "mlp_bias", "pretraining_tp"):  # Llama-only, checked off above
                config.pop(key, None)
            config.update(
                architectures=["MixtralForCausalLM"],
                model_type="mixtral",
                num_local_experts=len(moe.experts),
                num_experts_per_tok=moe.experts_per_token,
                sliding_window=None,
            )
        else:  # as mergekit-moe's Qwen MoE output
            config.update(
                architectures=["Qwen2MoeForCausalLM"],
                model_type="qwen2_moe",
                num_experts=len(moe.experts),
                num_experts_per_tok=moe.experts_per_token,
                decoder_sparse_step=1,
                mlp_only_layers=[],
                norm_topk_prob=True,
                moe_intermediate_size=intermediate,
                shared_expert_intermediate_size=intermediate,
                qkv_bias=True,
                use_sliding_window=False,
                sliding_window=None,
                layer_types=["full_attention"] * base.num_layers,
            )
        return with_saved_dtype(config, self.step.out_dtype)
