"""`mergepkg push RECIPE[:STEP] [ORG/NAME]`: a built output sent to the Hugging Face Hub
in one commit (builder/push.py). Progress on stderr; on stdout the commit URL and the
source line that takes the pushed model, or with --dry-run the files it would send."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from mergepkg.builder.push import push as push_output
from mergepkg.cli.common import open_recipe, size
from mergepkg.cli.output import err, out


def push(
    target: str = typer.Argument(..., metavar="RECIPE[:STEP]", help="The built recipe, and which output to push."),
    repo: str = typer.Argument(None, metavar="[ORG/NAME]", help="The Hub model repo (default: \\[publish] repo)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (when it does not exist yet)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files, each sent or skipped; send nothing."),
    token: str = typer.Option(
        None, "--token", help="A Hub token (default: HF_TOKEN, else the cached login); never written anywhere."
    ),
) -> None:
    """Push a built output to a Hugging Face Hub model repo in one commit: the model, its
    card, the recipe and its lock; files the repo has already are skipped. The commit is
    recorded in the lock."""
    file, step = target, None
    if ":" in target and not Path(target).exists():
        file, step = target.rsplit(":", 1)
    recipe, session = open_recipe(Path(file))
    if to := repo or recipe.publish.repo:  # none: push_output says so, with its hint
        err.print(f"[dim]pushing[/] {escape(recipe.name)} to {escape(to)}")
    report = push_output(
        recipe, session, repo, step=step, private=True if private else None, dry_run=dry_run, token=token
    )
    sent = [f for f in report.files if f.send]
    if dry_run:
        for f in report.files:
            out.print(f"{'send' if f.send else 'skip'}  {f.size:>12}  {f.path}", highlight=False, markup=False)
        for name in report.deleted:
            out.print(f"delete  {'':>10}  {name}", highlight=False, markup=False)
        gone = f", {len(report.deleted)} deleted" if report.deleted else ""
        err.print(
            f"[green]dry run[/]: {len(sent)} of {len(report.files)} files would be sent to "
            f"{escape(report.repo)}{escape(gone)}"
        )
        return
    total = sum(f.size for f in sent)
    what = f"{len(sent)} files sent ({size(total)})" if sent else "nothing to send: the repo has every file"
    if report.deleted:
        what += f", {len(report.deleted)} left from an earlier push deleted ({escape(', '.join(report.deleted))})"
    err.print(f"[green]pushed[/] {report.step} [dim]{report.key[:12]}[/]: {what}; commit recorded in the lock")
    out.print(report.url, highlight=False, markup=False)
    out.print(report.source, highlight=False, markup=False)
