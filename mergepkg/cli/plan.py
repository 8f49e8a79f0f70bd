"""`mergepkg plan` (the DAG as a tree, with what a build would do) and `mergepkg graph`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.tree import Tree

from mergepkg.builder.status import status
from mergepkg.cli.common import OFFLINE, RECIPE, open_recipe, size
from mergepkg.cli.output import err, out
from mergepkg.recipe.plan import graph_text, make_plan
from mergepkg.resolve.resolution import expand


def plan(recipe: Path = RECIPE, offline: bool = OFFLINE) -> None:
    """Show the steps as a tree: key, method, stored or to build, bytes read and written."""
    r, session = open_recipe(recipe, offline=offline)
    st = status(r, session)
    flat = st.resolution.recipe
    shown: set[str] = set()

    def label(name: str) -> str:
        if name in flat.sources:
            src = flat.sources[name]
            where = os.path.relpath(src.path, r.path.parent) if src.path else src.label
            return f"[cyan]{name}[/] [dim]{where}[/]"
        s = st.steps[name]
        lay = s.layout
        state = (
            "[green]stored[/]"
            if s.stored
            else f"[yellow]build[/] [dim]reads {size(lay.bytes_in)}, writes {size(lay.bytes_out)}[/]"
        )
        return f"[bold]{name}[/] [dim]{s.key[:12]}[/] {lay.method.name} {state}"

    def add(node: Tree, name: str) -> None:
        branch = node.add(label(name) + (" [dim](above)[/]" if name in shown and name in st.steps else ""))
        if name in shown or name not in st.steps:
            return
        shown.add(name)
        for model in flat.steps[name].models:
            add(branch, model)

    tree = Tree(f"{r.name} {r.version}")
    for name in r.outputs:
        add(tree, name)
    out.print(tree)
    todo = st.to_build
    err.print(
        f"{len(st.steps) - len(todo)} stored, {len(todo)} to build"
        + (
            f" (reads {size(sum(s.layout.bytes_in for s in todo))}, "
            f"writes {size(sum(s.layout.bytes_out for s in todo))})"
            if todo
            else ""
        )
    )


def graph(
    recipe: Path = RECIPE,
    fmt: str = typer.Option("mermaid", "--format", "-f", help="mermaid or dot."),
    offline: bool = OFFLINE,
) -> None:
    """Print the DAG as Mermaid or Graphviz DOT, for docs."""
    if fmt not in ("mermaid", "dot"):
        raise typer.BadParameter("expected mermaid or dot", param_hint="--format")
    r, session = open_recipe(recipe, offline=offline)
    out.print(graph_text(make_plan(expand(r, session)), fmt), highlight=False, markup=False)
