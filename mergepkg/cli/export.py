"""`mergepkg export RECIPE [NAME...]`: the recipe's `[exports.NAME]` made (GGUF files, by
llama.cpp's converter) with the steps they need, each placed as `--out/NAME.gguf`
(builder/exports.py). Progress on stderr; the files' paths on stdout."""

from __future__ import annotations

from pathlib import Path

import typer

from mergepkg.builder.build import build as build_recipe
from mergepkg.cli.build import LLAMA_CPP, tell
from mergepkg.cli.common import OFFLINE, RECIPE, open_recipe
from mergepkg.cli.output import ProgressReporter
from mergepkg.errors import ExportError, did_you_mean
from mergepkg.resolve.resolution import Mode

EXAMPLE = '[exports.NAME] with step = "...", format = "gguf", type = "q8_0" (docs/export.md)'


def export(
    recipe: Path = RECIPE,
    names: list[str] = typer.Argument(None, metavar="[NAME]...", help="Exports to make (default: all)."),
    out_dir: Path = typer.Option(None, "--out", "-o", help="Folder for NAME.gguf (default: out/<package name>)."),
    llama_cpp: Path = LLAMA_CPP,
    offline: bool = OFFLINE,
    locked: bool = typer.Option(False, "--locked", help="Fail if the recipe's lock is missing or out of date."),
    threads: int = typer.Option(
        None, "--threads", min=1, help="Threads for the math and the quantizer (default: all)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Make the recipe's exports: GGUF files for llama.cpp.

    The steps they need are built or reused; each export is stored under its key (an
    unchanged one is never converted twice) and recorded in the lock."""
    settings: dict = dict(offline=offline, threads=threads)
    if llama_cpp is not None:
        settings["llama_cpp"] = llama_cpp
    r, session = open_recipe(recipe, **settings)
    if not r.exports:
        raise ExportError("the recipe has no exports", file=r.path, hint="add " + EXAMPLE)
    for name in names or ():
        if name not in r.exports:
            raise ExportError(f"no export named {name!r}", file=r.path, hint=did_you_mean(name, r.exports))
    mode: Mode = "locked" if locked else "update"
    with ProgressReporter(enabled=not quiet) as reporter:
        report = build_recipe(
            r,
            session,
            out=out_dir or Path("out") / r.name,
            mode=mode,
            reporter=reporter,
            only_exports=tuple(dict.fromkeys(names or r.exports)),
        )
    tell(report)
