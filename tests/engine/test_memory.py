"""`--max-memory`: the engine reads ahead less and merges elementwise methods in blocks
of rows, and the bytes do not change."""

from __future__ import annotations

import math

import pytest
from helpers import THREE, build_recipe, load_tensors

from mergepkg.cli.app import main
from mergepkg.engine import memory
from mergepkg.engine.memory import CHUNK_WORK, Budget
from mergepkg.errors import BuildError
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import TensorInfo, promote_codes
from mergepkg.layout.types import OutputTensor, Part, RowMap

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
    path = write_recipe(THREE)
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


def limited(path, home, monkeypatch, max_memory: int | None):
    """`path` built in an empty store `home`, under `max_memory` with all of it the engine's."""
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(memory, "CHUNK_WORK", 0)
    return build_recipe(path, max_memory=max_memory)


UNION = """
[steps.s]
method = "linear"
inputs = [{ model = "base", weight = 0.5 }, { model = "chat", weight = 0.5 }]
tokenizer = { source = "union" }
"""


def test_a_union_vocabulary_is_held_whole_and_refused_where_it_does_not_fit(
    write_recipe, chat, tmp_path, row_reads, monkeypatch
):
    """linear on a union vocabulary under 530MB peaked at 945 MB without a word: its
    embedding and head were read whole and aligned, while the check took them for merged in
    blocks. A limit that cannot hold them is refused before anything is built; the limit
    the hint gives builds, with the bytes of a build without a limit."""
    path = write_recipe(UNION + f'\n[sources.chat]\npath = "{chat}"\n')
    whole = limited(path, tmp_path / "h0", monkeypatch, None)
    with pytest.raises(BuildError) as e:  # the old code built this, blocks and all
        limited(path, tmp_path / "h1", monkeypatch, 4096)
    assert "whole" in e.value.message and "rows aligned" in e.value.message
    hinted = int(e.value.hint.split()[-2]) * 10**6
    built = limited(path, tmp_path / "h2", monkeypatch, hinted)
    assert built.lock.steps["s"].digest == whole.lock.steps["s"].digest
    assert not {name for name, _, _ in row_reads} & {"model.embed_tokens.weight", "lm_head.weight"}


