"""bench/run.py and bench/gpu.py end to end on tiny models: the scripts that print this
project's speed figures (docs/performance.md) still run, with mergekit beside mergepkg, the
floor and the first-build rows, and the GPU script (issue 20's goal 4, run where a device is
lent) in its CPU mode. The figures themselves are not checked: these machines are noisy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import make_model

from mergepkg.io.tensors import parse_header

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    """The stdout of `python bench/SCRIPT ARGS...` run from the repository root; it must succeed."""
    command = [sys.executable, f"bench/{script}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout


@pytest.mark.slow
def test_the_benchmark_runs_both_tools_and_prints_its_tables(tmp_path):
    models = tmp_path / "models"  # the layout bench/run.py generates, tiny: it keeps models it finds
    base = make_model(models / "base", seed=0, dtype=torch.bfloat16)
    for i, name in enumerate(("ft1", "ft2", "ft3"), start=1):
        make_model(models / name, seed=i, base=base, delta=0.002, dtype=torch.bfloat16)
    rows = tmp_path / "rows.json"
    out = bench("run.py", "--models", str(models), "--only", "linear,ties", "--repeat", "1", "--json", str(rows))
    assert "| linear |" in out and "| ties |" in out  # the ratio table, one row a merge
    assert "linear / that floor" in out  # the floor, with and without torch
    assert "first / warm" in out and "`--local-dir` / warm" in out  # the first-build rows (bench/first_build.py)
    assert "imports torch: False, transformers: False" in out  # the no-op rebuild
    measured = json.loads(rows.read_text())["rows"]
    assert [row["merge"] for row in measured] == ["linear", "ties"]
    for row in measured:
        assert row["digest"].startswith("sha256:") and row["mergepkg_s"] > 0 and row["mergekit_s"] > 0


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    """`bench/gpu.py --shape tiny --device cpu`: the same-bytes check (here against one
    thread) and the speed rounds beside mergekit, so the script a device machine runs is
    ready to run."""
    rows = tmp_path / "gpu.json"
    out = bench(
        "gpu.py",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--models",
        str(tmp_path / "models"),
        "--repeat",
        "1",
        "--json",
        str(rows),
    )
    assert "Same bytes:" in out and "Speed (tiny)" in out
    measured = json.loads(rows.read_text())
    assert [c["merge"] for c in measured["checks"]] == ["linear", "ties", "dare_ties"]
    assert all(c["equal"] and c["cpu"]["digest"] == c["other"]["digest"] for c in measured["checks"])
    assert [row["merge"] for row in measured["rows"]] == ["linear", "ties"]
    assert all(row["digest"].startswith("sha256:") and row["mergekit_s"] > 0 for row in measured["rows"])


@pytest.mark.slow  # transformers' Llama modules load for it: 2.7 s
def test_the_model_set_takes_its_layer_count(tmp_path, monkeypatch):
    """`bench/run.py --layers N` makes its model set N layers deep (here at a tiny width)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)  # a module of its own: nothing named `run` is left imported
    tiny = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    monkeypatch.setattr(run, "SHAPE", {**run.SHAPE, **tiny})
    run.make_models(tmp_path, layers=3)
    for name in run.MODELS:
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 16
        path = tmp_path / name / "model.safetensors"
        with open(path, "rb") as f:
            header, _ = parse_header(f, path)
        layers = {key.split(".")[2] for key in header if key.startswith("model.layers.")}
        assert layers == {"0", "1", "2"}
