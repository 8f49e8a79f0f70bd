"""Real mergekit configs, as people published them (mergekit_configs/real/, origins in its
README.md): every config mergekit 0.1.5 runs imports, every one it refuses is refused
at a line of the file, and a representative subset rewritten onto tiny models builds to
mergekit's bytes.

Whether mergekit runs a config is asked of mergekit itself: its config models
(MergeConfiguration, MoEMergeConfig and is_bad_config), its method registry and each
method's input contract, its dtype names. Layer ranges that hold no layer
(`[0, -1]`) are the one check of ours: mergekit merges no layer for them."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from helpers import build_recipe, load_tensors, mergekit_env, reduction_mismatches
from importing import CONFIGS

from mergepkg.errors import RecipeError
from mergepkg.importers.mergekit import convert_file
from mergepkg.importers.mergekit.convert import convert

REAL = CONFIGS / "real"
ALL = sorted(p.name for p in REAL.glob("*.yml"))
MERGEKIT = Path(sys.executable).parent


def mergekit_refuses(path: Path) -> str | None:
    """Why mergekit 0.1.5 refuses the config at `path`, or None when it runs it."""
    from mergekit import merge_methods
    from mergekit.common import dtype_from_name
    from mergekit.config import MergeConfiguration
    from mergekit.moe.config import MoEMergeConfig, is_bad_config

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        return f"invalid YAML: {str(e).splitlines()[0]}"
    try:
        for doc in docs:
            if "experts" in doc and "merge_method" not in doc:
                if is_bad_config(MoEMergeConfig.model_validate(doc)):
                    return "is_bad_config"
                continue
            config = MergeConfiguration.model_validate(doc)
            method = merge_methods.get(config.merge_method)
            dtype_from_name(config.dtype)
            base = config.base_model
            # `models` become one slice, with the base added when it is not listed (mergekit's plan.py)
            wholes = [config.models or [], *(m.models or [] for m in (config.modules or {}).values())]
            groups = [
                [m.model for m in ms] + ([base] if base and base not in [m.model for m in ms] else [])
                for ms in wholes
                if ms
            ]
            slices = [*(config.slices or []), *(s for m in (config.modules or {}).values() for s in m.slices or [])]
            groups += [[s.model for s in sl.sources] for sl in slices]
            for ids in groups:
                method.validate_inputs(ids, base)
            for sl in slices:
                if any(s.layer_range[1] <= s.layer_range[0] for s in sl.sources):
                    return "a layer range that holds no layer"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def test_the_corpus_is_large_and_documented():
    assert len(ALL) >= 60
    readme = (REAL / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in ALL), [n for n in ALL if f"`{n}`" not in readme]
    for name in ALL:
        head = (REAL / name).read_text().splitlines()[:2]
        assert head[0].startswith("# origin: ") and head[1].startswith("# found: "), name


@pytest.mark.parametrize("name", ALL)
def test_what_mergekit_runs_imports_and_what_it_refuses_is_located(name, tmp_path):
    path = REAL / name
    refused = mergekit_refuses(path)
    if refused is None:
        result = convert(path.read_text(), path, recipe_dir=tmp_path, cwd=tmp_path)
        assert result.recipe is not None or result.warnings  # parsed, or only local folders missing
        return
    with pytest.raises(RecipeError) as info:
        convert(path.read_text(), path, recipe_dir=tmp_path, cwd=tmp_path)
    e = info.value
    assert e.file == str(path) and e.line is not None, f"{e} (mergekit: {refused})"


# -- a subset on tiny models, against mergekit's bytes ------------------------------------------

# config -> how its tensors compare: "exact", "ulp" (the method reduces whole tensors, so
# mergekit's own bytes depend on torch's reduction order: within one unit in the last
# place), "top_k" (exact but where the top-k cut of TIES' magnitudes or SCE's variances
# falls on a tie, which mergekit breaks by index in torch's order), "close" (karcher: an
# iteration over reductions, compared as in test_parity_more)
SUBSET = {
    "ties-mlabonne-neuralpipe-7b.yml": "top_k",
    "ties-medswin-merged-ties-kd-07.yml": "top_k",  # the `modules` form
    "task-arithmetic-adriansterr-absa-german.yml": "exact",
    "sce-adriansterr-absa-german.yml": "top_k",
    "nearswap-adriansterr-absa-german.yml": "exact",
    "arcee-fusion-tonychu27-edge-ai-final.yml": "exact",  # no dtype: the inputs' own
    "passthrough-mlabonne-neuralpipe-9b.yml": "exact",
    "linear-jacquelinerowe-creolesmt-mbart.yml": "exact",
    "slerp-mlabonne-neuralpipe-7b.yml": "ulp",
    "nuslerp-adriansterr-absa-german.yml": "ulp",
    "model-stock-issue-277-dolphin-hermes.yml": "ulp",
    "karcher-adriansterr-absa-german.yml": "close",
}
TINY_LAYERS = 4
REF_KEYS = ("model", "base_model", "source_model")


def on_tiny_models(data: dict, folders: list[Path], base: Path) -> dict:
    """The config with its models replaced by tiny ones (base_model by `base`, the others by
    `folders` in order of appearance) and its layer ranges scaled to TINY_LAYERS layers."""
    chosen: dict[str, str] = {}
    if data.get("base_model") is not None:
        chosen[str(data["base_model"])] = str(base)
    spare = iter(folders)
    ends = []

    def scan(node):
        if isinstance(node, dict):
            if isinstance(node.get("layer_range"), list):
                ends.append(node["layer_range"][1])
            for v in node.values():
                scan(v)
        elif isinstance(node, list):
            for v in node:
                scan(v)

    scan(data)
    depth = max(ends, default=TINY_LAYERS)

    def rewrite(node):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in REF_KEYS and isinstance(v, str):
                    out[k] = chosen.setdefault(v, str(next(spare)))
                elif k == "layer_range":
                    scaled = [x * TINY_LAYERS / depth for x in v]
                    assert all(x.is_integer() for x in scaled), v
                    out[k] = [int(x) for x in scaled]
                else:
                    out[k] = rewrite(v)
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return rewrite(data)


@pytest.fixture(scope="module")
def tiny_pool(models, tmp_path_factory):
    """Six fine-tunes of the tiny base (the `models` fixture's three and three more)."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("more-models")
    more = [make_model(root / f"ft{i}", seed=i, base=models["base"]) for i in (4, 5, 6)]
    return [models["ft1"], models["ft2"], models["ft3"], *more]


@pytest.fixture(scope="module")
def mergekit_runs(tiny_pool, models, tmp_path_factory):
    """{config: (rewritten config, mergekit's output)}, run a few at a time."""
    root = tmp_path_factory.mktemp("real-on-tiny")

    def run(name: str) -> tuple[Path, Path]:
        folder = root / Path(name).stem
        folder.mkdir()
        config = folder / name
        data = yaml.safe_load((REAL / name).read_text())
        config.write_text(yaml.safe_dump(on_tiny_models(data, tiny_pool, models["base"]), sort_keys=False))
        out = folder / "mergekit"
        cmd = [str(MERGEKIT / "mergekit-yaml"), str(config), str(out), "--no-cuda", "--quiet", "--no-copy-tokenizer",
               "--no-write-model-card"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=mergekit_env())
        assert proc.returncode == 0, f"mergekit failed on\n{config.read_text()}\n{proc.stderr[-3000:]}"
        return config, out

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(run, name) for name in SUBSET}
        yield {name: f.result() for name, f in futures.items()}


