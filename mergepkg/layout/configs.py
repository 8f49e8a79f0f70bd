"""An output's config.json, where it differs from the config it is copied from: the
layer count and per-layer settings of stacked layers, and the dtype the tensors are
saved in. transformers checks both: a `layer_types` list of another length than
`num_hidden_layers` is refused, and a model is loaded in the dtype its config names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mergepkg.io.tensors import NAME_OF, TensorInfo
from mergepkg.layout.types import FLOAT_CODES, LAYER_COUNT_KEYS, ModelInfo

# one value per layer: attention kinds (Qwen2/3, Gemma2/3, Cohere2: sliding or full), NoPE layers (SmolLM3)
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
# the indexes of the layers that have a property: dense MLPs among MoE layers (Qwen2-MoE, Qwen3-MoE)
LAYER_INDEX_KEYS = ("mlp_only_layers",)


def with_stacked_layers(config: dict, layers: list[tuple[str, int]], infos: Mapping[str, ModelInfo]) -> dict:
    """`config` for the output layers `layers`, each a (model, layer index) it is taken from:
    their count, and each per-layer setting as its source layer has it. A setting a source's
    config does not give for its layers is left out, so transformers derives it."""
    key = next((k for k in LAYER_COUNT_KEYS if k in config), "num_hidden_layers")
    config[key] = len(layers)
    for key in PER_LAYER_KEYS:
        if key not in config:
            continue
        values = []
        for model, index in layers:
            own = infos[model].config.get(key)
            if not isinstance(own, list) or len(own) != infos[model].num_layers:
                config.pop(key)
                break
            values.append(own[index])
        else:
            config[key] = values
    for key in LAYER_INDEX_KEYS:
        if isinstance(config.get(key), list):
            config[key] = [out for out, (model, index) in enumerate(layers) if index in _indexes(infos[model], key)]
    return config


def _indexes(info: ModelInfo, key: str) -> set[int]:
    value = info.config.get(key)
    return {i for i in value if isinstance(i, int)} if isinstance(value, list) else set()


def with_saved_dtype(config: dict, out_dtype: str | None) -> dict:
    """`config` (an output's config.json) naming `out_dtype` where one is set."""
    if out_dtype:
        config["dtype"] = out_dtype  # transformers >= 4.56 reads `dtype`, older `torch_dtype`
        if "torch_dtype" in config:
            config["torch_dtype"] = out_dtype
    return config


def shared_dtype(tensors: Iterable[TensorInfo]) -> str | None:
    """The dtype name of every floating-point tensor in `tensors`, when they share one."""
    codes = {t.dtype for t in tensors if t.dtype in FLOAT_CODES}
    return NAME_OF[codes.pop()] if len(codes) == 1 else None


def with_head_tying(config: dict, head_config: dict) -> dict:
    """`config` of a stack of slices tying its head as the model its final norm and head come
    from (the last slice's, `head_config`) does: its head is written where that model has
    one, and left to the input embeddings where that model ties them."""
    if "tie_word_embeddings" in head_config:
        config["tie_word_embeddings"] = head_config["tie_word_embeddings"]
    else:
        config.pop("tie_word_embeddings", None)
    return config
