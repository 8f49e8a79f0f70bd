"""The layout of an implicit `base+adapter` step: the base model with a PEFT LoRA
adapter applied, from adapter_config.json and the adapter's tensor headers.

Every tensor of the base is in the output, with its name, dtype and shape. The adapter's
tensors are named as peft saves them, `base_model.model.<module>.<what>`:

- `lora_A.weight` and `lora_B.weight` of a linear module: its `<module>.weight` gets
  W + scaling * (B @ A), transposed for GPT-2's Conv1D. peft decides that per module, by
  its class, whatever `fan_in_fan_out` says (it forces the flag off for a Linear, on for a
  Conv1D); a config does not name classes, so the model types whose layers are Conv1D
  are listed here (`CONV1D`), and a flag set for a model of code of its own is refused;
- `lora_embedding_A` and `lora_embedding_B` of an embedding: `<module>.weight` gets
  W + scaling * (B @ A)^T;
- `lora_B.bias` (`lora_bias`): `<module>.bias` gets b + scaling * lora_B.bias;
- any other tensor (`modules_to_save`, a trained bias, an embedding's saved
  `base_layer.weight`): peft loads it in place of the base's tensor of that name
  (`.base_layer` left out), so the output has it, in the base's dtype.

A base that ties its head to its input embeddings (`tie_word_embeddings`, no
`lm_head.weight` saved) has one matrix for both, and peft's merge is what it does to that
one parameter: a LoRA of either module adds its update to it (the head's is folded into
the embeddings) and the model stays tied; a module of `modules_to_save` gets a parameter
of its own, so the head and the embeddings part, and the output has both, untied
(`tie_word_embeddings` false), as peft's merged model has them; with
`ensure_weight_tying` peft ties the saved copies again, so the output stays tied. Two
LoRA updates of the one matrix (LoRA on both modules, or `ensure_weight_tying` with a LoRA
of the embeddings, whose tied head peft merges a second time) are refused.

`scaling` is lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), r and lora_alpha
taken from `rank_pattern` and `alpha_pattern` where a pattern matches the module, as
peft matches them. The numbers are `methods/lora.py`'s. Refused, at the adapter source:
adapters other than LoRA, the LoRA variants whose merge is not this one (DoRA, aLoRA,
...), LoRA on convolutions, and any tensor this does not account for; a module or
tensor the base lacks, or a shape it does not have, is a mismatch with the base.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mergepkg.errors import MergepkgError, ModelMismatchError, SourceError
from mergepkg.io.folder import ADAPTER_CONFIG, adapter_files
from mergepkg.io.tensors import NAME_OF, TensorInfo, scan_tensors
from mergepkg.layout.align import EMBEDDINGS
from mergepkg.layout.types import LAYER, ModelInfo, OutputTensor, Part, StepLayout, ordered
from mergepkg.methods.lora import SPEC
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import Recipe, Step

PREFIX = "base_model.model."  # peft's names: the PeftModel, then the model it wraps
LORA_TENSOR = re.compile(r"^(?P<module>.+)\.(?P<what>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_[AB])$")
# settings of a LoraConfig that make a merge other than W + scaling * (B @ A): peft's LoRA
# variants and the wrappers beside LoRA (a truthy value refuses the adapter)
REFUSED = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "velora_config": "VeLoRA (velora_config)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "megatron_config": "Megatron layers (megatron_config)",
}
UNSUPPORTED_HINT = "merge it with peft (merge_and_unload), save the model and use that folder as a source"
HEAD = "lm_head"  # the output head peft adapts, tied to the input embeddings on a tied base
# transformers' models whose projections are GPT-2's Conv1D (a weight stored [in, out], which
# peft's LoRA updates transposed), by model_type: the names of those modules
CONV1D = {
    "gpt2": ("c_attn", "q_attn", "c_proj", "c_fc"),
    "decision_transformer": ("c_attn", "q_attn", "c_proj", "c_fc"),
    "imagegpt": ("c_attn", "q_attn", "c_proj", "c_fc"),
    "openai-gpt": ("c_attn", "c_proj", "c_fc"),
    "clvp": ("c_fc", "c_proj"),
    "clvp_decoder": ("c_fc", "c_proj"),
}


def read_adapter_info(folder: Path) -> ModelInfo:
    """A PEFT adapter folder: adapter_config.json as the config, its tensors' headers."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        adapter_files(folder)  # says what the folder is instead
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise SourceError(f"cannot read {ADAPTER_CONFIG}: {e}", file=folder) from None
    if not isinstance(config, dict):
        raise SourceError(f"{ADAPTER_CONFIG} is not a JSON object", file=folder)
    weights = [f for f in adapter_files(folder) if f != ADAPTER_CONFIG]
    return ModelInfo(config, scan_tensors(folder, weights), None)


