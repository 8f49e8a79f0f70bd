"""builder/describe.py: every step laid out from its sources, as `validate` checks a
recipe; `status(use_store=False)` is the same."""

from __future__ import annotations

from mergepkg.builder.describe import describe
from mergepkg.builder.status import status
from mergepkg.recipe.parse import load_recipe
from mergepkg.store.session import Session

RECIPE = """
    [steps.top]
    method = "ties"
    base = "base"
    inputs = [{ model = "ft1", weight = 0.5, density = 0.7 }, { model = "mix", weight = 0.5 }]
    [steps.mix]
    method = "linear"
    inputs = [{ model = "ft2", weight = 0.3 }, { model = "ft3", weight = 0.7 }]
"""


def test_every_planned_step_is_laid_out_and_nothing_is_stored(write_recipe):
    r = load_recipe(write_recipe(RECIPE))
    st = describe(r, Session())
    assert list(st.steps) == ["mix", "top"]  # dependencies first
    assert all(s.layout is not None and s.stored is None and s.state == "build" for s in st.steps.values())
    assert st.steps["top"].layout.step.models == ("base", "ft1", "mix")
    assert st.to_build == list(st.steps.values()) and st.to_pull == [] and st.warnings == []


def test_status_without_the_store_is_describe(write_recipe):
    r = load_recipe(write_recipe(RECIPE))
    a, b = describe(r, Session()), status(r, Session(), use_store=False)
    assert a.steps == b.steps and a.pitfalls == b.pitfalls and a.resolution.keys == b.resolution.keys
