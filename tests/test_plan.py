"""The DAG: stable order, cycles named, only what the outputs need."""

from __future__ import annotations

import pytest

from mergepkg.errors import CycleError
from mergepkg.parse import load_recipe
from mergepkg.plan import make_plan


def test_dependency_order_follows_recipe_order_where_free(write_recipe):
    r = load_recipe(write_recipe("""
        [steps.final]
        method = "linear"
        inputs = [{ model = "left", weight = 1 }, { model = "right", weight = 1 }]
        [steps.right]
        method = "passthrough"
        inputs = ["ft2"]
        [steps.left]
        method = "passthrough"
        inputs = ["ft1"]
        [steps.unused]
        method = "passthrough"
        inputs = ["ft3"]
        [package_outputs_marker]
    """.replace("[package_outputs_marker]", "")))
    plan = make_plan(r, ("final",))
    assert plan.order == ("right", "left", "final")
    assert plan.sources_used() == ["ft1", "ft2"]


def test_cycle_is_named(write_recipe):
    path = write_recipe("""
        [steps.a]
        method = "passthrough"
        inputs = ["b"]
        [steps.b]
        method = "linear"
        inputs = [{ model = "a", weight = 1 }, { model = "ft1", weight = 1 }]
        [steps.out]
        method = "passthrough"
        inputs = ["ft1"]
    """)
    with pytest.raises(CycleError) as info:
        make_plan(load_recipe(path))
    assert info.value.cycle == ["a", "b"]
    assert "a -> b -> a" in str(info.value)
    assert info.value.key == "steps.a" and info.value.line is not None
