"""Parity with mergekit 0.1.5: the same merge run through both tools gives the same tensors.

Each case is one spec, written out both as a mergekit YAML config and as a mergepkg
recipe, so the two runs cannot drift apart. Both compute in float32 and save float32
(except the bf16 case), so the only differences allowed are float rounding.

mergekit runs through its CLI (`mergekit-yaml`). Its start-up costs seconds, so every
mergekit run the collected tests need is started up front, a few at a time, in the
module fixture `mergekit_out`; a test waits only for its own.

Random methods (DARE, DELLA) draw their masks differently by design (mergepkg seeds a
generator per tensor and input; mergekit draws from one global generator), so for those
the tests compare what the masks must agree on: the fraction of entries kept and the
rescaling rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from helpers import build_one, load_tensors

pytestmark = pytest.mark.slow  # runs mergekit beside mergepkg

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
SEED = 1234
TOL = dict(rtol=1e-5, atol=1e-6)  # float32 compute on both sides: rounding only
TIGHT = dict(rtol=1e-6, atol=1e-7)  # against a reference computed here, not by mergekit
EXACT = dict(rtol=0, atol=0)  # elementwise methods: the same float32 operations in the same order
REDUCED = ("slerp", "nuslerp", "model_stock")  # whole-tensor reductions: within rounding (docs/methods.md)
BF16_TOL = dict(rtol=1.6e-2, atol=1e-5)  # within bf16 rounding (torch's bf16 defaults)

# The README example of mergekit: a gradient of t per tensor family, 0.5 elsewhere.
SLERP_GRADIENT = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def _in(model: str, **params) -> tuple[str, dict]:
    return (model, params)


def _src(model: str, start: int, end: int, **params) -> tuple[str, tuple[int, int], dict]:
    return (model, (start, end), params)


# A case: method, base (or None), inputs [(model, per-input params)] or
# slices [([(model, (start, end), params)], slice params)], step-wide params, out_dtype.
# Model names are the keys of the `models` fixture.
DETERMINISTIC = {
    # linear: weights that do not sum to 1, so normalize matters
    "linear-2-normalize": dict(
        method="linear", inputs=[_in("ft1", weight=0.5), _in("ft2", weight=0.8)], params={"normalize": True}
    ),
    # 0.6 + 0.3 in float32 is not 0.9 rounded: the divisor must be summed as mergekit sums it
    "linear-2-normalize-float32-sum": dict(
        method="linear", inputs=[_in("ft1", weight=0.6), _in("ft2", weight=0.3)], params={"normalize": True}
    ),
    "linear-2-no-normalize": dict(
        method="linear", inputs=[_in("ft1", weight=0.5), _in("ft2", weight=0.8)], params={"normalize": False}
    ),
    "linear-3-normalize": dict(
        method="linear", inputs=[_in("ft1", weight=0.2), _in("ft2", weight=1.3), _in("ft3", weight=0.6)]
    ),
    "linear-3-no-normalize": dict(
        method="linear",
        inputs=[_in("ft1", weight=0.2), _in("ft2", weight=1.3), _in("ft3", weight=0.6)],
        params={"normalize": False},
    ),
    "slerp-scalar": dict(method="slerp", base="base", inputs=[_in("ft1")], params={"t": 0.35}),
    "slerp-gradient": dict(method="slerp", base="base", inputs=[_in("ft1")], params={"t": SLERP_GRADIENT}),
    "nuslerp-no-base": dict(method="nuslerp", inputs=[_in("ft1", weight=0.3), _in("ft2", weight=0.9)]),
    "nuslerp-base-row-wise": dict(
        method="nuslerp",
        base="base",
        inputs=[_in("ft1", weight=0.6), _in("ft2", weight=0.4)],
        params={"nuslerp_flatten": False, "nuslerp_row_wise": True},
    ),
    "task_arithmetic": dict(
        method="task_arithmetic",
        base="base",
        inputs=[_in("ft1", weight=0.7), _in("ft2", weight=0.4), _in("ft3", weight=-0.2)],
        params={"lambda": 0.9},
    ),
    "ties-d0.5": dict(
        method="ties",
        base="base",
        inputs=[
            _in("ft1", weight=1.0, density=0.5),
            _in("ft2", weight=0.6, density=0.5),
            _in("ft3", weight=0.3, density=0.5),
        ],
    ),
    "ties-d0.7-no-normalize": dict(
        method="ties",
        base="base",
        inputs=[_in("ft1", weight=0.8, density=0.7), _in("ft2", weight=0.5, density=0.7)],
        params={"normalize": False},
    ),
    # per-input gamma: ft1 drops 1% outliers, ft2 none (gamma 0). For 1-D tensors of 32
    # entries int(0.01 * 32) == 0 too: the case older mergekit got wrong.
    "breadcrumbs": dict(
        method="breadcrumbs",
        base="base",
        inputs=[_in("ft1", weight=1.0, density=0.9, gamma=0.01), _in("ft2", weight=0.5, density=0.9, gamma=0.0)],
    ),
    "breadcrumbs_ties": dict(
        method="breadcrumbs_ties",
        base="base",
        inputs=[_in("ft1", weight=1.0, density=0.9, gamma=0.01), _in("ft2", weight=0.5, density=0.9, gamma=0.0)],
    ),
    "model_stock-2": dict(method="model_stock", base="base", inputs=[_in("ft1"), _in("ft2")]),
    "model_stock-3-filter-wise": dict(
        method="model_stock", base="base", inputs=[_in("ft1"), _in("ft2"), _in("ft3")], params={"filter_wise": True}
    ),
    # layer stacking: 2 layers of base, then 3 of deep (a 6-layer model) -> 5 layers,
    # norm and lm_head from deep (the last slice's model), embeddings from base
    "passthrough-slices": dict(method="passthrough", slices=[([_src("base", 0, 2)], {}), ([_src("deep", 3, 6)], {})]),
    "passthrough-scale": dict(
        method="passthrough", inputs=[_in("ft1", scale=[{"filter": "mlp", "value": [0.5, 1.5]}, {"value": 2.0}])]
    ),
    # a slice of the base alone: mergekit's task-vector family returns the base there
    "ties-base-alone-slice": dict(
        method="ties",
        base="base",
        slices=[  # last: mergekit merges the head over the last slice's first len(slices[0]) sources
            ([_src("base", 0, 2), _src("ft1", 0, 2, weight=1.0, density=0.5)], {}),
            ([_src("base", 2, 4)], {}),
        ],
    ),
    # sharded safetensors input and a pytorch_model.bin input
    "sharded": dict(
        method="task_arithmetic", base="base", inputs=[_in("ft1_sharded", weight=0.6), _in("ft2_bin", weight=0.5)]
    ),
}

BF16 = {
    # bf16 and float32 inputs, float32 compute, bf16 output
    "bf16": dict(
        method="task_arithmetic",
        base="base",
        inputs=[_in("ft1_bf16", weight=0.7), _in("ft2", weight=0.4)],
        out_dtype="bfloat16",
    ),
}

# Random methods: one input, weight 1, density D; `rescale` on for attention tensors
# and off for the rest, so one run of each tool covers both rules.
DENSITY = 0.6
RESCALE_SPLIT = [{"filter": "self_attn", "value": True}, {"value": False}]
RANDOM = {
    m: dict(method=m, base="base", inputs=[_in("ft1", weight=1.0, density=DENSITY)], params={"rescale": RESCALE_SPLIT})
    for m in ("dare_ties", "dare_linear", "della", "della_linear")
}

# Documented difference: linear weights summing to zero with normalize. mergekit
# divides by zero; mergepkg refuses (mergepkg/methods/linear.py).
ZERO_SUM = {
    "linear-zero-sum": dict(method="linear", inputs=[_in("ft1", weight=1.0), _in("ft2", weight=-1.0)]),
}

CASES = {**DETERMINISTIC, **BF16, **RANDOM, **ZERO_SUM}


# -- writing one spec for both tools ------------------------------------------------


def mergekit_config(spec: dict, models: dict[str, Path]) -> dict:
    cfg = {"merge_method": spec["method"], "dtype": "float32", "out_dtype": spec.get("out_dtype", "float32")}
    if spec.get("base"):
        cfg["base_model"] = str(models[spec["base"]])
    if spec.get("inputs"):
        cfg["models"] = [{"model": str(models[m]), **({"parameters": p} if p else {})} for m, p in spec["inputs"]]
    if spec.get("slices"):
        cfg["slices"] = [
            {
                "sources": [
                    {"model": str(models[m]), "layer_range": list(lr), **({"parameters": p} if p else {})}
                    for m, lr, p in sources
                ],
                **({"parameters": sp} if sp else {}),
            }
            for sources, sp in spec["slices"]
        ]
    if spec.get("params"):
        cfg["parameters"] = spec["params"]
    return cfg


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def recipe_body(spec: dict) -> str:
    lines = ["[steps.merged]", f"method = {toml_value(spec['method'])}"]
    if spec.get("base"):
        lines.append(f"base = {toml_value(spec['base'])}")
    if spec.get("inputs"):
        lines.append("inputs = " + toml_value([{"model": m, **p} for m, p in spec["inputs"]]))
    if spec.get("slices"):
        slices = [
            {
                "sources": [{"model": m, "layers": list(lr), **p} for m, lr, p in sources],
                **({"params": sp} if sp else {}),
            }
            for sources, sp in spec["slices"]
        ]
        lines.append("slices = " + toml_value(slices))
    if spec.get("params"):
        lines.append("params = " + toml_value(spec["params"]))
    lines.append(f"out_dtype = {toml_value(spec.get('out_dtype', 'float32'))}")
    return "\n".join(lines) + "\n"


def run_mergekit(spec: dict, models: dict[str, Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = folder / "config.yml"
    config.write_text(yaml.safe_dump(mergekit_config(spec, models), sort_keys=False))
    out = folder / "out"
    cmd = [
        str(MERGEKIT_YAML),
        str(config),
        str(out),
        "--no-cuda",
        "--quiet",
        "--random-seed",
        str(SEED),
        "--no-copy-tokenizer",
        "--no-write-model-card",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed ({proc.returncode}) on\n{config.read_text()}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def mergekit_out(request, models, tmp_path_factory):
    """mergekit_out(case) -> mergekit's output folder. Every case a collected test of this
    module names is started at once, a few processes at a time."""
    root = tmp_path_factory.mktemp("mergekit")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
    futures = {}

    def start(case: str):
        if case not in futures:
            futures[case] = pool.submit(run_mergekit, CASES[case], models, root / case)
        return futures[case]

    for item in request.session.items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if item.module is request.module and case in CASES:
            start(case)
    yield lambda case: start(case).result()
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def mergepkg_out(write_recipe, tmp_path):
    """mergepkg_out(case) -> (tensors, output folder), built through the library."""

    def build(case: str):
        recipe = write_recipe(recipe_body(CASES[case]))
        out = tmp_path / "mergepkg-out"
        return build_one(recipe, out, seed=SEED), out

    return build


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


CONFIG_KEYS = ("architectures", "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")


def assert_same_config(ours_dir: Path, theirs_dir: Path):
    ours, theirs = read_config(ours_dir), read_config(theirs_dir)
    for key in CONFIG_KEYS:
        assert ours.get(key) == theirs.get(key), key
    for key in ("dtype", "torch_dtype"):  # transformers 5 writes `dtype`, older `torch_dtype`
        if key in ours and key in theirs:
            assert ours[key] == theirs[key], key


def assert_same_tensors(ours: dict, theirs: dict, **tol):
    assert sorted(ours) == sorted(theirs), (
        f"only mergepkg: {sorted(set(ours) - set(theirs))}; only mergekit: {sorted(set(theirs) - set(ours))}"
    )
    for name in sorted(ours):
        assert ours[name].shape == theirs[name].shape, name
        assert ours[name].dtype == theirs[name].dtype, name
        torch.testing.assert_close(ours[name], theirs[name], msg=lambda m, n=name: f"{n}: {m}", **tol)


# -- deterministic methods: same tensors ------------------------------------------------


@pytest.mark.parametrize("case", list(DETERMINISTIC))
def test_same_tensors_as_mergekit(case, mergekit_out, mergepkg_out):
    theirs_dir = mergekit_out(case)
    ours, ours_dir = mergepkg_out(case)
    theirs = load_tensors(theirs_dir)
    assert_same_tensors(ours, theirs, **(TOL if case.startswith(REDUCED) else EXACT))
    for t in ours.values():
        assert t.dtype == torch.float32
    assert_same_config(ours_dir, theirs_dir)


@pytest.mark.parametrize("case", ["passthrough-slices"])
def test_passthrough_stacking_layer_count(case, mergekit_out, mergepkg_out, models):
    theirs_dir = mergekit_out(case)
    ours, ours_dir = mergepkg_out(case)
    assert read_config(ours_dir)["num_hidden_layers"] == read_config(theirs_dir)["num_hidden_layers"] == 5
    # the layers really are the stacked ones: out 0-1 = base 0-1, out 2-4 = deep 3-5
    base, deep = load_tensors(models["base"]), load_tensors(models["deep"])
    for out_layer, (src, layer) in enumerate([(base, 0), (base, 1), (deep, 3), (deep, 4), (deep, 5)]):
        name = f"model.layers.{out_layer}.self_attn.q_proj.weight"
        assert torch.equal(ours[name], src[f"model.layers.{layer}.self_attn.q_proj.weight"])
    assert torch.equal(ours["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(ours["lm_head.weight"], deep["lm_head.weight"])


@pytest.mark.parametrize("case", ["slerp-gradient"])
def test_slerp_gradient_endpoints(case, mergekit_out, mergepkg_out, models):
    """Parity is not vacuous: both tools put t = 0 / t = 1 where the gradients say
    (layer 0 of 4 is t position 0, layer 3 is position 1)."""
    theirs = load_tensors(mergekit_out(case))
    ours, _ = mergepkg_out(case)
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    for merged in (ours, theirs):
        for part, first, last in (("self_attn.q_proj", base, ft1), ("mlp.up_proj", ft1, base)):
            at0, at3 = f"model.layers.0.{part}.weight", f"model.layers.3.{part}.weight"
            torch.testing.assert_close(merged[at0], first[at0], **TOL)
            torch.testing.assert_close(merged[at3], last[at3], **TOL)
        name = "model.embed_tokens.weight"  # neither filter: t = 0.5, strictly between
        assert not torch.allclose(merged[name], base[name]) and not torch.allclose(merged[name], ft1[name])


@pytest.mark.parametrize("case", ["passthrough-scale"])
def test_passthrough_scale_values(case, mergekit_out, mergepkg_out, models):
    theirs = load_tensors(mergekit_out(case))
    ours, _ = mergepkg_out(case)
    ft1 = load_tensors(models["ft1"])
    for merged in (ours, theirs):
        for layer in range(4):  # mlp: gradient 0.5 -> 1.5 over layers 0..3; the rest: 2.0
            name = f"model.layers.{layer}.mlp.down_proj.weight"
            torch.testing.assert_close(merged[name], ft1[name] * (0.5 + layer / 3), **TIGHT)
            name = f"model.layers.{layer}.self_attn.o_proj.weight"
            torch.testing.assert_close(merged[name], ft1[name] * 2.0, **TIGHT)
        torch.testing.assert_close(merged["lm_head.weight"], ft1["lm_head.weight"] * 2.0, **TIGHT)


@pytest.mark.parametrize("case", list(BF16))
def test_bf16_inputs_and_output(case, mergekit_out, mergepkg_out):
    theirs_dir = mergekit_out(case)
    ours, ours_dir = mergepkg_out(case)
    theirs = load_tensors(theirs_dir)
    for t in [*ours.values(), *theirs.values()]:
        assert t.dtype == torch.bfloat16
    assert_same_tensors(ours, theirs, **BF16_TOL)
    # both compute in float32 and round once: nearly every entry is bit-identical
    same = sum(int((ours[n] == theirs[n]).sum()) for n in ours)
    total = sum(t.numel() for t in ours.values())
    assert same / total > 0.99
    assert_same_config(ours_dir, theirs_dir)
    assert read_config(ours_dir).get("dtype") == "bfloat16"


# -- documented difference: linear weights summing to zero ---------------------------------


@pytest.mark.parametrize("case", list(ZERO_SUM))
def test_linear_zero_sum_weights(case, mergekit_out, write_recipe, tmp_path):
    from mergepkg.errors import RecipeError

    theirs = load_tensors(mergekit_out(case))
    # mergekit divides by a zero sum of weights: non-finite tensors
    assert any(not torch.isfinite(t).all() for t in theirs.values())
    # mergepkg refuses, from the layout: before a tensor is read (and in `validate`)
    with pytest.raises(RecipeError, match="sum to"):
        build_one(write_recipe(recipe_body(CASES[case])), tmp_path / "out")


# -- random methods: masks differ by design, density and rescale rule agree ----------------


def kept_deltas(merged: dict, base: dict) -> dict:
    return {n: merged[n] - base[n] for n in merged}


@pytest.mark.parametrize("case", list(RANDOM))
def test_random_methods_density_and_rescale(case, mergekit_out, mergepkg_out, models):
    theirs = load_tensors(mergekit_out(case))
    ours, _ = mergepkg_out(case)
    base, ft = load_tensors(models["base"]), load_tensors(models["ft1"])
    assert sorted(ours) == sorted(theirs) == sorted(base)
    full = {n: ft[n] - base[n] for n in base}
    assert all(bool((d != 0).all()) for d in full.values())  # every entry of the fixture moved

    for tool, merged in (("mergepkg", ours), ("mergekit", theirs)):
        kept = kept_deltas(merged, base)
        nonzero = sum(int((d != 0).sum()) for d in kept.values())
        total = sum(d.numel() for d in kept.values())
        assert abs(nonzero / total - DENSITY) < 0.03, f"{tool}: kept {nonzero / total:.3f}, density {DENSITY}"
        rescaled = [n for n in kept if "self_attn" in n]
        plain = [n for n in kept if "self_attn" not in n]
        assert rescaled and plain
        for n in rescaled:  # L1 rescale: the kept delta has the full delta's L1 norm
            torch.testing.assert_close(
                kept[n].abs().sum(),
                full[n].abs().sum(),
                rtol=1e-4,
                atol=0,
                msg=lambda m, n=n, tool=tool: f"{tool} {n}: {m}",
            )
        for n in plain:  # no rescale: kept entries are the original deltas, bit for bit
            mask = kept[n] != 0
            torch.testing.assert_close(
                merged[n][mask], ft[n][mask], rtol=0, atol=0, msg=lambda m, n=n, tool=tool: f"{tool} {n}: {m}"
            )
            torch.testing.assert_close(merged[n][~mask], base[n][~mask], rtol=0, atol=0)
    # documented difference: the masks themselves are drawn differently (per tensor in mergepkg)
    assert any(not torch.equal(ours[n] != base[n], theirs[n] != base[n]) for n in base)
