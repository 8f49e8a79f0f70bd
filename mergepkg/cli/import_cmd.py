"""`mergepkg import`: a mergekit YAML config (or mergekit-multi file) as a mergepkg recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from mergepkg.cli.output import err
from mergepkg.errors import RecipeError, SourceError
from mergepkg.files import write_atomic
from mergepkg.mergekit_import import convert


def import_(
    config: Path = typer.Argument(..., help="The mergekit YAML config (mergekit-yaml or mergekit-multi).",
                                  metavar="CONFIG", dir_okay=False),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="Write the recipe to this file [default: print it]."),
    name: str | None = typer.Option(None, "--name",
                                    help="Package name and name of the final step [default: the config's stem]."),
):
    """Convert a mergekit YAML config into a recipe; what cannot be carried over is an error."""
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError("config file not found", file=config) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the config: {e}", file=config) from None
    if output is not None and output.is_dir():
        raise RecipeError("the output is a folder", file=output, hint="name the recipe file, e.g. -o recipe.toml")
    recipe_dir = output.parent if output is not None else config.parent
    result = convert(text, config, name=name, recipe_dir=recipe_dir)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if output is None:
        sys.stdout.write(result.text)
        sys.stdout.flush()
        return
    write_atomic(output, result.text)
    err.print(f"[green]wrote[/] {escape(str(output))}")