@dataclass
class _Module:
    """The LoRA tensors of one module of the base."""

    a: str | None = None
    b: str | None = None
    bias: str | None = None
    embedding: bool = False


@dataclass(frozen=True)
class _Copy:
    """A tensor the adapter saves whole, in place of the base's."""

    tensor: str  # its name in the adapter
    # a LoRA module's saved `base_layer`, which peft loads into the base's own parameter (on a
    # tied base, the one the head and the embeddings share); else a module of `modules_to_save`,
    # a parameter of its own
    layer: bool


@dataclass
class _Plan:
    """What the output holds, by output tensor: the adapter's copy it starts from, the LoRA
    update it gets, and the base tensor it is read from where that is another (the head of a
    tied base the adapter unties reads the embeddings)."""

    copies: dict[str, str] = field(default_factory=dict)  # output tensor -> adapter tensor
    updates: dict[str, tuple[str, _Module]] = field(default_factory=dict)  # output tensor -> (module, LoRA tensors)
    reads: dict[str, str] = field(default_factory=dict)  # output tensor the base lacks -> base tensor


def adapter_layout(recipe: Recipe, step: Step, infos: dict[str, ModelInfo]) -> StepLayout:
    """What `step` (an implicit `base+adapter` step) writes: its base with the adapter applied."""
    assert step.base is not None and step.adapter is not None
    base, adapter = infos[step.base], infos[step.adapter]
    try:
        tensors = _Applied(step, base, adapter).tensors()
    except MergepkgError as e:
        raise recipe.locate(e, f"sources.{key_name(step.adapter)}") from None
    bytes_in = sum(infos[p.model].tensors[p.tensor].nbytes for t in tensors for p in t.parts)
    config = dict(base.config)
    # a head the base does not save is one the adapter split off its embeddings: untied, as
    # peft's merge_and_unload sets it when the two are no longer one parameter
    if any(t.name not in base.tensors for t in tensors):
        config["tie_word_embeddings"] = False
    return StepLayout(step, SPEC, tensors, config, step.base, step.base, bytes_in, base.vocab)


