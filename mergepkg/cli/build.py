"""`mergepkg build` and `mergepkg validate`."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from mergepkg.build import build as build_recipe
from mergepkg.build import resolve
from mergepkg.cli.output import ProgressReporter, err, out
from mergepkg.parse import load_recipe
from mergepkg.settings import Settings

RECIPE = typer.Argument(..., help="The recipe file (TOML).", metavar="RECIPE", dir_okay=False)


def build(
    recipe: Path = RECIPE,
    out_dir: Path = typer.Option(None, "--out", "-o", help="Output folder [default: out/<package name>]."),
    device: str = typer.Option("cpu", "--device", help="Where the math runs: cpu, cuda, cuda:N."),
    seed: int = typer.Option(None, "--seed", help="Seed for random methods [default: the recipe's]."),
    offline: bool = typer.Option(False, "--offline", help="Use only the local Hugging Face cache."),
    threads: int = typer.Option(None, "--threads", help="Torch threads for the math [default: all cores]."),
    shard_size: str = typer.Option("2GB", "--shard-size", help="Largest output shard, e.g. 500MB, 5GB."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Build a recipe's outputs."""
    r = load_recipe(recipe)
    defaults = Settings()
    settings = Settings(offline=offline or defaults.offline, device=device, threads=threads,
                        max_shard_bytes=parse_size(shard_size))
    target = out_dir or Path("out") / r.name
    with ProgressReporter(enabled=not quiet) as reporter:
        outputs = build_recipe(r, target, settings, seed=seed, reporter=reporter)
    for name, folder in outputs.items():
        err.print(f"[green]built[/] {name}")
        out.print(str(folder), highlight=False)


def validate(
    recipe: Path = RECIPE,
    offline: bool = typer.Option(False, "--offline", help="Use only the local Hugging Face cache."),
):
    """Check a recipe against its models without merging anything."""
    r = load_recipe(recipe)
    resolved = resolve(r, Settings(offline=offline or Settings().offline))
    table = Table(title=f"{r.name} {r.version}", title_justify="left")
    for col in ("step", "method", "models", "tensors", "reads", "writes"):
        table.add_column(col, justify="right" if col in ("tensors", "reads", "writes") else "left")
    for name in resolved.plan.order:
        lay = resolved.layouts[name]
        mark = " (output)" if name in r.outputs else ""
        table.add_row(name + mark, lay.method.name, ", ".join(lay.step.models), str(len(lay.tensors)),
                      _size(lay.bytes_in), _size(lay.bytes_out))
    out.print(table)
    err.print(f"[green]ok[/]: {len(resolved.plan.order)} steps, outputs: {', '.join(r.outputs)}")


def parse_size(text: str) -> int:
    """'500MB' -> 500_000_000; plain numbers are bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    unit = m and m[2].upper() + ("B" if m[2].upper() in ("K", "M", "G") else "")
    if not m or unit not in units or float(m[1]) <= 0:
        raise typer.BadParameter(f"expected a size like 500MB or 2GB, got {text!r}", param_hint="--shard-size")
    return int(float(m[1]) * units[unit])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
