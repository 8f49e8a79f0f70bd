"""build_step stores nothing made from an input that changed while it was read, or whose
sha256 was taken before reading (a first build's claim) and proves false; a fused step
loads the kernels it runs."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from helpers import build_recipe, load_tensors

import mergepkg.engine.step
import mergepkg.io.reader
from mergepkg.errors import SourceError
from mergepkg.methods.kernels import compiled
from mergepkg.store.local import Store

RECIPE = """
[steps.merged]
method = "linear"
inputs = [{ model = "mine", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
"""


def test_an_input_written_during_the_build_stores_nothing(write_recipe, models, tmp_path, mergepkg_home, monkeypatch):
    mine = tmp_path / "mine"
    shutil.copytree(models["ft1"], mine)
    path = write_recipe(RECIPE)
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nmine = {{ path = "{mine}" }}\n'))
    real = mergepkg.io.reader.ModelReader.get

    def written_meanwhile(self, name):
        if self.folder == mine:  # a writer touches it after it was pinned, while the step reads it
            os.utime(mine / "model.safetensors")
        return real(self, name)

    monkeypatch.setattr(mergepkg.io.reader.ModelReader, "get", written_meanwhile)
    with pytest.raises(SourceError) as info:
        build_recipe(path, out=tmp_path / "out")
    assert "changed while the build read it" in info.value.message and "model.safetensors" in info.value.message
    assert Store(mergepkg_home).all() == [] and not (tmp_path / "out").exists()
    assert not any((mergepkg_home / "tmp").iterdir())
    monkeypatch.setattr(mergepkg.io.reader.ModelReader, "get", real)
    assert build_recipe(path, out=tmp_path / "out").built == ["merged"]  # re-pinned by its new stat


@pytest.mark.parametrize(
    "method, params, kernels",
    [
        ("ties", "", ["merge_weighted", "band", "merge_top_k"]),
        ("ties", "params = { rescale = true }", ["merge_weighted", "band", "merge_top_k", "l1_top_k", "sums"]),
        ("dare_ties", "", ["merge_weighted", "merge_drawn", "draw_bits", "l1_drawn", "sums"]),  # rescales by default
        ("task_arithmetic", "", ["merge_weighted"]),
    ],
)
def test_a_fused_step_loads_the_kernels_its_tensors_run(write_recipe, tmp_path, monkeypatch, method, params, kernels):
    """engine/step._kernels: the method's kernels (the L1 pass only where a tensor is
    rescaled), for the step's dtype over its inputs' dtypes, writing the saved dtype."""
    density = ", density = 0.5" if method != "task_arithmetic" else ""
    path = write_recipe(
        f'[steps.s]\nmethod = "{method}"\nbase = "base"\ndtype = "bfloat16"\n{params}\n'
        f'inputs = [{{ model = "ft1", weight = 0.5{density} }}, {{ model = "ft2", weight = 0.5{density} }}]\n'
    )
    loads, loaded = [], {}
    stand_in = mergepkg.engine.step.fused
    real = stand_in.load  # (touching the stand-in copies the module's names into it first)
    names = ["band", "draw_bits", "l1_drawn", "l1_top_k", "merge_drawn", "merge_top_k", "merge_weighted", "sums"]

    def load(*args, **kwargs):
        loads.append(kwargs)
        real(*args, **kwargs)
        loaded.update({k: set(getattr(compiled, k).signatures) for k in names})

    monkeypatch.setattr(stand_in, "load", load)
    build_recipe(path, out=tmp_path / "out")
    assert {k: set(getattr(compiled, k).signatures) for k in names} == loaded  # nothing more ran
    # float32 models merged in bfloat16, saved as float32 (the base's dtype), never computed wider
    assert loads == [
        {"compute": ["bfloat16"], "stored": ["float32"], "kernels": kernels, "results": ["float32"], "counts": [2]}
    ]


# -- tensors that are not floating point, and tensors of no entries ---------------------------

POSITION_IDS, MASK, EMPTY_ROWS, EMPTY_COLUMNS = "model.position_ids", "model.mask", "model.empty", "model.empty2"
Q = "model.layers.0.self_attn.q_proj.weight"


def with_tensors(folder, dst, tensors: dict) -> object:
    """A copy of the model in `folder` with `tensors` written into its safetensors too."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dst)
    weights = load_file(dst / "model.safetensors")
    save_file(weights | {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()},
              dst / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    return dst


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict:
    """One-layer tiny Llamas (base, two fine-tunes), as they are (`plain`) and holding an
    int64 buffer and a bool mask, the same in every model (`buffers`), one whose mask
    differs (`other_mask`), tensors of shape (0, 8) and (8, 0) (`empty`), of shape
    (8, 0) alone (`columns`), and ft1 with 60% of a matrix NaN (`nan`)."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("odd")
    plain = {"base": make_model(root / "base", seed=0, layers=1)}
    for i in (1, 2):
        plain[f"ft{i}"] = make_model(root / f"ft{i}", seed=i, base=plain["base"], layers=1)
    ids, mask = torch.arange(16, dtype=torch.int64).unsqueeze(0), torch.tensor([True, False, True])
    buffers = {k: with_tensors(v, root / f"{k}-buffers", {POSITION_IDS: ids, MASK: mask}) for k, v in plain.items()}
    other = with_tensors(plain["ft2"], root / "ft2-other-mask", {POSITION_IDS: ids, MASK: ~mask})
    empty = {
        k: with_tensors(v, root / f"{k}-empty", {EMPTY_ROWS: torch.zeros(0, 8), EMPTY_COLUMNS: torch.zeros(8, 0)})
        for k, v in plain.items()
    }
    columns = {k: with_tensors(v, root / f"{k}-columns", {EMPTY_COLUMNS: torch.zeros(8, 0)}) for k, v in plain.items()}
    weights = load_tensors(plain["ft1"])
    damaged = weights[Q].clone()
    damaged[torch.rand(damaged.shape, generator=torch.Generator().manual_seed(0)) < 0.6] = float("nan")
    nan = with_tensors(plain["ft1"], root / "ft1-nan", {Q: damaged})
    return {
        "plain": plain, "buffers": buffers, "other_mask": other, "empty": empty, "columns": columns, "nan": nan,
    }  # fmt: skip


def odd_recipe(tmp_path, models: dict, method: str, params: str = "", name: str = "recipe.toml"):
    sources = "".join(f'{k} = {{ path = "{v}" }}\n' for k, v in models.items())
    base = "" if method == "linear" else 'base = "base"\n'
    inputs = '[{ model = "ft1" }]' if method == "slerp" else '[{ model = "ft1" }, { model = "ft2" }]'
    path = tmp_path / name
    path.write_text(
        f'[package]\nname = "odd"\nversion = "0.1.0"\n\n[sources]\n{sources}\n'
        f'[steps.m]\nmethod = "{method}"\n{base}inputs = {inputs}\n{params}\n'
    )
    return path


CASES = [
    ("ties", "params = { weight = 0.5, density = 0.5 }"),  # fused kernels
    ("slerp", "params = { t = 0.3 }"),
    ("linear", "params = { weight = 0.5 }"),
    ("task_arithmetic", 'params = { weight = 0.5 }\ndtype = "bfloat16"'),
]


@pytest.mark.parametrize(("method", "params"), CASES, ids=[c[0] for c in CASES])
def test_integer_and_bool_tensors_are_copied_and_the_rest_merged_as_without_them(odd, tmp_path, method, params):
    """An int64 buffer and a bool mask every model holds alike are the base's (or first
    input's) bytes in the output, in their dtype (they crashed the build: torch has no
    `I64`); every other tensor is what the same step makes of the models without them,
    and transformers loads the output."""
    from transformers import AutoModelForCausalLM

    from mergepkg.api import validate

    path = odd_recipe(tmp_path, odd["buffers"], method, params)
    validate(path)
    (out,) = build_recipe(path, out=tmp_path / "out").outputs.values()
    plain_path = odd_recipe(tmp_path, odd["plain"], method, params, "plain.toml")
    (plain,) = build_recipe(plain_path, out=tmp_path / "plain").outputs.values()
    tensors, expected, given = load_tensors(out), load_tensors(plain), load_tensors(odd["buffers"]["base"])
    for name in (POSITION_IDS, MASK):
        assert tensors[name].dtype == given[name].dtype and bits(tensors[name]) == bits(given[name])
    assert sorted(tensors) == sorted([*expected, POSITION_IDS, MASK])
    assert all(bits(tensors[k]) == bits(v) for k, v in expected.items())
    AutoModelForCausalLM.from_pretrained(out)


def bits(t: torch.Tensor) -> bytes:
    return bytes(t.reshape(-1).view(torch.uint8).numpy())


def test_integer_tensors_that_differ_are_a_located_error(odd, tmp_path):
    """A bool mask that one input holds otherwise: no sum of bools means anything, and which
    model's to take would be a guess. Known only once the values are read (validate reads
    headers: dtypes and shapes agree)."""
    from mergepkg.errors import MergeError

    models = odd["buffers"] | {"ft2": odd["other_mask"]}
    path = odd_recipe(tmp_path, models, "ties", "params = { weight = 0.5, density = 0.5 }")
    with pytest.raises(MergeError, match="'base' and 'ft2' hold different values in this bool tensor") as e:
        build_recipe(path, out=tmp_path / "out")
    assert e.value.tensor == MASK and e.value.key == "steps.m"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("method", "params"), CASES, ids=[c[0] for c in CASES])
def test_tensors_of_no_entries_merge_to_tensors_of_no_entries(odd, tmp_path, method, params):
    """Shapes (0, 8) and (8, 0): every step with a base divided by zero sampling their norms
    (MP301); mergekit writes them empty, and so does mergepkg. transformers loads the output."""
    from transformers import AutoModelForCausalLM

    (out,) = build_recipe(odd_recipe(tmp_path, odd["empty"], method, params), out=tmp_path / "out").outputs.values()
    tensors = load_tensors(out)
    assert tensors[EMPTY_ROWS].shape == (0, 8) and tensors[EMPTY_COLUMNS].shape == (8, 0)
    AutoModelForCausalLM.from_pretrained(out)


def test_a_method_that_cannot_take_a_tensor_is_a_located_error(odd, tmp_path):
    """arcee_fusion on (8, 0) (its row maximum has no entries; mergekit fails too): an
    IndexError inside a method is a MergeError naming the step and tensor, not a traceback."""
    from mergepkg.errors import MergeError

    models = {k: odd["columns"][k] for k in ("base", "ft1")}
    path = odd_recipe(tmp_path, models, "slerp").read_text().replace('"slerp"', '"arcee_fusion"')
    (tmp_path / "fusion.toml").write_text(path)
    with pytest.raises(MergeError, match="arcee_fusion failed: amax") as e:
        build_recipe(tmp_path / "fusion.toml", out=tmp_path / "out")
    assert e.value.key == "steps.m" and e.value.tensor == EMPTY_COLUMNS


@pytest.mark.parametrize("method", ["ties", "sce"])
def test_a_task_vector_mostly_nan_merges_as_mergekit_and_warns(odd, tmp_path, method):
    """ties and sce over a model whose matrix is 60% NaN: the build finishes with MP302
    (before: IndexError or `kthvalue(): selected number k out of range`, and no warning),
    and that tensor is what mergekit's method makes of the same tensors."""
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup
    from transformers import AutoModelForCausalLM

    models = {"base": odd["plain"]["base"], "ft1": odd["nan"], "ft2": odd["plain"]["ft2"]}
    params = "params = { density = 0.5, weight = 1.0 }" if method == "ties" else "params = { select_topk = 0.5 }"
    report = build_recipe(odd_recipe(tmp_path, models, method, params), out=tmp_path / "out")
    assert [(p.code, p.key, p.tensor) for p in report.pitfalls] == [("MP302", "steps.m.inputs[0]", Q)]
    (out,) = report.outputs.values()
    merged = load_tensors(out)[Q]
    inputs = [load_tensors(models[m])[Q] for m in ("base", "ft1", "ft2")]
    group = TensorGroup.from_tensors(inputs, base_index=0, name=Q)
    theirs_params = {"density": 0.5, "weight": 1.0} if method == "ties" else {"select_topk": 0.5}
    (theirs,) = get(method)((group,), parameters=theirs_params, dtype=torch.float32)
    nan = theirs.isnan()
    assert torch.equal(merged.isnan(), nan) and torch.equal(merged.masked_fill(nan, 0), theirs.masked_fill(nan, 0))
    AutoModelForCausalLM.from_pretrained(out)
