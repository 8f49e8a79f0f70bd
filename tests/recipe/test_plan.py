"""The DAG: stable order, cycles named, only what the outputs need."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from mergepkg.errors import CycleError
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.parse import load_recipe, parse_recipe
from mergepkg.recipe.plan import make_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "recipes" / "example.toml"


def test_dependency_order_follows_recipe_order_where_free(recipe_file):
    r = load_recipe(
        recipe_file(
            """
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
    """.replace("[package_outputs_marker]", "")
        )
    )
    plan = make_plan(r, ("final",))
    assert plan.order == ("right", "left", "final")
    assert plan.sources_used() == ["ft1", "ft2"]


def test_cycle_is_named(recipe_file):
    path = recipe_file("""
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


def test_tied_and_untied_models_name_the_setting(tmp_path, models, write_recipe):
    """One model ties its head to its embeddings (no lm_head.weight), the other does not:
    the error says so rather than only naming the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mergepkg.errors import ModelMismatchError
    from mergepkg.layout.steps import lay_out
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.resolve.resolution import resolve
    from mergepkg.store.session import Session

    tied = tmp_path / "tied"
    shutil.copytree(models["ft1"], tied)
    tensors = load_file(tied / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tied / "model.safetensors", metadata={"format": "pt"})
    for inputs in (
        '[{ model = "tied", weight = 1.0 }, { model = "ft2", weight = 1.0 }]',
        '[{ model = "ft2", weight = 1.0 }, { model = "tied", weight = 1.0 }]',
    ):
        path = write_recipe(
            f'[sources.tied]\npath = "{tied}"\n[steps.m]\nmethod = "linear"\ninputs = {inputs}\n',
            name=f"r{len(inputs) % 7}.toml",
        )
        res = resolve(load_recipe(path), Session())
        with pytest.raises(ModelMismatchError, match="'tied' ties its output head to its input embeddings"):
            lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})


@pytest.mark.slow
def test_networkx_is_imported_by_the_first_use_of_the_graph_not_by_the_plan():
    """make_plan orders the steps without networkx (validate and plan never import it);
    Plan.graph, the networkx DAG, is made when first read."""
    probe = (
        "import sys\n"
        "from mergepkg.recipe.plan import make_plan\n"
        "from mergepkg.recipe.parse import load_recipe\n"
        f"plan = make_plan(load_recipe({str(EXAMPLE)!r}))\n"
        "before = 'networkx.classes' in sys.modules\n"
        "plan.graph.number_of_nodes()\n"
        "print(before, 'networkx.classes' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "True"]


def _random_recipe(seed: int, folder: Path) -> Recipe:
    """Sources and steps in a shuffled recipe order, each step reading earlier models
    (by construction, so acyclic), outputs a few of the steps."""
    rng = random.Random(seed)
    sources = [f"src{i}" for i in range(rng.randint(1, 4))]
    names = [f"s{i}" for i in range(rng.randint(1, 14))]
    reads = {
        n: rng.sample([*sources, *names[:i]], rng.randint(1, min(3, len(sources) + i))) for i, n in enumerate(names)
    }
    shuffled = rng.sample(names, len(names))
    outputs = rng.sample(names, rng.randint(1, min(3, len(names))))
    text = f'[package]\nname = "r"\nversion = "0.1.0"\noutputs = {outputs!r}\n[sources]\n'.replace("'", '"')
    text += "".join(f'{s} = {{ path = "models/{s}" }}\n' for s in sources)
    for n in shuffled:
        inputs = ", ".join(f'{{ model = "{m}", weight = 1.0 }}' for m in reads[n])
        text += f'[steps.{n}]\nmethod = "linear"\ninputs = [{inputs}]\n'
    for src in sources:
        (folder / "models" / src).mkdir(parents=True)
    return parse_recipe(text, folder / "r.toml")


@pytest.mark.parametrize("seed", range(40))
def test_order_and_graph_are_networkx_s(seed, tmp_path):
    """The plan's order is networkx's lexicographical topological sort by recipe order,
    restricted to the outputs' ancestors, and its graph the DAG the plan always had."""
    import networkx as nx

    r = _random_recipe(seed, tmp_path)
    rank = {n: i for i, n in enumerate([*r.sources, *r.steps])}
    graph = nx.DiGraph()
    graph.add_nodes_from(rank)
    graph.add_edges_from((m, s.name) for s in r.steps.values() for m in s.models)
    wanted = set().union(*({t} | nx.ancestors(graph, t) for t in r.outputs))
    expected = [
        n for n in nx.lexicographical_topological_sort(graph, key=rank.__getitem__) if n in wanted and n in r.steps
    ]
    plan = make_plan(r)
    assert list(plan.order) == expected
    assert list(plan.graph.nodes) == list(graph.nodes) and list(plan.graph.edges) == list(graph.edges)
    assert all(plan.inputs(n) == list(graph.predecessors(n)) for n in r.steps)
    assert all(plan.upstream(n) == nx.ancestors(graph, n) for n in graph)
    used = [n for n in r.sources if any(s in plan.order for s in graph.successors(n))]
    assert plan.sources_used() == used
