"""`mergepkg methods`: the table of methods, their parameters and defaults."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mergepkg.cli.output import out
from mergepkg.methods import METHODS


def methods() -> None:
    """List merge methods with their parameters, defaults and allowed ranges."""
    table = Table(show_lines=True)
    for col in ("method", "parameter", "default", "allowed", "set"):
        table.add_column(col)
    for spec in METHODS.values():
        base = {"required": "needs a base", "optional": "base optional", "none": "no base"}[spec.base]
        about = Text.from_markup(
            f"[bold]{escape(spec.name)}[/]\n{escape(spec.summary)}\n[dim]{base}; {escape(spec.inputs_text)} input(s)[/]"
        )  # stdout reads no markup: the styled cell is built as Text
        rows = [
            (
                p.name,
                "required" if p.required else ("none" if p.default is None else str(p.default).lower()),
                p.range_text,
                "per input" if p.per_input else "per step",
            )
            for p in spec.params
        ]
        table.add_row(
            about,
            "\n".join(r[0] for r in rows),
            "\n".join(r[1] for r in rows),
            "\n".join(r[2] for r in rows),
            "\n".join(r[3] for r in rows),
        )
    out.print(table)
