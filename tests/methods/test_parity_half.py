"""Parity with mergekit 0.1.5 in half precision and without a dtype, through the importer.

Most real configs set `dtype: bfloat16` or `float16`, and some none (mergekit then
computes in the inputs' own dtype). Each case here is a config of test_parity.py's,
run by `mergekit-yaml` with such a dtype, and by mergepkg on the recipe `mergepkg
import` makes of the same config. The rule (docs/methods.md):

- elementwise methods give mergekit's bytes exactly;
- TIES and breadcrumbs too, except where a magnitude ties with the top-k threshold
  (mergepkg keeps the lowest indexes; mergekit, whichever its sort puts first);
- methods that reduce a whole tensor (slerp, nuslerp, model_stock) within one unit in
  the last place of the saved dtype: mergekit's own result depends on torch's reduction
  order, and so on its thread count.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from helpers import build_recipe, load_tensors, reduction_mismatches
from test_parity import DETERMINISTIC, MERGEKIT_YAML, SEED, mergekit_config

pytestmark = pytest.mark.slow  # runs mergekit beside mergepkg

REDUCING = ("slerp", "nuslerp", "model_stock")
TOP_K = ("ties", "breadcrumbs", "breadcrumbs_ties")
# (models' stored dtype, the config's dtype): half precision asked of float32 models (mergekit
# rounds the inputs first), float16 models in float16, and no dtype over bf16 and fp16 models
SETTINGS = [("float32", "bfloat16"), ("float16", "float16"), ("bfloat16", None)]
CASES = {
    f"{case}@{stored}-{dtype or 'none'}": (case, stored, dtype)
    for case in DETERMINISTIC
    if case not in ("sharded", "passthrough-slices", "ties-base-alone-slice")  # the float32 suite has them
    for stored, dtype in SETTINGS
}


@pytest.fixture(scope="module")
def stored_as(models, tmp_path_factory):
    """stored_as(dtype) -> the tiny models with their tensors cast to `dtype`."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("half-models")

    def cast(dtype: str) -> dict[str, Path]:
        if dtype == "float32":
            return models
        out = {}
        for name in ("base", "ft1", "ft2", "ft3", "deep"):
            folder = root / dtype / name
            if not folder.exists():
                folder.mkdir(parents=True)
                for f in models[name].iterdir():
                    if f.suffix != ".safetensors":
                        (folder / f.name).write_bytes(f.read_bytes())
                tensors = {
                    k: v.to(getattr(torch, dtype)) for k, v in load_file(models[name] / "model.safetensors").items()
                }
                save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
            out[name] = folder
        return out

    return cast


def config_for(key: str, stored_as) -> dict:
    case, stored, dtype = CASES[key]
    cfg = mergekit_config(DETERMINISTIC[case], stored_as(stored))
    cfg.pop("out_dtype")
    if dtype is None:
        cfg.pop("dtype")
    else:
        cfg["dtype"] = dtype
    return cfg


@pytest.fixture(scope="module")
def mergekit_half(request, stored_as, tmp_path_factory):
    """mergekit_half(key) -> (config file, mergekit's output); every collected case started up front."""
    root = tmp_path_factory.mktemp("mergekit-half")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
    futures = {}

    def run(key: str) -> tuple[Path, Path]:
        folder = root / key.replace("@", "-")
        folder.mkdir()
        config = folder / "config.yml"
        config.write_text(yaml.safe_dump(config_for(key, stored_as), sort_keys=False))
        cmd = [str(MERGEKIT_YAML), str(config), str(folder / "out"), "--no-cuda", "--quiet", "--random-seed",
               str(SEED), "--no-copy-tokenizer", "--no-write-model-card"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return config, folder / "out"

    def start(key: str):
        if key not in futures:
            futures[key] = pool.submit(run, key)
        return futures[key]

    for item in request.session.items:
        key = getattr(item, "callspec", None) and item.callspec.params.get("key")
        if item.module is request.module and key in CASES:
            start(key)
    yield lambda key: start(key).result()
    pool.shutdown(wait=True, cancel_futures=True)


def threshold_ties(case: dict, name: str, dtype: torch.dtype, sources: dict[str, dict]) -> torch.Tensor:
    """Entries where, for some input, |delta| equals a magnitude at which that input's
    sparsification cuts (TIES: the k-th largest; breadcrumbs: the lowest and, with gamma,
    the highest kept) and other entries share it: where a cut may break the tie either way."""
    base = sources[case["base"]][name].to(dtype)
    ties = torch.zeros(base.shape, dtype=torch.bool)
    for model, params in case["inputs"]:
        magnitude = (sources[model][name].to(dtype) - base).abs().float()
        n = magnitude.numel()
        keep = max(1, int(params.get("density", 1.0) * n))
        ascending = magnitude.reshape(-1).sort().values
        if case["method"] == "ties":
            cuts = [ascending[n - keep]]
        else:  # breadcrumbs: the largest gamma fraction dropped, then the smallest
            n_top = int(params.get("gamma", 0.01) * n)
            n_bot = max(0, n - keep - n_top)
            cuts = [ascending[n_bot], ascending[min(n - 1, n_bot + keep - 1)]]
        for cut in cuts:
            at = magnitude == cut
            if int(at.sum()) > 1:
                ties |= at
    return ties


@pytest.mark.parametrize("key", list(CASES))
def test_half_precision_and_no_dtype_give_mergekits_bytes(key, mergekit_half, stored_as, tmp_path):
    from mergepkg.importers.mergekit import convert_file

    case, stored, dtype = CASES[key]
    spec = DETERMINISTIC[case]
    config, theirs_dir = mergekit_half(key)
    recipe = tmp_path / "recipe.toml"
    result = convert_file(config, output=recipe)
    assert result.recipe is not None and result.recipe.steps[result.recipe.outputs[0]].dtype == (dtype or "auto")
    report = build_recipe(recipe, tmp_path / "out", seed=SEED)
    (ours_dir,) = report.outputs.values()
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    sources = (
        {name: load_tensors(folder) for name, folder in stored_as(stored).items()} if spec["method"] in TOP_K else {}
    )
    for name in sorted(theirs):
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype == getattr(torch, dtype or stored), (name, a.dtype, b.dtype)
        differ = a != b
        if spec["method"] in REDUCING:
            assert not reduction_mismatches(a, b).any(), name
        elif spec["method"] in TOP_K:
            assert not (differ & ~threshold_ties(spec, name, a.dtype, sources)).any(), name
        else:
            assert not differ.any(), f"{name}: {int(differ.sum())} of {a.numel()} entries differ"
