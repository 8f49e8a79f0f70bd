"""Parity with mergekit 0.1.5 for karcher, sce, arcee_fusion and nearswap: the same tiny
models merged by `mergekit-yaml` and by mergepkg, compared tensor by tensor (the cases are
written as in test_parity.py, whose helpers this module uses), then the same merge
functions on larger tensors in process, where whole-tensor reductions take many blocks.

sce, arcee_fusion and nearswap give the same bits as mergekit, except where sce's
selection meets tied variances (bfloat16: mergepkg keeps the lowest indexes, mergekit
whichever torch.topk returns), and arcee_fusion's softmax, whose bits torch's changes with
the CPU: mergekit is run with mergepkg's (tests/mergekit_site). karcher sums norms and dot products over whole tensors
(kernels/reduce.py) where mergekit calls torch.linalg.vector_norm and torch.dot, which add
in another order: its results agree within a few units in the last place of each tensor's
largest entry, and on large tensors, where vector_norm's float32 sum drifts, mergepkg's
stay that close to mergekit's own algorithm run in float64.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from helpers import build_one, load_tensors, mergekit_env
from test_parity import (
    MERGEKIT_YAML,
    SEED,
    _in,
    assert_same_config,
    mergekit_config,
    recipe_body,
)

from mergepkg.methods import METHODS

pytestmark = pytest.mark.slow  # runs mergekit beside mergepkg

EXACT = dict(rtol=0, atol=0)
KARCHER_ULPS = 6  # of each tensor's largest magnitude (the tiny models: at most 4 seen)
TRUTH_ULPS = 3  # karcher against mergekit's algorithm in float64 (at most 2 seen)

# A case as in test_parity.py, plus `dtype` (both tools' compute dtype, float32 unless
# given) and `mergekit_base` (a base_model only mergekit is given: karcher takes none, and
# mergekit merges it as one more model, last, which the mergepkg recipe lists as an input).
CASES = {
    # -- karcher: the inputs' directions averaged on the sphere ---------------------------
    "karcher-2": dict(method="karcher", inputs=[_in("ft1"), _in("ft2")]),
    "karcher-3-params": dict(
        method="karcher", inputs=[_in("ft1"), _in("ft2"), _in("ft3")], params={"max_iter": 2, "tol": 0.001}
    ),
    "karcher-filter": dict(
        method="karcher",
        inputs=[_in("ft1"), _in("ft2"), _in("ft3")],
        params={"max_iter": [{"filter": "self_attn", "value": 0}, {"filter": "mlp", "value": 1}, {"value": 25}]},
    ),
    "karcher-base": dict(method="karcher", inputs=[_in("ft1"), _in("ft2"), _in("base")], mergekit_base="base"),
    # -- sce: select by variance, weight by mean square, erase disagreeing signs ----------
    "sce": dict(method="sce", base="base", inputs=[_in("ft1"), _in("ft2"), _in("ft3")]),
    "sce-topk": dict(method="sce", base="base", inputs=[_in("ft1"), _in("ft2")], params={"select_topk": 0.5}),
    "sce-gradient": dict(
        method="sce",
        base="base",
        inputs=[_in("ft1"), _in("ft2"), _in("ft3")],
        params={"select_topk": [{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.3}]},
    ),
    "sce-one-input": dict(method="sce", base="base", inputs=[_in("ft1")]),
    # mergekit's rule: one input has no variance, so select_topk < 1 selects nothing (the base)
    "sce-one-input-topk": dict(method="sce", base="base", inputs=[_in("ft1")], params={"select_topk": 0.5}),
    "sce-bf16": dict(method="sce", base="base", inputs=[_in("ft1"), _in("ft2_bin")], dtype="bfloat16"),
    # bfloat16 variances tie at the k-th largest: there the two tools may keep different entries
    "sce-bf16-topk": dict(
        method="sce", base="base", inputs=[_in("ft1"), _in("ft2")], params={"select_topk": 0.7}, dtype="bfloat16"
    ),
    # -- arcee_fusion: the other model's entries that score above median + 1.5 IQR -------
    "arcee_fusion": dict(method="arcee_fusion", base="base", inputs=[_in("ft1")]),
    "arcee_fusion-sharded": dict(method="arcee_fusion", base="ft2_bin", inputs=[_in("ft1_sharded")]),
    # bfloat16 compute: the float32 mask makes the result float32, as in mergekit
    "arcee_fusion-bf16": dict(
        method="arcee_fusion", base="base", inputs=[_in("ft1_bf16")], dtype="bfloat16", out_dtype="bfloat16"
    ),
    # -- nearswap: near entries swapped, far ones moved by t ------------------------------
    "nearswap": dict(method="nearswap", base="base", inputs=[_in("ft1")], params={"t": 0.01}),
    "nearswap-gradient": dict(
        method="nearswap",
        base="base",
        inputs=[_in("ft1")],
        params={"t": [{"filter": "self_attn", "value": [0, 0.005, 0.05]}, {"value": 0.02}]},
    ),
    "nearswap-bf16": dict(method="nearswap", base="base", inputs=[_in("ft2")], params={"t": 0.015}, dtype="bfloat16"),
}


def config_for(spec: dict, models: dict[str, Path]) -> dict:
    cfg = mergekit_config(spec, models)
    cfg["dtype"] = spec.get("dtype", "float32")
    if spec.get("mergekit_base"):
        cfg["base_model"] = str(models[spec["mergekit_base"]])
        cfg["models"] = [m for m in cfg["models"] if m["model"] != cfg["base_model"]]
    return cfg


def recipe_for(spec: dict) -> str:
    body = recipe_body(spec)
    return body + (f'dtype = "{spec["dtype"]}"\n' if spec.get("dtype") else "")


def run_mergekit(cfg: dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = folder / "config.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / "out"
    cmd = [str(MERGEKIT_YAML), str(config), str(out), "--no-cuda", "--quiet", "--random-seed", str(SEED)]
    cmd += ["--no-copy-tokenizer", "--no-write-model-card"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=mergekit_env())
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed ({proc.returncode}) on\n{config.read_text()}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def mergekit_out(request, models, tmp_path_factory):
    """mergekit_out(case) -> mergekit's output folder; every collected case started at once."""
    root = tmp_path_factory.mktemp("mergekit-more")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
    futures = {}

    def start(case: str):
        if case not in futures:
            futures[case] = pool.submit(run_mergekit, config_for(CASES[case], models), root / case)
        return futures[case]

    for item in request.session.items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if item.module is request.module and case in CASES:
            start(case)
    yield lambda case: start(case).result()
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def mergepkg_out(write_recipe, tmp_path):
    def build(case: str):
        out = tmp_path / "mergepkg-out"
        return build_one(write_recipe(recipe_for(CASES[case])), out, seed=SEED), out

    return build


