"""`mergepkg plan` (the DAG as a tree, with what a build would do) and `mergepkg graph`."""

from __future__ import annotations

import math
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from mergepkg.builder.status import StepStatus, status
from mergepkg.cli.common import NO_REMOTE, OFFLINE, PREFER_REMOTE, RECIPE, open_recipe, remote_policy, size
from mergepkg.cli.output import err, out
from mergepkg.recipe.plan import graph_text, make_plan
from mergepkg.resolve.resolution import expand


def plan(
    recipe: Path = RECIPE, offline: bool = OFFLINE, no_remote: bool = NO_REMOTE, prefer_remote: bool = PREFER_REMOTE
) -> None:
    """Show the steps as a tree: key, method, stored, from a remote or to build, and the bytes each moves."""
    r, session = open_recipe(recipe, offline=offline)
    st = status(r, session, remote=remote_policy(no_remote, prefer_remote))
    for message in st.warnings:
        err.print(f"[yellow]warning:[/] {escape(message)}")
    flat = st.resolution.recipe
    shown: set[str] = set()

    def label(name: str) -> str:
        """The node's line as markup, every value from the recipe escaped (stdout takes no markup)."""
        if name in flat.sources:
            src = flat.sources[name]
            where = os.path.relpath(src.path, r.path.parent) if src.path else src.label
            return f"[cyan]{escape(name)}[/] [dim]{escape(where)}[/]"
        s = st.steps[name]
        return f"[bold]{escape(name)}[/] [dim]{s.key[:12]}[/] {flat.steps[name].method} {_state(s)}"

    def add(node: Tree, name: str) -> None:
        above = " [dim](above)[/]" if name in shown and name in st.steps else ""
        branch = node.add(Text.from_markup(label(name) + above))
        if name in shown or name not in st.steps:
            return
        shown.add(name)
        for model in flat.steps[name].models:
            add(branch, model)

    tree = Tree(f"{r.name} {r.version}")
    for name in r.outputs:
        add(tree, name)
    for name, stored_export in st.exports.items():
        e = st.resolution.exports[name]
        state = "[green]stored[/]" if stored_export else "[yellow]to make[/]"
        tree.add(
            Text.from_markup(f"[bold]{escape(name)}[/] [dim]{e.key[:12]}[/] {e.format} {e.type} of {e.step} {state}")
        )
    out.print(tree)
    todo, pulls = st.to_build, st.to_pull
    stored = sum(s.state == "stored" for s in st.steps.values())
    laid = [s.layout for s in todo if s.layout is not None]
    pulled = f"{len(pulls)} from remotes ({size(sum(s.remote.size for s in pulls if s.remote))}), " if pulls else ""
    reads = sum(x.bytes_in for x in laid)
    exports = f"; exports: {sum(st.exports.values())} stored, {len(st.exports) - sum(st.exports.values())} to make"
    err.print(
        f"{stored} stored, {pulled}{len(todo)} to build"
        + (f" (reads {size(reads)}, writes {size(sum(x.bytes_out for x in laid))})" if laid else "")
        + (exports if st.exports else "")
    )


def _state(s: StepStatus) -> str:
    """A step's state, with the bytes each choice would move."""
    instead = "cannot be built here" if math.isinf(s.download) else f"building would download {size(s.download)}"
    if s.state == "stored":
        return "[green]stored[/]"
    if s.state == "remote" and s.remote is not None:
        return f"[cyan]remote[/] [dim]{escape(s.remote.remote)}: pulls {size(s.remote.size)} ({instead})[/]"
    if s.state == "unneeded":
        return "[dim]not needed (a step after it is pulled)[/]"
    lay = s.layout
    text = "[yellow]build[/] [dim]"
    text += f"reads {size(lay.bytes_in)}, writes {size(lay.bytes_out)}" if lay else "laid out once its inputs are in"
    if math.isinf(s.download):
        text += ", but its inputs cannot be had here"
    elif s.download:
        text += f", downloads {size(s.download)} of inputs first"
    if s.remote is not None:
        text += f"; {escape(s.remote.remote)} has it ({size(s.remote.size)})"
    return text + "[/]"


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
