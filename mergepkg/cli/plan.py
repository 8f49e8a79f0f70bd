"""`mergepkg plan` (the DAG as a tree, with what a build would do) and `mergepkg graph`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.tree import Tree

from mergepkg.cli.common import OFFLINE, RECIPE, open_recipe, size
from mergepkg.cli.output import err, out
from mergepkg.lock import lock_path, read_lock
from mergepkg.resolve import layouts, resolve


def plan(recipe: Path = RECIPE, offline: bool = OFFLINE):
    """Show the steps as a tree: key, method, stored or to build, bytes read and written."""
    r, session = open_recipe(recipe, offline=offline)
    res = resolve(r, session, lock=read_lock(lock_path(r)))  # as a build would: locked commits
    stored = {n: a for n, k in res.keys.items() if (a := session.store.get(k)) is not None and a.intact()}
    folders = {n: s.folder for n, s in res.sources.items()} | {n: a.folder for n, a in stored.items()}
    laid, _ = layouts(res, folders)
    shown: set[str] = set()

    def label(name: str) -> str:
        if name in res.recipe.sources:
            src = res.recipe.sources[name]
            where = os.path.relpath(src.path, r.path.parent) if src.path else src.label
            return f"[cyan]{name}[/] [dim]{where}[/]"
        lay = laid[name]
        state = "[green]stored[/]" if name in stored else f"[yellow]build[/] [dim]reads {size(lay.bytes_in)}, writes {size(lay.bytes_out)}[/]"
        return f"[bold]{name}[/] [dim]{res.keys[name][:12]}[/] {lay.method.name} {state}"

    def add(node: Tree, name: str):
        branch = node.add(label(name) + (" [dim](above)[/]" if name in shown and name in res.keys else ""))
        if name in shown or name not in res.keys:
            return
        shown.add(name)
        for model in res.recipe.steps[name].models:
            add(branch, model)

    tree = Tree(f"{r.name} {r.version}")
    for name in r.outputs:
        add(tree, name)
    out.print(tree)
    todo = [n for n in res.plan.order if n not in stored]
    err.print(f"{len(res.plan.order) - len(todo)} stored, {len(todo)} to build"
              + (f" (reads {size(sum(laid[n].bytes_in for n in todo))}, writes {size(sum(laid[n].bytes_out for n in todo))})" if todo else ""))


def graph(
    recipe: Path = RECIPE,
    fmt: str = typer.Option("mermaid", "--format", "-f", help="mermaid or dot."),
    offline: bool = OFFLINE,
):
    """Print the DAG as Mermaid or Graphviz DOT, for docs."""
    from mergepkg.plan import make_plan
    from mergepkg.resolve import expand

    if fmt not in ("mermaid", "dot"):
        raise typer.BadParameter("expected mermaid or dot", param_hint="--format")
    base, session = open_recipe(recipe, offline=offline)
    r = expand(base, session)
    p = make_plan(r)
    nodes = [n for n in p.graph.nodes if n in p.order or any(s in p.order for s in p.graph.successors(n))]
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    if fmt == "mermaid":
        lines = ["graph LR"]
        for n in nodes:
            text = n if n in r.sources else f"{n}<br/>{r.steps[n].method}"
            lines.append(f'  {ids[n]}{"([" if n in r.sources else "["}"{text}"{"])" if n in r.sources else "]"}')
        lines += [f"  {ids[a]} --> {ids[b]}" for a, b in p.graph.edges if a in ids and b in ids]
    else:
        lines = ["digraph recipe {", "  rankdir=LR;"]
        for n in nodes:
            shape = "ellipse" if n in r.sources else "box"
            text = n if n in r.sources else f"{n}\\n{r.steps[n].method}"
            lines.append(f'  {ids[n]} [label="{text}", shape={shape}];')
        lines += [f"  {ids[a]} -> {ids[b]};" for a, b in p.graph.edges if a in ids and b in ids]
        lines.append("}")
    out.print("\n".join(lines), highlight=False, markup=False)