def ulp_of_largest(t: torch.Tensor) -> float:
    """The spacing of floats at the tensor's largest magnitude."""
    largest = float(t.abs().max())
    return float(torch.finfo(t.dtype).eps) * 2.0 ** (torch.frexp(torch.tensor(largest)).exponent.item() - 1)


def compare(ours: dict, theirs: dict, ulps: float | None) -> tuple[int, float]:
    """Same names, shapes and dtypes; equal bits (ulps None) or within `ulps` of each
    tensor's largest entry. Returns (entries that differ, largest difference in those ulps)."""
    assert sorted(ours) == sorted(theirs)
    differ, worst = 0, 0.0
    for name in sorted(ours):
        a, b = ours[name], theirs[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if ulps is None:
            torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}", **EXACT)
            continue
        spacing = ulp_of_largest(b)
        diff = float((a.double() - b.double()).abs().max()) / spacing
        assert diff <= ulps, f"{name}: {diff:.1f} ulps of its largest entry"
        differ += int((a != b).sum())
        worst = max(worst, diff)
    return differ, worst


TIES_AT_K = {"sce-bf16-topk"}


@pytest.mark.parametrize("case", [c for c in CASES if c not in TIES_AT_K])
def test_same_tensors_as_mergekit(case, mergekit_out, mergepkg_out):
    spec = CASES[case]
    theirs_dir = mergekit_out(case)
    ours, ours_dir = mergepkg_out(case)
    theirs = load_tensors(theirs_dir)
    differ, worst = compare(ours, theirs, KARCHER_ULPS if spec["method"] == "karcher" else None)
    total = sum(t.numel() for t in ours.values())
    print(f"{case}: {differ} of {total} entries differ, at most {worst:.2f} ulps of their tensor's largest")
    assert_same_config(ours_dir, theirs_dir)