def test_a_copy_builds_under_a_limit_its_phantom_work_was_refused(write_recipe, models, tmp_path, monkeypatch):
    """passthrough was charged converted copies and temporaries it never makes (four times
    its largest tensor): refused under a limit it keeps to. It builds there, the same bytes."""
    from safetensors import safe_open

    with safe_open(models["ft1"] / "model.safetensors", framework="pt") as f:
        n = max(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    path = write_recipe('[steps.p]\nmethod = "passthrough"\ninputs = ["ft1"]\n')
    whole = limited(path, tmp_path / "h0", monkeypatch, None)
    # a budget of 12n: input and result (8n) fit; the old 16n of work beside them did not
    built = limited(path, tmp_path / "h1", monkeypatch, 16 * n)
    assert built.lock.steps["p"].digest == whole.lock.steps["p"].digest


def test_a_whole_tensor_method_that_does_not_fit_is_refused(write_recipe, tmp_path, monkeypatch):
    """TIES under 700MB peaked at 910 MB without a word: a limit below a tensor's inputs and
    result was taken as their floor. Refused now, before anything is built."""
    path = write_recipe(THREE + TIES)
    with pytest.raises(BuildError) as e:
        limited(path, tmp_path / "h1", monkeypatch, 4096)
    assert "step 't': ties merges" in e.value.message and "allow at least" in e.value.hint
    assert not list((tmp_path / "h1").glob("**/*.safetensors"))


def out_tensor(rows: int, cols: int, inputs: int = 2) -> tuple[OutputTensor, dict]:
    info = TensorInfo("BF16", (rows, cols))
    infos = {f"m{i}": {"w": info} for i in range(inputs)}
    return OutputTensor("w", info, None, tuple(Part(f"m{i}", "w") for i in range(inputs))), infos


class _Method:
    def __init__(self, rows: bool, stream=True, random=False, fp32=True, name="m", base="required", max_inputs=None):
        self.rows, self.stream, self.random, self.fp32, self.name = rows, stream, random, fp32, name
        self.base, self.max_inputs, self.copies = base, max_inputs, False


class _Layout:
    def __init__(self, method, tensors=(), dtype="float32"):
        self.method, self.tensors = method, tensors
        self.step = type("S", (), {"dtype": dtype, "name": "s"})()


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


def test_a_tensor_merged_whole_must_fit_inputs_result_and_work():
    """DELLA held 2.7 times --max-memory without a word: its draws and whole copies are work
    beside the inputs and result. TIES under 700MB peaked at 910 MB without a word too: its
    inputs and result alone were more than the budget. Both are refused before anything is
    built, with the limit that passes."""
    out, infos = out_tensor(32000, 2048)  # 131 MB per bf16 input, 65.5M entries
    streamed = _Layout(_Method(rows=False, name="ties"), (out,))  # the fused task-vector family: chunks of work
    whole = _Layout(_Method(rows=False, stream=None, random=True, name="della"), (out,))
    small = Budget(300 * 10**6)  # below the inputs and result (393 MB)
    for layout, name in ((streamed, "ties"), (whole, "della")):
        with pytest.raises(BuildError) as e:
            small.check_fits([layout], infos, 700 * 10**6)
        assert f"{name} merges w whole" in e.value.message and "allow at least" in e.value.hint
        enough = int(e.value.hint.split()[-2]) * 10**6
        fits = Budget(int(small.limit + (enough - 700 * 10**6) * memory.HEADROOM))
        assert fits.limit >= Budget(None).footprint(layout, infos, out)
        fits.check_fits([layout], infos, enough)
    Budget(400 * 10**6 + CHUNK_WORK).check_fits([streamed], infos, 1)  # inputs, result and a few chunks
    Budget(None).check_fits([whole], infos, 1)


def test_the_hinted_limit_passes_and_a_megabyte_less_does_not():
    """The hint came from the whole footprint while the check compared the work alone: DARE
    under 900MB was told 1601 MB. It is now the limit at which the check passes, rounded up."""
    out, infos = out_tensor(32000, 2048)
    layout = _Layout(_Method(rows=False, name="ties"), (out,))
    limit, used = 900 * 10**6, 375_300_000

    def budget(limit: int) -> Budget:
        return Budget(int((limit - used) * memory.HEADROOM))  # as for_process makes it

    with pytest.raises(BuildError) as e:
        budget(limit).check_fits([layout], infos, limit)
    hinted = int(e.value.hint.split()[-2]) * 10**6
    budget(hinted).check_fits([layout], infos, hinted)
    with pytest.raises(BuildError):
        budget(hinted - 10**6).check_fits([layout], infos, hinted - 10**6)


def test_a_streamed_random_method_holds_no_whole_draws():
    """dare_ties' draws are made chunk by chunk (by entry index): 5 bytes an entry per input
    were charged that the stream never holds, and DARE under 900MB was refused."""
    out, infos = out_tensor(32000, 2048, inputs=3)
    dare = _Layout(_Method(rows=False, random=True, name="dare_ties"), (out,))
    assert Budget(None).work(dare, infos, out) == CHUNK_WORK
    della = _Layout(_Method(rows=False, stream=None, random=True, name="della"), (out,))
    assert Budget(None).work(della, infos, out) >= memory.WHOLE_DRAWS * 32000 * 2048  # its draws are whole


def test_a_copy_is_charged_no_work_it_does_not_do():
    """passthrough was charged whole converted copies and three temporaries (524 MB beside an
    embedding of 131 MB) and refused under 700MB, where it peaks at 0.45 GB. It returns its
    input: at most one conversion, none where the stored dtype is the step's."""
    copy = _Method(rows=False, stream=None, fp32=False, name="passthrough", base="none", max_inputs=1)
    n = 32000 * 1024
    f32 = TensorInfo("F32", (32000, 1024))
    out = OutputTensor("w", f32, None, (Part("m0", "w"),))
    infos = {"m0": {"w": f32}}
    for dtype in ("auto", "float32"):
        layout = _Layout(copy, (out,), dtype=dtype)
        assert Budget(None).work(layout, infos, out) == 0
        assert Budget(None).footprint(layout, infos, out) == 2 * f32.nbytes
    bf16 = TensorInfo("BF16", (32000, 1024))
    widened = OutputTensor("w", f32, None, (Part("m0", "w"),))  # bfloat16 stored, merged and saved in float32
    assert Budget(None).work(_Layout(copy, (widened,)), {"m0": {"w": bf16}}, widened) == 4 * n
    # a method that is no copy still holds its temporaries; converted copies only where needed
    linear = _Layout(_Method(rows=False, stream=None, base="none"), (out,))
    assert Budget(None).work(linear, infos, out) == 3 * 4 * n
    assert Budget(None).work(linear, {"m0": {"w": bf16}}, out) == 4 * 4 * n


def vocabulary(rows: int = 34000, own_rows: int = 32000, cols: int = 1024, dtypes=("F32", "F32")):
    """An embedding on a union vocabulary: the first part has `own_rows`, the second all
    `rows`; the first's missing rows are fallbacks (the second's rows)."""
    infos = {
        "m0": {"w": TensorInfo(dtypes[0], (own_rows, cols))},
        "m1": {"w": TensorInfo(dtypes[1], (rows, cols))},
    }
    row_map = RowMap(
        rows,
        (tuple(range(own_rows)) + (-1,) * (rows - own_rows), tuple(range(rows))),
        tuple((r, ("row", 1, r)) for r in range(own_rows, rows)),
    )
    info = TensorInfo(promote_codes(list(dtypes)), (rows, cols))
    return OutputTensor("w", info, None, (Part("m0", "w"), Part("m1", "w")), row_map=row_map), infos


def test_a_tensor_whose_rows_move_is_merged_whole_and_its_aligned_copies_count():
    """A union vocabulary's embedding was given a row block (linear is elementwise) but read
    whole and aligned, and so left out of the check: linear under 530MB peaked at 945 MB
    without a word. It is merged whole, its aligned copies are in its footprint, and a limit
    that cannot hold them is refused."""
    out, infos = vocabulary()
    linear = _Layout(_Method(rows=True, name="linear", base="none"), (out,))
    aligned = 34000 * 1024 * 4
    for limit in (10**8, 10**9, 10**11):
        assert Budget(limit).row_block(linear, infos, out) is None
    held = Budget(None).held(infos, out)
    assert held == [("F32", 34000 * 1024)] * 2
    # reading: the fallback rows, then each input let go once its aligned copy is made
    fill = 2000 * 1024 * 4
    assert Budget(None).loading(infos, out) == fill + max(
        infos["m0"]["w"].nbytes + infos["m1"]["w"].nbytes + aligned, infos["m1"]["w"].nbytes + 2 * aligned
    )
    need = Budget(None).footprint(linear, infos, out)
    assert need == 2 * aligned + out.info.nbytes + CHUNK_WORK  # merging: aligned copies, result, chunks
    with pytest.raises(BuildError) as e:
        Budget(need - 1).check_fits([linear], infos, 10**9)
    assert "linear merges w whole" in e.value.message and "rows aligned" in e.value.message
    Budget(need).check_fits([linear], infos, 10**9)
    assert not Budget(need).read_ahead(linear, infos, out, out)  # nor aligned beside it
    # bfloat16 beside float32: aligned in float32, the bfloat16 part's rows gathered then converted
    mixed, mixed_infos = vocabulary(dtypes=("BF16", "F32"))
    assert Budget(None).held(mixed_infos, mixed) == [("F32", 34000 * 1024)] * 2
    read = mixed_infos["m0"]["w"].nbytes + mixed_infos["m1"]["w"].nbytes
    assert Budget(None).loading(mixed_infos, mixed) == fill + read + aligned + 34000 * 1024 * (2 + 4)


def test_the_process_hint_is_rounded_up(monkeypatch):
    """525.3 MB needed was hinted as 525 MB, which was refused again."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 525_300_000 - 4 * CHUNK_WORK)
    with pytest.raises(BuildError) as e:
        memory.for_process(500 * 10**6)
    assert e.value.hint == "allow at least 526 MB"
    assert memory.for_process(526 * 10**6).limit


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
