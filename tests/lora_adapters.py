"""PEFT LoRA adapters for tests: stubs written with numpy (for parsing, pinning, keying and
layouts, in milliseconds) and real ones trained by nobody, made by peft from a seed."""

from __future__ import annotations

import json
from pathlib import Path

LORA_CONFIG = {
    "peft_type": "LORA",
    "base_model_name_or_path": "tiny/base",
    "r": 1,
    "lora_alpha": 2,
    "target_modules": ["embed_tokens"],
    "fan_in_fan_out": False,
    "use_rslora": False,
    "use_dora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
}


def stub_adapter(folder: Path, *, value: float = 1.0, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A LoRA adapter of rank 1 on the stub models' one tensor (`model.embed_tokens.weight`,
    4 x 2), or on `tensors` (name -> numpy array); `config` entries override LORA_CONFIG's."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({**LORA_CONFIG, **(config or {})}))
    if tensors is None:
        tensors = {
            "base_model.model.model.embed_tokens.lora_embedding_A": np.full((1, 4), value, dtype=np.float32),
            "base_model.model.model.embed_tokens.lora_embedding_B": np.full((2, 1), value, dtype=np.float32),
        }
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def peft_adapter(folder: Path, base: Path, *, seed: int, model_class: str = "LlamaForCausalLM", **lora) -> Path:
    """A LoRA adapter made by peft on the model in `base`, its weights random (seeded) and
    nonzero, its modules_to_save perturbed; `lora`: LoraConfig settings."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = getattr(transformers, model_class).from_pretrained(base, dtype=torch.float32)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, **lora}
    peft_model = get_peft_model(model, LoraConfig(**settings))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name or "lora_B.bias" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(folder)
    return folder


def peft_merged_model(base: Path, adapter: Path, dtype, model_class: str = "LlamaForCausalLM"):
    """peft's `merge_and_unload` of `adapter` into `base` loaded in `dtype`: the model (its
    config says whether peft left the head tied to the embeddings)."""
    import transformers
    from peft import PeftModel

    model = getattr(transformers, model_class).from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, adapter, is_trainable=False).merge_and_unload()


def peft_merged(base: Path, adapter: Path, dtype, model_class: str = "LlamaForCausalLM") -> dict:
    """peft's `merge_and_unload` of `adapter` into `base` loaded in `dtype`: its state dict."""
    merged = peft_merged_model(base, adapter, dtype, model_class)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
