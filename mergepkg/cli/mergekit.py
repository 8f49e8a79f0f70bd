"""`mergepkg import`: a mergekit config (mergekit-yaml, mergekit-multi or mergekit-moe) as a recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from mergepkg.cli.output import err
from mergepkg.importers.mergekit import convert_file


def import_(
    config: Path = typer.Argument(
        ...,
        help="The mergekit YAML config (mergekit-yaml, mergekit-multi or mergekit-moe).",
        metavar="CONFIG",
        dir_okay=False,
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write the recipe to this file \\[default: print it]."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Package name and name of the final step \\[default: the config's stem]."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Refuse keys mergekit accepts and ignores, instead of warning about them."
    ),
) -> None:
    """Convert a mergekit config (mergekit-yaml, mergekit-multi or mergekit-moe) into a recipe.

    What mergekit refuses, or mergepkg cannot carry over, is an error; what mergekit
    ignores is a warning (an error with --strict)."""
    result = convert_file(config, output=output, name=name, strict=strict)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if output is None:
        sys.stdout.write(result.text)
        sys.stdout.flush()
        return
    err.print(f"[green]wrote[/] {escape(str(output))}")
