"""Recipe -> plan: the DAG of steps (networkx) in a stable topological order.

Nodes are model names (sources and steps); an edge `a -> b` means step b reads a.
The order is the recipe's own order wherever dependencies allow, so the same recipe
always builds in the same order. A cycle is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mergepkg._lazy import lazy_import
from mergepkg.errors import CycleError
from mergepkg.recipe.model import Recipe

if TYPE_CHECKING:
    import networkx as nx
else:
    nx = lazy_import("networkx")  # imported by the first plan made (0.1-0.2 s): not by commands that make none


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    graph: nx.DiGraph
    order: tuple[str, ...]  # every step needed for the outputs, dependencies first

    def sources_used(self) -> list[str]:
        return [
            n for n in self.recipe.sources if n in self.graph and any(s in self.order for s in self.graph.successors(n))
        ]


def make_plan(recipe: Recipe, targets: tuple[str, ...] | None = None) -> Plan:
    graph = nx.DiGraph()
    rank = {name: i for i, name in enumerate([*recipe.sources, *recipe.steps])}
    graph.add_nodes_from(rank)
    for step in recipe.steps.values():
        for model in step.models:
            graph.add_edge(model, step.name)
    steps_only = graph.subgraph(recipe.steps)
    try:
        cycle = nx.find_cycle(steps_only)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _ in cycle]
        first = min(names, key=rank.__getitem__)  # start the message at the recipe's first step
        names = names[names.index(first) :] + names[: names.index(first)]
        key = f"steps.{names[0]}"
        raise CycleError(
            names,
            file=str(recipe.path),
            line=recipe.line_of(key),
            key=key,
            hint="a step cannot depend, directly or not, on itself",
        )
    wanted = set()
    for target in targets or recipe.outputs:
        wanted |= nx.ancestors(graph, target) | {target}
    order = tuple(
        n for n in nx.lexicographical_topological_sort(graph, key=rank.__getitem__) if n in wanted and n in recipe.steps
    )
    return Plan(recipe, graph, order)


def graph_parts(plan: Plan) -> tuple[list[str], list[tuple[str, str]]]:
    """What the `graph` command draws: the steps the plan builds, the models they read,
    and the edges between them (the registry's pages draw the same, as SVG)."""
    graph = plan.graph
    nodes = [n for n in graph.nodes if n in plan.order or any(s in plan.order for s in graph.successors(n))]
    kept = set(nodes)
    return nodes, [(a, b) for a, b in graph.edges if a in kept and b in kept]


def graph_text(plan: Plan, fmt: str = "mermaid") -> str:
    """The plan's DAG (the steps it builds and the models they read) as Mermaid or
    Graphviz DOT text, for docs."""
    if fmt not in ("mermaid", "dot"):
        raise ValueError(f"unknown graph format {fmt!r}: expected mermaid or dot")
    r = plan.recipe
    nodes, edges = graph_parts(plan)
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    if fmt == "mermaid":
        lines = ["graph LR"]
        for n in nodes:
            if n in r.sources:
                lines.append(f'  {ids[n]}(["{n}"])')
            else:
                lines.append(f'  {ids[n]}["{n}<br/>{r.steps[n].method}"]')
        lines += [f"  {ids[a]} --> {ids[b]}" for a, b in edges]
    else:
        lines = ["digraph recipe {", "  rankdir=LR;"]
        for n in nodes:
            shape = "ellipse" if n in r.sources else "box"
            text = n if n in r.sources else f"{n}\\n{r.steps[n].method}"
            lines.append(f'  {ids[n]} [label="{text}", shape={shape}];')
        lines += [f"  {ids[a]} -> {ids[b]};" for a, b in edges]
        lines.append("}")
    return "\n".join(lines)
