"""Step layout: which output tensors a step writes, and from which input tensors.

From the inputs' headers and configs alone (no tensor data, no torch) this decides
every output tensor's name, dtype and shape, the input tensors it is merged from, and
the method parameters resolved for it (filters, gradients, defaults). It is where
mismatched architectures, tensor names, shapes and layer ranges are caught, so
`mergepkg validate` finds them before any byte is read. The engine only executes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mergepkg.errors import ModelMismatchError, RecipeError
from mergepkg.locate import locate
from mergepkg.methods import get_method
from mergepkg.methods.spec import MethodSpec, Param
from mergepkg.recipe import Condition, Recipe, Setting, Step
from mergepkg.tensors import CODE_OF, TensorInfo

# `model.layers.N.` (Llama, Mistral, Qwen, Gemma, NeoX), `transformer.h.N.` (GPT-2, Falcon), `blocks.N.`
LAYER = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks)\.)(?P<index>\d+)\.(?P<rest>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
FLOAT_CODES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class ModelInfo:
    """What the engine knows of a model before reading it: config and tensor headers."""

    config: dict
    tensors: dict[str, TensorInfo]
    vocab: Any = field(default=None, compare=False)  # a vocab.Vocab, the folder to read one from, or None

    @property
    def num_layers(self) -> int:
        for key in LAYER_COUNT_KEYS:
            if isinstance(self.config.get(key), int):
                return self.config[key]
        indices = {int(m["index"]) for n in self.tensors if (m := LAYER.match(n))}
        return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class Part:
    model: str  # recipe model name
    tensor: str  # tensor name inside that model


@dataclass(frozen=True)
class OutputTensor:
    name: str
    info: TensorInfo  # dtype (saved) and shape
    base: Part | None
    inputs: tuple[Part, ...]  # non-base, in recipe order
    params: dict[str, Any] = field(default_factory=dict)  # shared: scalar; per input: list
    row_map: Any = None  # align.RowMap: the parts' vocabulary rows, moved onto the output's vocabulary

    @property
    def parts(self) -> tuple[Part, ...]:
        return ((self.base,) if self.base else ()) + self.inputs


@dataclass(frozen=True)
class StepLayout:
    step: Step
    method: MethodSpec
    tensors: tuple[OutputTensor, ...]
    config: dict  # config.json of the output
    config_from: str  # the model whose side files (generation config) are copied
    tokenizer_from: str
    bytes_in: int  # tensor bytes read
    vocab: Any = None  # the output's vocabulary (ModelInfo.vocab); a vocab.Vocab with `made`: written, not copied
    token_ids: dict = field(default_factory=dict)  # special token ids of config_from's configs that move (align.py)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.config, {t.name: t.info for t in self.tensors}, self.vocab)

    @property
    def bytes_out(self) -> int:
        return sum(t.info.nbytes for t in self.tensors)


def evaluate(setting: Setting, tensor: str, t: float) -> Any:
    """A setting's value for one tensor at gradient position t (None: no filter matched)."""
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
        for cond in setting:
            if cond.filter is None or cond.filter in tensor:
                return evaluate(cond.value, tensor, t)
        return None
    if isinstance(setting, tuple):  # gradient: piecewise-linear over t in [0, 1]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    return setting


def _resolve(p: Param, chain: list[dict], tensor: str, t: float, where: str) -> Any:
    for scope in chain:
        if p.name in scope:
            value = evaluate(scope[p.name], tensor, t)
            if value is not None:
                return value
    if p.required:
        raise RecipeError(f"no value of {p.name!r} applies to tensor {tensor}", key=where,
                          hint="add a condition without `filter` as the last entry, or a step-wide value")
    return p.default