@pytest.mark.parametrize("case", sorted(TIES_AT_K))
def test_sce_differs_only_where_variances_tie_at_the_cut(case, mergekit_out, mergepkg_out, models):
    """Documented difference: among entries whose variance equals the k-th largest, mergepkg
    keeps the lowest indexes; mergekit, whichever torch.topk returns. In a tensor where that
    choice is open the tied entries may be kept by one tool only, and the others may differ
    by a rounding (the selection changes the matrix-level weights); every other tensor has
    the same bits."""
    spec = CASES[case]
    ours, _ = mergepkg_out(case)
    theirs = load_tensors(mergekit_out(case))
    inputs = [load_tensors(models[m]) for m in [spec["base"], *(m for m, _ in spec["inputs"])]]
    open_choice = []
    for name in sorted(ours):
        base, *others = (x[name].to(torch.bfloat16) for x in inputs)
        variance = torch.var(torch.stack([x - base for x in others]), dim=0, unbiased=False).reshape(-1).float()
        k = int(torch.count_nonzero(variance) * spec["params"]["select_topk"])
        cut = variance.sort(descending=True).values[k - 1]
        if int((variance >= cut).sum()) > k:  # more entries at the cut than places left
            open_choice.append(name)
            settled = (variance != cut).view_as(ours[name])  # the tied entries themselves may be in or out
            diff = float((ours[name][settled] - theirs[name][settled]).abs().max())
            assert diff <= 2 * ulp_of_largest(theirs[name].to(torch.bfloat16)), name  # computed in bfloat16
        else:
            assert torch.equal(ours[name], theirs[name]), name
    assert 0 < len(open_choice) < len(ours)  # the case covers both


@pytest.mark.parametrize("case", ["sce-one-input-topk"])
def test_sce_one_input_with_select_topk_is_the_base(case, mergekit_out, mergepkg_out, models):
    """Not vacuous, and mergekit's rule: one input has zero variance everywhere."""
    ours, _ = mergepkg_out(case)
    theirs = load_tensors(mergekit_out(case))
    base = load_tensors(models["base"])
    for merged in (ours, theirs):
        for name in base:
            assert torch.equal(merged[name], base[name]), name


@pytest.mark.parametrize("case", ["karcher-filter", "nearswap-gradient", "sce-gradient"])
def test_filters_and_gradients_apply(case, mergekit_out, mergepkg_out, models):
    """Parity is not vacuous: the filtered or graded values land where they should."""
    ours, _ = mergepkg_out(case)
    theirs = load_tensors(mergekit_out(case))
    base, ft1 = load_tensors(models["base"]), load_tensors(models["ft1"])
    for merged in (ours, theirs):
        if case == "karcher-filter":  # max_iter 0 in attention: the normalized mean, unlike 25 iterations
            ft = [load_tensors(models[m]) for m in ("ft1", "ft2", "ft3")]
            name = "model.layers.1.self_attn.q_proj.weight"
            xs = [f[name] for f in ft]
            start = sum(x / x.norm() for x in xs)
            start = start / start.norm() * (sum(x.norm() for x in xs) / 3)
            torch.testing.assert_close(merged[name], start, rtol=1e-5, atol=1e-7)
        elif case == "nearswap-gradient":  # t = 0 at layer 0 of attention: the base, bit for bit
            name = "model.layers.0.self_attn.q_proj.weight"
            assert torch.equal(merged[name], base[name])
            name = "model.layers.3.self_attn.q_proj.weight"  # t = 0.05: most entries swapped
            assert float((merged[name] == ft1[name]).float().mean()) > 0.9
        else:  # select_topk 0.1 at layer 0 of mlp, 0.9 at layer 3
            at = lambda layer: f"model.layers.{layer}.mlp.up_proj.weight"
            moved = [float((merged[at(i)] != base[at(i)]).float().mean()) for i in (0, 3)]
            assert moved[0] <= 0.1 < moved[1] <= 0.9


# -- the same functions in process, on larger tensors ------------------------------------------


def mergekit_merge(name: str, base, tensors, **params) -> torch.Tensor:
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup

    inputs = ([base] if base is not None else []) + list(tensors)
    group = TensorGroup.from_tensors(inputs, base_index=0 if base is not None else None, name="w")
    (result,) = get(name)((group,), parameters=params, dtype=inputs[0].dtype)
    return result