class _Applied:
    def __init__(self, step: Step, base: ModelInfo, adapter: ModelInfo):
        assert step.base is not None and step.adapter is not None
        self.base_name, self.adapter_name = step.base, step.adapter
        self.base, self.adapter = base, adapter
        self.config = adapter.config
        self.what = f"adapter {self.adapter_name!r}"

    def tensors(self) -> tuple[OutputTensor, ...]:
        self.check_config()
        modules, copies = self.read_names()
        plan = self.tied(modules, copies)  # takes the tied pair's entries out of `modules` and `copies`
        for module, m in modules.items():
            if m.a is not None or m.b is not None:
                pair = replace(m, bias=None)
                plan.updates[self.base_tensor(f"{module}.weight", f"{module}.lora_A/B")] = (module, pair)
            if m.bias is not None:
                plan.updates[self.base_tensor(f"{module}.bias", m.bias)] = (module, _Module(bias=m.bias))
        for target, copy in copies.items():
            plan.copies[self.base_tensor(target, copy.tensor)] = copy.tensor
        out = []
        for name in ordered([*self.base.tensors, *plan.reads]):
            read = plan.reads.get(name, name)
            info = self.base.tensors[read]
            source = plan.copies.get(name)
            w = Part(self.adapter_name, source) if source else Part(self.base_name, read)
            if source is not None:
                self.check_shape(source, info.shape, name)
            params: dict[str, Any] = {"kind": "copy", "dtype": NAME_OF.get(info.dtype)}
            inputs: tuple[Part, ...] = ()
            if name in plan.updates:
                module, m = plan.updates[name]
                params.update(self.lora_params(module, m, name, info))
                inputs = (
                    (Part(self.adapter_name, m.bias),)
                    if m.bias
                    else (Part(self.adapter_name, m.a or ""), Part(self.adapter_name, m.b or ""))
                )
            out.append(OutputTensor(name, TensorInfo(info.dtype, info.shape), w, inputs, params))
        return tuple(out)

    def tied(self, modules: dict[str, _Module], copies: dict[str, _Copy]) -> _Plan:
        """The head's and the embeddings' part of the output on a base that ties them, as
        peft's merge leaves them: one parameter at first, which a LoRA of either module
        updates and a `modules_to_save` copy of either leaves (the two part: the output
        has both, untied), unless `ensure_weight_tying` ties the copies again. An empty
        plan where the base is not tied or the adapter leaves the tie as it is."""
        plan = _Plan()
        embed = self.tied_embeddings()
        head = f"{HEAD}.weight"
        if embed is None:
            return plan
        pair = {embed: embed.removesuffix(".weight"), head: HEAD}  # tensor -> its module
        lora = {t: (mod, modules[mod]) for t, mod in pair.items() if mod in modules and modules[mod].a is not None}
        own = {t: copies[t].tensor for t in pair if t in copies and not copies[t].layer}
        if head not in lora and head not in copies and not own:
            return plan  # a LoRA of the embeddings: merged into the shared matrix, which it is here too
        ewt = self.config.get("ensure_weight_tying") is True
        base = self.base_name
        if len(lora) == 2:
            twice = " (ensure_weight_tying: the head's is the embeddings' own, merged a second time)" if ewt else ""
            raise SourceError(
                f"{self.what} has a LoRA update of {pair[embed]} and one of {HEAD}, which {base!r} ties together "
                f"(tie_word_embeddings): they are one matrix, and peft's merge adds both updates to it{twice}; "
                "mergepkg cannot apply that",
                hint=UNSUPPORTED_HINT,
            )
        if set(lora) & set(own) or (lora and own and ewt):
            raise SourceError(
                f"{self.what} has both a LoRA update and a saved copy (modules_to_save) of the head and "
                f"embeddings {base!r} ties together (tie_word_embeddings), which mergepkg cannot apply",
                hint=UNSUPPORTED_HINT,
            )
        # a saved base_layer is loaded into the shared matrix, the head's last
        layer = next((copies[t].tensor for t in (head, embed) if t in copies and copies[t].layer), None)
        for t, mod in pair.items():
            copies.pop(t, None)
            if mod in modules:
                modules[mod] = _Module(bias=modules[mod].bias)  # its update is the plan's
        if own and ewt:  # peft ties the head's copy to the embeddings': one parameter, the head's loaded last
            plan.copies[embed] = own.get(head) or own[embed]
            return plan
        shared = next((t for t in (embed, head) if t not in own), None)  # the output tensor that is the base's matrix
        if shared is not None:
            if layer is not None:
                plan.copies[shared] = layer
            for module, m in lora.values():
                plan.updates[shared] = (module, replace(m, bias=None))
        plan.copies.update(own)
        if own:
            plan.reads[head] = embed
        return plan

    def tied_embeddings(self) -> str | None:
        """The input embeddings the base's head is tied to, if it ties them: a causal language
        model whose config.json says `tie_word_embeddings` (transformers writes it; where it
        is missing, the default is the model class's, which a config does not tell) and that
        saves no `lm_head.weight`."""
        tensors, config = self.base.tensors, self.base.config
        architectures = config.get("architectures") or []
        if (
            f"{HEAD}.weight" in tensors
            or config.get("tie_word_embeddings") is not True
            or not any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        ):
            return None
        return next(
            (
                n
                for n in ordered(tensors)
                if n.endswith(".weight")
                and len(tensors[n].shape) == 2
                and not LAYER.match(n)
                and any(e in n for e in EMBEDDINGS)
            ),
            None,
        )

    def check_config(self) -> None:
        config = self.config
        kind = config.get("peft_type", "LORA")
        if kind != "LORA":
            raise SourceError(
                f"{self.what} is not a LoRA adapter (peft_type {kind}); only LoRA adapters can be applied",
                hint=UNSUPPORTED_HINT,
            )
        for key, what in REFUSED.items():
            if config.get(key):
                raise SourceError(f"{self.what} uses {what}, which mergepkg cannot apply", hint=UNSUPPORTED_HINT)
        if config.get("init_lora_weights") == "mica":
            raise SourceError(f"{self.what} is a MiCA adapter, which mergepkg cannot apply", hint=UNSUPPORTED_HINT)
        for key in ("r", "lora_alpha"):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SourceError(f"{ADAPTER_CONFIG} of {self.what}: {key} is {value!r}, not a positive number")
        for key in ("rank_pattern", "alpha_pattern"):
            if not isinstance(config.get(key) or {}, dict):
                raise SourceError(f"{ADAPTER_CONFIG} of {self.what}: {key} is not a table of patterns")

    def read_names(self) -> tuple[dict[str, _Module], dict[str, _Copy]]:
        """(module -> its LoRA tensors, base tensor -> the adapter tensor that replaces it)."""
        modules: dict[str, _Module] = {}
        copies: dict[str, _Copy] = {}
        for key, info in self.adapter.tensors.items():
            if not key.startswith(PREFIX):
                raise SourceError(
                    f"{self.what} has tensor {key}, not named as peft names a LoRA adapter's ({PREFIX}...)",
                    hint="only adapters saved by peft (save_pretrained) can be applied",
                )
            if "lora_magnitude_vector" in key:
                raise SourceError(f"{self.what} uses DoRA ({key}), which mergepkg cannot apply", hint=UNSUPPORTED_HINT)
            if len(info.shape) > 2 and ".lora_" in key:
                raise SourceError(
                    f"{self.what} applies LoRA to a convolution ({key}), which mergepkg cannot apply",
                    hint=UNSUPPORTED_HINT,
                )
            name = key[len(PREFIX) :]
            m = LORA_TENSOR.match(name)
            if m is None:
                if ".lora_" in name or "trainable_tokens" in name:
                    raise SourceError(
                        f"{self.what} has tensor {key}, which mergepkg cannot apply", hint=UNSUPPORTED_HINT
                    )
                target = name.replace(".base_layer.", ".")
                if target in copies:
                    raise SourceError(f"{self.what} has two tensors for {target}: {copies[target].tensor} and {key}")
                copies[target] = _Copy(key, target != name)
                continue
            module = modules.setdefault(m["module"], _Module())
            what = m["what"]  # lora_A.weight, lora_B.weight, lora_B.bias, lora_embedding_A or lora_embedding_B
            if what == "lora_B.bias":
                module.bias = key
            elif what.split(".")[0].endswith("A"):
                module.a, module.embedding = key, what.startswith("lora_embedding")
            else:
                module.b, module.embedding = key, what.startswith("lora_embedding")
        for name, module in modules.items():
            if (module.a is None) != (module.b is None):
                missing = "lora_A" if module.a is None else "lora_B"
                raise SourceError(f"{self.what} has no {missing} for {name}", hint="download or save the adapter again")
        return modules, copies

    def base_tensor(self, name: str, adapter_tensor: str) -> str:
        if (
            name not in self.base.tensors
            and name == f"{HEAD}.weight"
            and self.base.config.get("tie_word_embeddings") is not False
        ):
            raise SourceError(
                f"{self.what} changes {name} ({adapter_tensor}), which {self.base_name!r} does not save: "
                "a head tied to the embeddings, which mergepkg follows only for a causal language model "
                "whose config.json says tie_word_embeddings: true",
                hint=UNSUPPORTED_HINT,
            )
        if name not in self.base.tensors:
            raise ModelMismatchError(
                f"{self.what} changes {name} ({adapter_tensor}), a tensor {self.base_name!r} does not have",
                hint=f"apply an adapter to the model it was trained on{self.trained_on()}",
            )
        return name

    def trained_on(self) -> str:
        base = self.config.get("base_model_name_or_path")
        return f" ({base})" if isinstance(base, str) and base else ""

    def check_shape(self, tensor: str, want: tuple[int, ...], name: str) -> None:
        got = self.adapter.tensors[tensor].shape
        if got != want:
            raise ModelMismatchError(
                f"{self.what}: {tensor} has shape {list(got)} but {name} of {self.base_name!r} has {list(want)}",
                hint=f"apply an adapter to the model it was trained on{self.trained_on()}",
            )

    def lora_params(self, module: str, m: _Module, name: str, info: TensorInfo) -> dict[str, Any]:
        """The kind and numbers of tensor `name` of LoRA module `module`, its shapes checked."""
        r = _pattern(self.config.get("rank_pattern") or {}, module, self.config["r"], self.what)
        alpha = _pattern(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"], self.what)
        scaling = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        if m.bias is not None:
            self.check_shape(m.bias, info.shape, name)
            return {"kind": "bias", "scaling": scaling}
        assert m.a is not None and m.b is not None
        a, b = self.adapter.tensors[m.a].shape, self.adapter.tensors[m.b].shape
        transpose = not m.embedding and self.conv1d(module)
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise SourceError(f"{self.what}: {m.a} {list(a)} and {m.b} {list(b)} are not a LoRA pair (B @ A)")
        if a[0] != r:
            raise SourceError(f"{self.what}: {m.a} has rank {a[0]} but {ADAPTER_CONFIG} says r = {r} for {module}")
        product = (b[0], a[1])
        want = product[::-1] if transpose or m.embedding else product
        if tuple(info.shape) != want:
            raise ModelMismatchError(
                f"{self.what}: the update of {name} has shape {list(want)} "
                f"but {self.base_name!r} has {list(info.shape)}",
                hint=f"apply an adapter to the model it was trained on{self.trained_on()}",
            )
        return {"kind": "embedding" if m.embedding else "linear", "scaling": scaling, "transpose": transpose}

    def conv1d(self, module: str) -> bool:
        """Whether `module` is GPT-2's Conv1D, whose update peft transposes: peft decides by the
        module's class whatever `fan_in_fan_out` says (it forces the flag off for a Linear, on
        for a Conv1D), so the base's model type decides here. A model of code of its own
        (`auto_map`) may have Conv1D layers of any name: a flag set for one is refused."""
        config = self.base.config
        names = CONV1D.get(str(config.get("model_type")))
        if names is not None:
            return module.rsplit(".", 1)[-1] in names
        if self.config.get("fan_in_fan_out") and config.get("auto_map"):
            raise SourceError(
                f"{self.what} sets fan_in_fan_out for {module}, and {self.base_name!r} runs code of its own "
                "(auto_map): mergepkg cannot tell whether that module is a Conv1D, which peft's update transposes, "
                "or a Linear, which it does not",
                hint=UNSUPPORTED_HINT,
            )
        return False


def _pattern(patterns: dict, module: str, default: Any, what: str) -> Any:
    """peft's `get_pattern_key`: the value of the first pattern matching the end of the
    module's name at a `.`, else `default`."""
    for key, value in patterns.items():
        try:
            matched = re.match(rf"(.*\.)?({key})$", module)
        except re.error as e:
            raise SourceError(f"{ADAPTER_CONFIG} of {what}: pattern {key!r} is not a regular expression: {e}") from None
        if matched:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SourceError(f"{ADAPTER_CONFIG} of {what}: {value!r} for {key!r} is not a positive number")
            return value
    return default
