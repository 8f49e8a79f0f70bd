"""MP301 and MP302, seen by the engine while a step streams: a model not fine-tuned from
the base, NaN and inf in an input; and `deny_warnings` failing the build before the step
is stored. Builds (torch): slow."""

from __future__ import annotations

import pytest
import torch
from helpers import build_recipe
from pitfall_models import recipe, stub_model

from mergepkg.engine.values import BLOCK, FOREIGN_RATIO, SAMPLE, _counts, _sample
from mergepkg.pitfalls.pitfall import WarningsDenied

pytestmark = pytest.mark.slow

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def stubs(tmp_path):
    root = tmp_path / "models"
    base = stub_model(root / "base", seed=0)
    return {
        "base": base,
        "ft": stub_model(root / "ft", seed=1, like=base),  # a fine-tune: its task vector is 5% of the base
        "noisy": stub_model(root / "noisy", seed=2, like=base, delta=0.02),  # as large as the base: 1.0
        "other": stub_model(root / "other", seed=3),  # trained from elsewhere: sqrt(2) = 1.41
        "nan": stub_model(root / "nan", seed=4, like=base, poison={"model.layers.1.mlp.up_proj.weight": NAN}),
        "inf": stub_model(root / "inf", seed=5, like=base, poison={"model.norm.weight": -INF}),
    }


def task_arithmetic(*inputs: str) -> str:
    listed = ", ".join(f'{{ model = "{m}", weight = 0.5 }}' for m in inputs)
    return f'[steps.m]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{listed}]\n'


def test_mp301_fires_past_the_ratio_and_not_for_fine_tunes(tmp_path, stubs):
    path = recipe(tmp_path, stubs, task_arithmetic("ft", "noisy", "other"))
    report = build_recipe(path, tmp_path / "out")
    (p,) = report.pitfalls
    assert p.code == "MP301" and p.key == "steps.m.inputs[2]" and p.file == str(path)
    assert "'other' minus the base 'base' is 1.4" in p.message and "times as large as 'base'" in p.message
    assert 1.0 < FOREIGN_RATIO < 2**0.5


def test_mp301_only_where_a_base_is_merged_against(tmp_path, stubs):
    body = (
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "base", weight = 0.5 }, { model = "other", weight = 0.5 }]\n'
    )
    assert build_recipe(recipe(tmp_path, stubs, body), tmp_path / "out").pitfalls == []


def test_mp302_names_the_model_the_tensor_and_the_counts(tmp_path, stubs):
    path = recipe(tmp_path, stubs, task_arithmetic("ft", "nan", "inf"))
    report = build_recipe(path, tmp_path / "out")
    assert [(p.code, p.key) for p in report.pitfalls] == [
        ("MP302", "steps.m.inputs[1]"),
        ("MP302", "steps.m.inputs[2]"),
    ]
    nan, inf = report.pitfalls
    assert nan.message.startswith("'nan' tensor model.layers.1.mlp.up_proj.weight: 1 NaN among its 128 values")
    assert inf.message.startswith("'inf' tensor model.norm.weight: 1 inf among its 8 values")
    assert nan.tensor == "model.layers.1.mlp.up_proj.weight"


def test_mp302_in_blocks_of_rows_under_a_memory_limit(tmp_path, stubs, monkeypatch):
    from mergepkg.engine.memory import Budget

    monkeypatch.setattr(Budget, "row_block", lambda self, layout, infos, out: 3 if out.info.shape[0] > 3 else None)
    body = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft", weight = 0.5 }, { model = "nan", weight = 0.5 }]\n'
    (p,) = build_recipe(recipe(tmp_path, stubs, body), tmp_path / "out").pitfalls
    assert p.code == "MP302" and "1 NaN among its 128 values" in p.message


@pytest.mark.parametrize("block", [None, 3])
def test_mp302_counts_a_layer_read_twice_once(tmp_path, stubs, monkeypatch, block):
    """A frankenmerge reuses layer 1: its NaN is read for two output layers (whole, or in
    blocks of rows) and is still one NaN among the tensor's 128 values."""
    from mergepkg.engine.memory import Budget

    monkeypatch.setattr(Budget, "row_block", lambda self, layout, infos, out: block)
    slices = '{ sources = [{ model = "nan", layers = [0, 2] }] }, { sources = [{ model = "nan", layers = [1, 2] }] }'
    body = f'[steps.m]\nmethod = "passthrough"\nslices = [{slices}]\n'
    (p,) = build_recipe(recipe(tmp_path, stubs, body), tmp_path / "out").pitfalls
    assert "model.layers.1.mlp.up_proj.weight: 1 NaN among its 128 values;" in p.message
    assert "more of its tensors" not in p.message  # one tensor, however often it is read


def test_allow_silences_value_warnings(tmp_path, stubs):
    path = recipe(tmp_path, stubs, task_arithmetic("other", "nan"), allow='"MP301", "MP302"')
    assert build_recipe(path, tmp_path / "out").pitfalls == []


def test_deny_warnings_fails_the_step_before_it_is_stored(tmp_path, stubs, mergepkg_home):
    from mergepkg.builder.build import build
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.store.session import Session

    path = recipe(tmp_path, stubs, task_arithmetic("ft", "other"))
    with pytest.raises(WarningsDenied) as e:
        build(load_recipe(path), Session(), out=tmp_path / "out", deny_warnings=True)
    assert "1 warning (MP301) and --deny-warnings" in e.value.message and e.value.key == "steps.m"
    assert not (tmp_path / "out").exists() and not path.with_suffix(".lock").exists()
    store = mergepkg_home / "store"
    assert not store.exists() or not any(store.iterdir())


def test_the_sample_is_blocks_spread_over_the_columns():
    small = torch.randn(10, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_sample(small), small.reshape(-1))  # a small matrix is measured whole
    t = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    s = _sample(t)
    assert s.shape == (SAMPLE // BLOCK, BLOCK)
    starts = [(b.data_ptr() - t.data_ptr()) // t.element_size() for b in s]
    assert starts[-1] + BLOCK <= t.numel()  # inside the tensor
    assert len({start % 4096 for start in starts}) == len(starts)  # each block in another column
    # the sample stands for the whole: a task vector's squared norm within 3 %
    delta = t * 0.01
    estimate = float(_sample(delta).double().square().sum()) * delta.numel() / SAMPLE
    assert abs(estimate / float(delta.double().square().sum()) - 1) < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_counts_are_exact_and_free_of_false_alarms(dtype):
    t = torch.zeros(1000, dtype=dtype)
    assert _counts(t) == (0, 0)
    t[3], t[7], t[9] = NAN, INF, -INF
    assert _counts(t) == (1, 2)
    # finite entries whose sum passes the dtype's range: none
    big = torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)
    assert _counts(big) == (0, 0)
