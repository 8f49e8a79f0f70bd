"""Recipe -> plan: the DAG of steps (networkx) in a stable topological order.

Nodes are model names (sources and steps); an edge `a -> b` means step b reads a.
The order is the recipe's own order wherever dependencies allow, so the same recipe
always builds in the same order. A cycle is an error that names it.

`make_plan` orders the steps with the standard library (a heap over the recipe's order,
as networkx's `lexicographical_topological_sort` does), and `Plan.graph`, the
`nx.DiGraph`, is made on first use: `validate`, `plan` and a no-op rebuild never import
networkx, which costs more than planning (docs/performance.md#startup); `Plan.inputs` and
`Plan.upstream` answer from the recipe's own lists. A cycle is named by networkx's
`find_cycle`, on the error's path only.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from mergepkg._lazy import lazy_import
from mergepkg.errors import CycleError
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import Recipe

if TYPE_CHECKING:
    import networkx as nx
else:
    nx = lazy_import("networkx")  # imported by the first use of a plan's graph: not by validate or plan


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    order: tuple[str, ...]  # every step needed for the outputs, dependencies first

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The DAG as networkx holds it: every source and step of the recipe, in its order."""
        return _graph(self.recipe)

    def inputs(self, name: str) -> list[str]:
        """The models step `name` reads (its predecessors in the graph), in recipe order."""
        return list(dict.fromkeys(self.recipe.steps[name].models))

    def upstream(self, name: str) -> set[str]:
        """Every model `name` is made from, directly or not (its ancestors in the graph)."""
        return ancestors(self.recipe, name)

    def sources_used(self) -> list[str]:
        read = {m for n in self.order for m in self.recipe.steps[n].models}
        return [n for n in self.recipe.sources if n in read]


def _graph(recipe: Recipe) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from([*recipe.sources, *recipe.steps])
    for step in recipe.steps.values():
        for model in step.models:
            graph.add_edge(model, step.name)
    return graph


def ancestors(recipe: Recipe, name: str) -> set[str]:
    """Every model `name` reads, directly or through other steps."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        step = recipe.steps.get(todo.pop())
        for model in step.models if step is not None else ():
            if model not in seen:
                seen.add(model)
                todo.append(model)
    return seen


def make_plan(recipe: Recipe, targets: tuple[str, ...] | None = None) -> Plan:
    names = [*recipe.sources, *recipe.steps]
    rank = {name: i for i, name in enumerate(names)}
    readers: dict[str, list[str]] = {name: [] for name in names}  # a model's successors
    for step in recipe.steps.values():
        for model in step.models:
            readers.setdefault(model, []).append(step.name)
    order = _ordered(recipe, rank, readers)
    wanted: set[str] = set()
    for target in targets or recipe.outputs:
        if target not in readers:
            nx.ancestors(_graph(recipe), target)  # networkx's error for a node not in the graph
        wanted |= {target} | ancestors(recipe, target)
    return Plan(recipe, tuple(n for n in order if n in wanted and n in recipe.steps))


def _ordered(recipe: Recipe, rank: dict[str, int], readers: dict[str, list[str]]) -> list[str]:
    """Every node, each after the models it reads, the lowest rank first wherever free;
    a cycle among the steps is an error naming it."""
    waiting = {n: len(recipe.steps[n].models) if n in recipe.steps else 0 for n in readers}
    ready = [(rank[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for reader in readers[name]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, (rank[reader], reader))
    if len(order) < len(waiting):
        _raise_cycle(recipe, rank)
    return order


def _raise_cycle(recipe: Recipe, rank: dict[str, int]) -> None:
    cycle = nx.find_cycle(_graph(recipe).subgraph(recipe.steps))
    names = [u for u, _ in cycle]
    first = min(names, key=rank.__getitem__)  # start the message at the recipe's first step
    names = names[names.index(first) :] + names[: names.index(first)]
    key = f"steps.{key_name(names[0])}"
    raise CycleError(
        names,
        file=str(recipe.display),
        line=recipe.line_of(key),
        key=key,
        hint="a step cannot depend, directly or not, on itself",
    )


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
