"""`mergepkg validate`: a recipe checked against its models, nothing merged. Its own
module, so that it imports what `builder/describe.py` needs: not the builder or the
remotes."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from mergepkg.builder.describe import describe
from mergepkg.cli.common import DENY_WARNINGS, OFFLINE, RECIPE, open_recipe, size
from mergepkg.cli.output import err, out, show_pitfall
from mergepkg.pitfalls.pitfall import deny


def validate(recipe: Path = RECIPE, offline: bool = OFFLINE, deny_warnings: bool = DENY_WARNINGS) -> None:
    """Check a recipe against its models without merging anything; pitfall warnings
    (docs/warnings.md) on stderr."""
    r, session = open_recipe(recipe, offline=offline)
    st = describe(r, session)
    table = Table(title=f"{r.name} {r.version}", title_justify="left")
    for col in ("step", "method", "models", "tensors", "reads", "writes"):
        table.add_column(col, justify="right" if col in ("tensors", "reads", "writes") else "left", overflow="fold")
    for name, s in st.steps.items():
        lay = s.layout
        assert lay is not None  # without the store every step is laid out
        mark = " (output)" if name in r.outputs else ""
        table.add_row(
            name + mark,
            lay.method.name,
            ", ".join(lay.step.models),
            str(len(lay.tensors)),
            size(lay.bytes_in),
            size(lay.bytes_out),
        )
    out.print(table)
    for p in st.pitfalls:
        show_pitfall(p)
    if deny_warnings:
        deny(st.pitfalls, "the recipe is not valid as it is")
    count = len(st.pitfalls)
    warned = f", [yellow]{count} warning{'s' if count != 1 else ''}[/]" if count else ""
    err.print(f"[green]ok[/]: {len(st.steps)} steps, outputs: {', '.join(r.outputs)}{warned}")