def mergepkg_merge(name: str, base, tensors, **params) -> torch.Tensor:
    spec = METHODS[name]
    kwargs = {p.arg: p.default for p in spec.params if not p.required}
    return spec.merge(base, [t.clone() for t in tensors], **{**kwargs, **params})


SHAPES = [(20000,), (300, 1000), (3, 50, 70)]  # one row of several blocks; a matrix; three dimensions
IN_PROCESS = [
    ("sce", 3, {}),
    ("sce", 2, {"select_topk": 0.3}),
    ("sce", 1, {}),
    ("arcee_fusion", 1, {}),
    ("nearswap", 1, {"t": 0.004}),
    ("karcher", 3, {}),
    ("karcher", 2, {"max_iter": 3, "tol": 0.001}),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("name", "count", "params"), IN_PROCESS, ids=lambda x: str(x))
def test_larger_tensors_in_process(name, count, params, shape, monkeypatch):
    g = torch.Generator().manual_seed(len(shape))
    base = torch.randn(shape, generator=g) * 0.02
    tensors = [base + 0.005 * torch.randn(shape, generator=g) for _ in range(count)]
    merge_base = None if METHODS[name].base == "none" else base
    ours = mergepkg_merge(name, merge_base, tensors, **params)

    def theirs_merge():
        return mergekit_merge(name, merge_base, tensors, **params)

    # arcee_fusion: mergekit's with mergepkg's softmax (tests/mergekit_site)
    theirs = with_our_softmax(monkeypatch, theirs_merge) if name == "arcee_fusion" else theirs_merge()
    if name != "karcher":
        compare({"w": ours}, {"w": theirs}, None)
        return
    # mergekit's float32 norms drift on long vectors: judge both by its algorithm in float64
    truth = mergekit_merge(name, None, [t.double() for t in tensors], **params)
    spacing = ulp_of_largest(theirs)
    ours_off = float((ours.double() - truth).abs().max()) / spacing
    theirs_off = float((theirs.double() - truth).abs().max()) / spacing
    assert ours_off <= TRUTH_ULPS
    assert float((ours - theirs).abs().max()) / spacing <= max(KARCHER_ULPS, theirs_off + TRUTH_ULPS)


def test_arcee_fusion_large_tensors_use_exact_quantiles(monkeypatch):
    """Above 1,000,000 entries mergekit estimates the quantiles from a random sample;
    mergepkg takes them exactly, which is mergekit's result without the sampling."""
    from mergekit.merge_methods import arcee_fusion as theirs_module

    g = torch.Generator().manual_seed(5)
    base = torch.randn(1200, 1000, generator=g) * 0.02
    other = base + 0.005 * torch.randn(1200, 1000, generator=g)
    ours = mergepkg_merge("arcee_fusion", base, [other])
    assert torch.equal(ours, mergepkg_merge("arcee_fusion", base, [other]))  # no draws
    monkeypatch.setattr(theirs_module, "_QUANTILE_SAMPLE_SIZE", 10**9)
    assert torch.equal(ours, with_our_softmax(monkeypatch, lambda: mergekit_merge("arcee_fusion", base, [other])))


def with_our_softmax(monkeypatch, run):
    """`run()` with mergekit's arcee_fusion given mergepkg's softmax, as tests/mergekit_site gives every mergekit run."""
    import types

    from mergekit.merge_methods import arcee_fusion as theirs_module

    from mergepkg.methods.arcee_fusion import softmax

    with monkeypatch.context() as m:
        m.setattr(theirs_module, "F", types.SimpleNamespace(softmax=lambda x, dim: softmax(x)))
        return run()


def test_our_softmax_is_torchs_within_a_few_units_in_the_last_place():
    """What the change of softmax costs: a few ulps of each probability (yet enough to
    move entries across arcee_fusion's threshold, as the CPU's vector width does)."""
    from mergepkg.methods.arcee_fusion import softmax

    x = torch.randn(300, 1000, generator=torch.Generator().manual_seed(3)) * 0.02
    for dtype, ulps in ((torch.float32, 4), (torch.bfloat16, 1), (torch.float16, 1)):
        ours, torchs = softmax(x.to(dtype)).double(), torch.softmax(x.to(dtype), dim=-1).double()
        assert float(((ours - torchs).abs() / (torch.finfo(dtype).eps * torchs)).max()) <= ulps
