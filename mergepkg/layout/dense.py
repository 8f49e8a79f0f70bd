"""The layout of an ordinary step: whole models merged tensor by tensor, or layer
ranges (slices) stacked and merged.

From the inputs' headers and configs alone (no tensor data, no torch) this decides
every output tensor's name, dtype and shape, the input tensors it is merged from, and
the method parameters resolved for it (filters, gradients, defaults). It is where
mismatched hidden sizes, tensor names, shapes and layer ranges are caught, so
`mergepkg validate` finds them before any byte is read. The engine only executes it.
Models of different architectures whose tensors match are merged (`pitfalls/` warns,
MP202); when their tensors do not match, the error says the architectures differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from mergepkg.errors import ModelMismatchError, RecipeError
from mergepkg.io.tensors import TensorInfo, promote_codes
from mergepkg.layout.align import Alignment
from mergepkg.layout.configs import shared_dtype, with_head_tying, with_saved_dtype, with_stacked_layers
from mergepkg.layout.types import (
    FLOAT_CODES,
    HEADS,
    LAYER,
    ModelInfo,
    OutputTensor,
    Part,
    StepLayout,
    architecture,
    hidden_size,
    is_pre,
    ordered,
    saved_dtype,
)
from mergepkg.layout.values import param_value
from mergepkg.methods import get_method
from mergepkg.recipe.model import Params, Recipe, Slice, SliceSource, Step
from mergepkg.recipe.tables import AUTO


class Member(NamedTuple):
    """One model's tensor in an output tensor's merge."""

    role: str  # "base" or "input"
    model: str
    tensor: str  # its name in that model
    params: Params  # the model's own parameters (an input's, a slice source's)


# An output tensor before it is checked: (name, gradient position t, members, its slice's parameters)
Group = tuple[str, float, list[Member], Params]


class DenseLayout:
    """The layout of a step over whole models (`inputs`) or layer ranges (`slices`)."""

    def __init__(self, recipe: Recipe, step: Step, infos: dict[str, ModelInfo]):
        self.step, self.infos = step, infos
        self.spec = get_method(step.method)
        self.where = recipe.written(step.name)  # an imported step reports errors in its own file
        self.key = self.where.key
        self.error = self.where.error

    def layout(self) -> StepLayout:
        step = self.step
        models = step.models
        ref = step.base or models[0]
        ref_info = self.infos[ref]
        self.check_hidden_sizes(models, ref)  # before vocabularies: a width, not a tokenizer, differs
        # vocabularies: checked, and the output's chosen
        self.alignment = Alignment(step, self.infos, self.where, self.key_of)
        groups = self.whole_model_groups() if step.inputs else self.slice_groups()
        try:
            out = tuple(self.output_tensor(*g) for g in groups)
        except ModelMismatchError as e:
            raise self.architectures_noted(e, models, ref) from None
        config = dict(ref_info.config)
        if step.slices:  # each output layer is its slice's first source's
            layers = [(sl.sources[0].model, i) for sl in step.slices for i in range(*sl.sources[0].layers)]
            with_stacked_layers(config, layers, self.infos)
            with_head_tying(config, self.infos[step.slices[-1].sources[0].model].config)
        self.alignment.update_config(config)
        saved = step.out_dtype
        if saved is None and step.dtype == AUTO:  # saved as computed: the inputs' dtypes promoted
            saved = shared_dtype(t.info for t in out)
        with_saved_dtype(config, saved)
        bytes_in = sum(self.infos[p.model].tensors[p.tensor].nbytes for t in out for p in t.parts)
        return StepLayout(
            step,
            self.spec,
            out,
            config,
            ref,
            step.tokenizer_model,
            bytes_in,
            self.alignment.out_vocab,
            self.alignment.token_ids,
        )

    def key_of(self, model: str) -> str:
        for i, ref in enumerate(self.step.inputs):
            if ref.model == model:
                return f"{self.key}.inputs[{i}]"
        for i, sl in enumerate(self.step.slices):
            for j, src in enumerate(sl.sources):
                if src.model == model:
                    return f"{self.key}.slices[{i}].sources[{j}]"
        return f"{self.key}.base"

    def check_hidden_sizes(self, models: tuple[str, ...], ref: str) -> None:
        """Models of different widths cannot merge: said as that, before any tensor or
        vocabulary is compared (config.json's hidden size, where both name one)."""
        want = hidden_size(self.infos[ref].config)
        for m in models:
            got = hidden_size(self.infos[m].config)
            if want is not None and got is not None and got != want:
                raise self.error(
                    ModelMismatchError,
                    self.key_of(m),
                    f"{m!r} has hidden size {got} but {ref!r} has {want}: models of different sizes cannot merge",
                    "merge models of one size: fine-tunes of one base model",
                )

    def architectures_noted(self, e: ModelMismatchError, models: tuple[str, ...], ref: str) -> ModelMismatchError:
        """A tensor mismatch, with the reason when the models' architectures differ."""
        want = architecture(self.infos[ref].config)
        other = next((m for m in models if architecture(self.infos[m].config) != want), None)
        if other is not None:
            got = architecture(self.infos[other].config)
            e.message += f" ({other!r} is {got}, {ref!r} {want})"
            e.hint = "merge models of one architecture"
        return e

    def whole_model_groups(self) -> Iterator[Group]:
        step = self.step
        ref = step.base or step.inputs[0].model
        n = self.infos[ref].num_layers
        dropped = self.redundant_heads()
        names = set(self.infos[ref].tensors) - dropped
        for model in step.models:
            info = self.infos[model]
            if info.num_layers != n:
                raise self.error(
                    ModelMismatchError,
                    self.key_of(model),
                    f"{model!r} has {info.num_layers} layers but {ref!r} has {n}",
                    "merge models of one shape, or pick layers with `slices`",
                )
            extra = sorted(set(info.tensors) - names - dropped)
            if extra:
                raise self.error(
                    ModelMismatchError,
                    self.key_of(model),
                    f"{model!r} has tensor {extra[0]} that {ref!r} lacks" + tied_note(extra[0], model, ref),
                    "the models must share an architecture and tensor names",
                )
        members: list[tuple[str, str, Params]] = [("base", step.base, {})] if step.base else []
        members += [("input", r.model, r.params) for r in step.inputs]
        for name in ordered(names):
            m = LAYER.match(name)
            t = (int(m["index"]) / (n - 1) if n > 1 else 1.0) if m else 0.0
            yield name, t, [Member(role, model, name, params) for role, model, params in members], {}

    def redundant_heads(self) -> set[str]:
        """Output heads that some of the models store and the others leave out, where every
        model that stores one declares `tie_word_embeddings`: a copy of its embeddings, which
        transformers ties over on load (some trainers save it). The output leaves them out,
        as the other models do."""
        models = self.step.models
        heads = set()
        for head in HEADS:
            having = [m for m in models if head in self.infos[m].tensors]
            if 0 < len(having) < len(models) and all(
                self.infos[m].config.get("tie_word_embeddings") is True for m in having
            ):
                heads.add(head)
        return heads

    def slice_groups(self) -> Iterator[Group]:
        step = self.step
        out_layer = 0
        for si, sl in enumerate(step.slices):
            for j, src in enumerate(sl.sources):
                have = self.infos[src.model].num_layers
                if src.layers[1] > have:
                    raise self.error(
                        RecipeError,
                        f"{self.key}.slices[{si}].sources[{j}].layers",
                        f"layers {list(src.layers)} go past the {have} layers of {src.model!r}",
                        f"use an end of at most {have}",
                    )
        first, last = step.slices[0], step.slices[-1]
        dropped = self.redundant_heads()

        def outside(model: str) -> list[str]:
            return [n for n in ordered(set(self.infos[model].tensors) - dropped) if not LAYER.match(n)]

        # embeddings from the first slice's model, the final norm and head from the last's (as
        # mergekit: a tied model's missing head where the last is untied is that model's head)
        pre = [n for n in outside(first.sources[0].model) if is_pre(n)]
        post = [n for n in outside(last.sources[0].model) if not is_pre(n)]
        for name in pre:
            yield name, 0.0, self.members(first, name, _named(name)), first.params
        for si, sl in enumerate(step.slices):
            count = sl.sources[0].layers[1] - sl.sources[0].layers[0]
            layer0 = sl.sources[0].layers[0]
            prefix, rests = self.layer_tensors(sl.sources[0].model, f"{self.key}.slices[{si}]")
            for off in range(count):
                t = off / (count - 1) if count > 1 else 1.0
                # each layer's own tensors: an MoE model's dense layers hold other ones
                for rest in rests.get(layer0 + off, ()):
                    out_name = f"{prefix}{out_layer}.{rest}"
                    yield (
                        out_name,
                        t,
                        self.members(sl, out_name, _in_layer(prefix, off, rest)),
                        sl.params,
                    )
                out_layer += 1
        for name in post:
            yield name, 0.0, self.members(last, name, _named(name)), last.params

    def layer_tensors(self, model: str, key: str) -> tuple[str, dict[int, list[str]]]:
        """The prefix of `model`'s layers (`model.layers.`) and each layer's tensor names
        after it (`self_attn.q_proj.weight`). One stack of layers only: a multimodal
        model's (a language model's and a vision tower's) would be interleaved."""
        prefixes: set[str] = set()
        rests: dict[int, list[str]] = {}
        for n in ordered(self.infos[model].tensors):
            if m := LAYER.match(n):
                prefixes.add(m["prefix"])
                rests.setdefault(int(m["index"]), []).append(m["rest"])
        if len(prefixes) != 1:  # none found (an encoder-decoder's `block.N`), or a multimodal model's two
            found = f"more than one stack of layers ({', '.join(sorted(prefixes))})" if prefixes else "no layers"
            raise self.error(
                RecipeError,
                key,
                f"{model!r} has {found} mergepkg can slice: slices cannot tell which layers they cut",
                "merge such a model whole (inputs, not slices)",
            )
        return prefixes.pop(), rests

    def members(self, sl: Slice, out_name: str, tensor_of: Callable[[SliceSource], str]) -> list[Member]:
        base = self.step.base
        return [Member("base" if s.model == base else "input", s.model, tensor_of(s), s.params) for s in sl.sources]

    def output_tensor(self, name: str, t: float, members: list[Member], slice_params: Params) -> OutputTensor:
        if (kept := self.not_merged(name, members)) is not None:
            return kept
        spec, step = self.spec, self.step
        parts, base = [], None
        ref_info, ref_model = None, None
        row_map = self.alignment.row_map([(model, tensor) for _, model, tensor, _ in members])
        rows = 1 if row_map else 0  # a row map aligns the first dimension: only the others must agree
        for role, model, tensor, _ in members:
            info = self.infos[model].tensors.get(tensor)
            if info is None:
                raise self.error(
                    ModelMismatchError,
                    self.key_of(model),
                    f"{model!r} has no tensor {tensor}"
                    + tied_note(
                        tensor, next((m for _, m, t, _ in members if t in self.infos[m].tensors), model), model
                    ),
                    "the models must share an architecture and tensor names",
                )
            if ref_info is None:
                ref_info, ref_model = info, model
            elif info.shape[rows:] != ref_info.shape[rows:]:
                raise self.error(
                    ModelMismatchError,
                    self.key_of(model),
                    f"tensor {tensor}: {model!r} has shape {list(info.shape)} "
                    f"but {ref_model!r} has {list(ref_info.shape)}",
                    "merged models need equal tensor shapes",
                )
            part = Part(model, tensor)
            if role == "base":
                base = part
            else:
                parts.append(part)
        assert ref_info is not None  # a group has a member: an input or a slice source
        shared = [slice_params, step.params]
        inputs = [m for m in members if m.role == "input"]
        params: dict[str, Any] = {
            p.arg: param_value(p, shared, name, t, self.where, f"{self.key}.params")
            for p in spec.params
            if not p.per_input
        }
        for p in spec.params:
            if p.per_input:
                params[p.arg] = [
                    param_value(p, [m.params, *shared], m.tensor, t, self.where, self.key_of(m.model)) for m in inputs
                ]
        if spec.check is not None and (problem := spec.check(params)) is not None:
            where = f"{self.key}.params" if step.params else self.key
            raise self.error(RecipeError, where, f"{name}: {problem.message}", problem.hint)
        stored = self.infos[base.model].tensors[base.tensor].dtype if base else ref_info.dtype
        if step.dtype == AUTO and stored in FLOAT_CODES:  # saved as computed: the parts' dtypes promoted
            members_ = [base, *parts] if base else parts
            stored = promote_codes([self.infos[p.model].tensors[p.tensor].dtype for p in members_])
        dtype = saved_dtype(step.out_dtype, stored)
        shape = (row_map.rows, *ref_info.shape[1:]) if row_map else ref_info.shape
        return OutputTensor(name, TensorInfo(dtype, shape), base, tuple(parts), params, row_map)

    def not_merged(self, name: str, members: list[Member]) -> OutputTensor | None:
        """The output tensor of members that are not floating point, or None (merge them).

        An integer or bool tensor (a buffer: position ids, an attention mask) means no
        amount: it is copied, not merged, from the base (or the first input), once the
        engine has read every model's and found the same bytes (engine/step.py
        `same_bytes`), where mergekit would average the buffers it knows and drop the others.
        So every model must hold it in one dtype and shape. Quantized weights (float8, or
        integers in a model whose config.json has a `quantization_config`) are codes
        beside scales: merged as numbers they are noise, copied they are one model's.
        They are refused here, so `validate` says it."""
        infos = [self.infos[m.model].tensors.get(m.tensor) for m in members]
        if any(i is None for i in infos) or all(i.dtype in FLOAT_CODES for i in infos if i is not None):
            return None  # a missing tensor: the merge's own checks say which model lacks it
        for m, info in zip(members, infos):
            assert info is not None
            quantized = self.infos[m.model].config.get("quantization_config")
            if info.dtype.startswith("F8_") or (quantized and info.dtype not in FLOAT_CODES):
                how = (
                    f" ({quantized['quant_method']})"
                    if isinstance(quantized, dict) and "quant_method" in quantized
                    else ""
                )
                raise self.error(
                    ModelMismatchError,
                    self.key_of(m.model),
                    f"{m.model!r} is a quantized model{how}: its tensor {m.tensor} is {info.dtype}, "
                    "and quantized weights cannot be merged",
                    "dequantize it first (transformers: load it, model.dequantize(), save_pretrained), "
                    "or merge the model it was quantized from",
                )
        (first, *rest), (ref, *others) = members, infos
        assert ref is not None
        for m, info in zip(rest, others):
            assert info is not None
            if (info.dtype, info.shape) != (ref.dtype, ref.shape):
                raise self.error(
                    ModelMismatchError,
                    self.key_of(m.model),
                    f"tensor {m.tensor}: {m.model!r} holds {info.dtype} {list(info.shape)} but {first.model!r} "
                    f"{ref.dtype} {list(ref.shape)}",
                    "integer and bool tensors are copied, not merged: every model must hold the same one",
                )
        base = next((Part(m.model, m.tensor) for m in members if m.role == "base"), None)
        parts = tuple(Part(m.model, m.tensor) for m in members if m.role == "input")
        return OutputTensor(name, TensorInfo(ref.dtype, ref.shape), base, parts)


def _named(name: str) -> Callable[[SliceSource], str]:
    """Tensor `name` of every slice source (a tensor outside the layers)."""
    return lambda s: name


def _in_layer(prefix: str, offset: int, rest: str) -> Callable[[SliceSource], str]:
    """Tensor `rest` of the layer `offset` layers into each slice source's range."""
    return lambda s: f"{prefix}{s.layers[0] + offset}.{rest}"


def tied_note(tensor: str, has: str, lacks: str) -> str:
    """Why a head tensor is in one model only: it ties its head to its embeddings."""
    if tensor not in HEADS or has == lacks:
        return ""
    return (
        f": {lacks!r} ties its output head to its input embeddings (tie_word_embeddings) and {has!r} "
        "does not; merge models that agree on tie_word_embeddings"
    )
