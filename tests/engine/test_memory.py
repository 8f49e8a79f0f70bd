"""`--max-memory`: the engine reads ahead less and merges elementwise methods in blocks
of rows, and the bytes do not change."""

from __future__ import annotations

import pytest
from helpers import THREE, build_recipe, load_tensors

from mergepkg.cli.app import main
from mergepkg.engine import memory
from mergepkg.engine.memory import CHUNK_WORK, Budget
from mergepkg.errors import BuildError
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import TensorInfo
from mergepkg.layout.types import OutputTensor, Part

TIES = """
[steps.t]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.3 }]
"""


@pytest.fixture
def row_reads(monkeypatch):
    """Counts ModelReader.get_rows calls (the real method still runs)."""
    calls = []
    real = ModelReader.get_rows

    def spy(self, name, start, stop):
        calls.append((name, start, stop))
        return real(self, name, start, stop)

    monkeypatch.setattr(ModelReader, "get_rows", spy)
    return calls


def test_row_blocks_give_the_same_bytes(write_recipe, tmp_path, row_reads, monkeypatch):
    path = write_recipe(THREE + TIES)
    whole = build_recipe(path, tmp_path / "whole")
    assert not row_reads
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "home2"))  # an empty store: build again
    # tiny models: a tiny budget, all of it the engine's
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(memory, "CHUNK_WORK", 0)
    limited = build_recipe(path, tmp_path / "limited", max_memory=4096)
    assert row_reads  # linear and task_arithmetic were merged in blocks of rows
    assert all(stop - start < 64 for _, start, stop in row_reads)
    for name in whole.outputs:
        a, b = load_tensors(whole.outputs[name]), load_tensors(limited.outputs[name])
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert sorted(whole.built) == sorted(limited.built)


def test_cli_takes_max_memory_and_checks_it(write_recipe, tmp_path, capsys):
    path = write_recipe(THREE)
    assert main(["build", str(path), "--out", str(tmp_path / "o"), "--max-memory", "4GB", "-q"]) == 0
    assert main(["build", str(path), "--max-memory", "lots", "-q"]) == 2
    assert "--max-memory" in capsys.readouterr().err
    (tmp_path / "recipe.toml").write_text(path.read_text().replace("0.5", "0.25"))  # something to build
    assert main(["build", str(path), "--max-memory", "10MB", "-q"]) == 1
    message = capsys.readouterr().err
    assert "leaves too little" in message and "allow at least" in message


def out_tensor(rows: int, cols: int, inputs: int = 2) -> tuple[OutputTensor, dict]:
    info = TensorInfo("BF16", (rows, cols))
    infos = {f"m{i}": {"w": info} for i in range(inputs)}
    return OutputTensor("w", info, None, tuple(Part(f"m{i}", "w") for i in range(inputs))), infos


class _Method:
    def __init__(self, rows: bool, stream=True, random=False, fp32=True, name="m"):
        self.rows, self.stream, self.random, self.fp32, self.name = rows, stream, random, fp32, name


class _Layout:
    def __init__(self, method, tensors=()):
        self.method, self.tensors = method, tensors
        self.step = type("S", (), {"dtype": "float32", "name": "s"})()


def test_budget_blocks_only_what_does_not_fit():
    out, infos = out_tensor(32000, 2048)  # 131 MB per bf16 input
    elementwise, whole_tensor = _Layout(_Method(rows=True)), _Layout(_Method(rows=False))
    assert Budget(None).row_block(elementwise, infos, out) is None
    assert Budget(10**10).row_block(elementwise, infos, out) is None  # fits
    block = Budget(200 * 10**6).row_block(elementwise, infos, out)
    assert block is not None and 0 < block < 32000
    per_row = (Budget(None).footprint(elementwise, infos, out) - CHUNK_WORK) // 32000
    assert block * per_row <= 200 * 10**6 // 4
    assert Budget(200 * 10**6).row_block(whole_tensor, infos, out) is None  # needs the whole tensor
    assert not Budget(200 * 10**6).read_ahead(elementwise, infos, out, out)
    assert Budget(None).read_ahead(whole_tensor, infos, out, out)
    assert Budget(None).results_waiting == 2 and Budget(1).results_waiting == 1


def test_a_tensor_s_inputs_and_result_are_the_floor_but_a_method_s_work_must_fit():
    """DELLA held 2.7 times --max-memory without a word: its draws and whole copies are work
    beside the inputs and result, which a limit must leave room for, or be an error."""
    out, infos = out_tensor(32000, 2048)  # 131 MB per bf16 input, 65.5M entries
    streamed = _Layout(_Method(rows=False), (out,))  # the fused task-vector family: chunks of work
    whole = _Layout(_Method(rows=False, stream=None, random=True, name="della"), (out,))
    small = Budget(300 * 10**6)  # below the inputs and result (393 MB): the documented floor
    small.check_fits([streamed], infos, 700 * 10**6)
    with pytest.raises(BuildError) as e:
        small.check_fits([whole], infos, 700 * 10**6)
    assert "della merges w whole" in e.value.message and "allow at least" in e.value.hint
    enough = int(e.value.hint.split()[-2]) * 10**6
    Budget(int(small.limit + (enough - 700 * 10**6) * memory.HEADROOM)).check_fits([whole], infos, enough)
    Budget(None).check_fits([whole], infos, 1)


def test_the_budget_is_measured_once_for_a_build_of_many_steps(write_recipe, tmp_path, monkeypatch, capsys):
    """Resident memory creeps up from step to step (freed memory the allocator keeps): a
    budget taken at each step would refuse a later one. It is taken once, before the first."""
    readings = []
    real = memory.resident_bytes

    def creeping() -> int:
        readings.append(real())
        return readings[0] + 60_000_000 * (len(readings) - 1)  # 60 MB more at every reading

    monkeypatch.setattr(memory, "resident_bytes", creeping)
    steps = "".join(
        f'[steps.s{i}]\nmethod = "linear"\ninputs = [{{ model = "{"ft1" if i == 0 else f"s{i - 1}"}", weight = 1.0 }}, '
        f'{{ model = "ft2", weight = 0.5 }}]\n'
        for i in range(13)
    )
    path = write_recipe(steps)
    limit = real() + 4 * CHUNK_WORK + 200_000_000  # room for the first step's budget, not for creeping
    code, _, err = main_with(capsys, "build", path, "--out", tmp_path / "o", "-q", "--max-memory", str(limit))
    assert code == 0, err
    assert err.count("built ") == 13 and len(readings) == 1, (len(readings), err)


def main_with(capsys, *args):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err