def inputs_of(config: Path) -> tuple[str, list[tuple[str, dict]]]:
    """The rewritten config's base folder and (folder, parameters) of each other input, in
    order: from `models`, or from the sources of its slices (whole models here)."""
    data = yaml.safe_load(config.read_text())
    entries = data.get("models") or [
        src
        for module in (data.get("modules") or {"": data}).values()
        for sl in module["slices"]
        for src in sl["sources"]
    ]
    base = data["base_model"]
    return base, [(e["model"], e.get("parameters") or {}) for e in entries if e["model"] != base]


def cut_ties(quantity: torch.Tensor, k: int) -> torch.Tensor:
    """Entries equal to the k-th largest of `quantity` that others share: where a top-k cut
    may break the tie either way."""
    if k <= 0 or k >= quantity.numel():
        return torch.zeros(quantity.shape, dtype=torch.bool)
    at = quantity == quantity.reshape(-1).sort(descending=True).values[k - 1]
    return at if int(at.sum()) > 1 else torch.zeros_like(at)


def top_k_ties(config: Path, tensor: str, dtype: torch.dtype) -> torch.Tensor:
    """Where TIES' magnitude cut (per input) or SCE's variance cut may fall on a tie."""
    base_folder, inputs = inputs_of(config)
    data = yaml.safe_load(config.read_text())
    base = load_tensors(Path(base_folder))[tensor].to(dtype)
    deltas = [load_tensors(Path(folder))[tensor].to(dtype) - base for folder, _ in inputs]
    if data["merge_method"] == "sce":  # mergekit: the top select_topk of the variances that are not 0
        variance = torch.var(torch.stack(deltas), dim=0, unbiased=False)
        k = int(int(torch.count_nonzero(variance)) * data["parameters"]["select_topk"])
        return cut_ties(variance.abs(), k)
    ties = torch.zeros(base.shape, dtype=torch.bool)
    for delta, (_, params) in zip(deltas, inputs):
        ties |= cut_ties(delta.abs(), int(params.get("density", 1.0) * delta.numel()))
    return ties


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUBSET))
def test_real_configs_on_tiny_models_give_mergekits_bytes(name, mergekit_runs, tmp_path):
    config, theirs_dir = mergekit_runs[name]
    recipe = tmp_path / "recipe.toml"
    convert_file(config, output=recipe)
    (ours_dir,) = build_recipe(recipe, tmp_path / "out").outputs.values()
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    rule = SUBSET[name]
    for tensor in sorted(theirs):
        a, b = ours[tensor], theirs[tensor]
        assert a.dtype == b.dtype, (tensor, a.dtype, b.dtype)
        if rule == "exact":
            assert torch.equal(a, b), f"{tensor}: {int((a != b).sum())} of {a.numel()} entries differ"
        elif rule == "top_k":
            differ, ties = a != b, top_k_ties(config, tensor, a.dtype)
            if "sce" in name and ties.any():
                # the tie's choice also moves SCE's weights (mean squares, rounded to the dtype) by a
                # unit of theirs, so every other entry by up to that fraction of the tensor's scale
                limit = 2 * torch.finfo(a.dtype).eps * float(b.float().abs().max())
                assert float((a.float() - b.float())[~ties].abs().max()) <= limit, tensor
                differ &= ties
            assert not (differ & ~ties).any(), f"{tensor}: not at a tie"
            assert int(differ.sum()) <= max(8, a.numel() // 100), f"{tensor}: {int(differ.sum())} entries differ"
        elif rule == "ulp":
            assert not reduction_mismatches(a, b).any(), tensor
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=4 * float(torch.finfo(a.dtype).eps))