class _Builder:
    def __init__(self, recipe: Recipe, step: Step, infos: dict[str, ModelInfo]):
        self.recipe, self.step, self.infos = recipe, step, infos
        self.spec = get_method(step.method)
        origin = step.origin  # steps imported from another recipe report errors in that file
        self.file, self.text = (origin.path, origin.text) if origin else (recipe.path, recipe.text)
        self.key = f"steps.{origin.name if origin else step.name}"

    def error(self, cls, key: str, message: str, hint: str | None = None):
        return cls(message, file=str(self.file), line=locate(self.text, key), key=key, hint=hint)

    def layout(self) -> StepLayout:
        step = self.step
        models = step.models
        ref = step.base or models[0]
        ref_info = self.infos[ref]
        self.check_architectures(models, ref)
        from mergepkg.align import Alignment  # here: align.py builds on this module

        self.alignment = Alignment(self)  # vocabularies: checked, and the output's chosen
        groups = self.whole_model_groups() if step.inputs else self.slice_groups()
        out = tuple(self.output_tensor(*g) for g in groups)
        config = dict(ref_info.config)
        if step.slices:
            count = sum(sl.sources[0].layers[1] - sl.sources[0].layers[0] for sl in step.slices)
            key = next((k for k in LAYER_COUNT_KEYS if k in config), "num_hidden_layers")
            config[key] = count
        self.alignment.update_config(config)
        if step.out_dtype:
            config["dtype"] = step.out_dtype  # transformers >= 4.56 reads `dtype`, older `torch_dtype`
            if "torch_dtype" in config:
                config["torch_dtype"] = step.out_dtype
        bytes_in = sum(self.infos[p.model].tensors[p.tensor].nbytes for t in out for p in t.parts)
        return StepLayout(step, self.spec, out, config, ref, step.tokenizer_model, bytes_in, self.alignment.out_vocab,
                          self.alignment.token_ids)

    def key_of(self, model: str) -> str:
        for i, ref in enumerate(self.step.inputs):
            if ref.model == model:
                return f"{self.key}.inputs[{i}]"
        for i, sl in enumerate(self.step.slices):
            for j, src in enumerate(sl.sources):
                if src.model == model:
                    return f"{self.key}.slices[{i}].sources[{j}]"
        return f"{self.key}.base"

    def check_architectures(self, models: tuple[str, ...], ref: str):
        want = self.infos[ref].config.get("architectures") or self.infos[ref].config.get("model_type")
        for m in models:
            got = self.infos[m].config.get("architectures") or self.infos[m].config.get("model_type")
            if got != want:
                raise self.error(ModelMismatchError, self.key_of(m),
                                 f"architecture of {m!r} ({got}) differs from {ref!r} ({want})",
                                 "merge models of one architecture")

    # Each group: (output name, t, [(role, model, input tensor name, per-input params)], slice params)
    def whole_model_groups(self):
        step = self.step
        ref = step.base or step.inputs[0].model
        n = self.infos[ref].num_layers
        names = set(self.infos[ref].tensors)
        for model in step.models:
            info = self.infos[model]
            if info.num_layers != n:
                raise self.error(ModelMismatchError, self.key_of(model),
                                 f"{model!r} has {info.num_layers} layers but {ref!r} has {n}",
                                 "merge models of one shape, or pick layers with `slices`")
            extra = sorted(set(info.tensors) - names)
            if extra:
                raise self.error(ModelMismatchError, self.key_of(model),
                                 f"{model!r} has tensor {extra[0]} that {ref!r} lacks" + _tied_note(extra[0], model, ref),
                                 "the models must share an architecture and tensor names")
        members = ([("base", step.base, {})] if step.base else []) + [("input", r.model, r.params) for r in step.inputs]
        for name in _ordered(self.infos[ref].tensors):
            m = LAYER.match(name)
            t = (int(m["index"]) / (n - 1) if n > 1 else 1.0) if m else 0.0
            yield name, t, [(role, model, name, params) for role, model, params in members], {}

    def slice_groups(self):
        step = self.step
        out_layer = 0
        for si, sl in enumerate(step.slices):
            for j, src in enumerate(sl.sources):
                have = self.infos[src.model].num_layers
                if src.layers[1] > have:
                    raise self.error(RecipeError, f"{self.key}.slices[{si}].sources[{j}].layers",
                                     f"layers {list(src.layers)} go past the {have} layers of {src.model!r}",
                                     f"use an end of at most {have}")
        first, last = step.slices[0], step.slices[-1]
        ref = first.sources[0].model
        names = _ordered(self.infos[ref].tensors)
        outer = [n for n in names if not LAYER.match(n)]
        pre = [n for n in outer if _is_pre(n)]
        post = [n for n in outer if not _is_pre(n)]
        for name in pre:
            yield name, 0.0, self.members(first, name, lambda s, n=name: n), first.params
        for sl in step.slices:
            count = sl.sources[0].layers[1] - sl.sources[0].layers[0]
            layer0 = sl.sources[0].layers[0]
            ref_model = sl.sources[0].model
            suffixes = sorted({m["rest"] for n in self.infos[ref_model].tensors
                               if (m := LAYER.match(n)) and int(m["index"]) == layer0})
            prefix = next(m["prefix"] for n in self.infos[ref_model].tensors if (m := LAYER.match(n)))
            for off in range(count):
                t = off / (count - 1) if count > 1 else 1.0
                for rest in suffixes:
                    out_name = f"{prefix}{out_layer}.{rest}"
                    yield out_name, t, self.members(sl, out_name, lambda s, o=off, r=rest: f"{prefix}{s.layers[0] + o}.{r}"), sl.params
                out_layer += 1
        for name in post:
            yield name, 0.0, self.members(last, name, lambda s, n=name: n), last.params

    def members(self, sl, out_name, tensor_of):
        base = self.step.base
        return [("base" if s.model == base else "input", s.model, tensor_of(s), s.params) for s in sl.sources]

    def output_tensor(self, name: str, t: float, members: list, slice_params: dict) -> OutputTensor:
        spec, step = self.spec, self.step
        parts, base = [], None
        ref_info, ref_model = None, None
        row_map = self.alignment.row_map([(model, tensor) for _, model, tensor, _ in members])
        rows = 1 if row_map else 0  # a row map aligns the first dimension: only the others must agree
        for role, model, tensor, _ in members:
            info = self.infos[model].tensors.get(tensor)
            if info is None:
                raise self.error(ModelMismatchError, self.key_of(model),
                                 f"{model!r} has no tensor {tensor}" + _tied_note(
                                     tensor, next((m for _, m, t, _ in members if t in self.infos[m].tensors), model), model),
                                 "the models must share an architecture and tensor names")
            if ref_info is None:
                ref_info, ref_model = info, model
            elif info.shape[rows:] != ref_info.shape[rows:]:
                raise self.error(ModelMismatchError, self.key_of(model),
                                 f"tensor {tensor}: {model!r} has shape {list(info.shape)} but {ref_model!r} has {list(ref_info.shape)}",
                                 "merged models need equal tensor shapes")
            part = Part(model, tensor)
            if role == "base":
                base = part
            else:
                parts.append(part)
        shared_chain = [slice_params, step.params]
        non_base = [m for m in members if m[0] == "input"]
        try:
            params = {p.arg: _resolve(p, shared_chain, name, t, f"{self.key}.params") for p in spec.params if not p.per_input}
            for p in spec.params:
                if p.per_input:
                    params[p.arg] = [_resolve(p, [own, slice_params, step.params], tensor, t, self.key_of(model))
                                     for _, model, tensor, own in non_base]
        except RecipeError as e:
            e.file, e.line = str(self.file), locate(self.text, e.key)
            raise
        if step.out_dtype and ref_info.dtype in FLOAT_CODES:
            dtype = CODE_OF[step.out_dtype]
        else:
            dtype = self.infos[base.model].tensors[base.tensor].dtype if base else ref_info.dtype
        shape = (row_map.rows, *ref_info.shape[1:]) if row_map else ref_info.shape
        return OutputTensor(name, TensorInfo(dtype, shape), base, tuple(parts), params, row_map)


def _is_pre(name: str) -> bool:
    return "embed" in name or ".wte." in name or ".wpe." in name


def _ordered(names) -> list[str]:
    """Embeddings, then layers in numeric order, then the rest (norm, head)."""
    def order(name: str):
        m = LAYER.match(name)
        if m:
            return (1, int(m["index"]), m["rest"])
        return (0 if _is_pre(name) else 2, 0, name)

    return sorted(names, key=order)


HEADS = ("lm_head.weight", "embed_out.weight")  # output heads that tied models leave out


def _tied_note(tensor: str, has: str, lacks: str) -> str:
    """Why a head tensor is in one model only: it ties its head to its embeddings."""
    if tensor not in HEADS:
        return ""
    return (f": {lacks!r} ties its output head to its input embeddings (tie_word_embeddings) and {has!r} "
            "does not; merge models that agree on tie_word_embeddings")


def step_layout(recipe: Recipe, step: Step, infos: dict[str, ModelInfo]) -> StepLayout:
    if step.moe is not None:  # experts and routers: its own tensors and config
        from mergepkg.moe.layout import moe_layout

        return moe_layout(recipe, step, infos)
    return _Builder(recipe, step, infos).layout()
