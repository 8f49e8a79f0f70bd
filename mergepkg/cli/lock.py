"""`mergepkg lock` and `mergepkg verify`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mergepkg.builder.verify import verify as verify_recipe
from mergepkg.cli.common import OFFLINE, RECIPE, open_recipe
from mergepkg.cli.output import ProgressReporter, err, out
from mergepkg.resolve.lock import lock_recipe


def lock(
    recipe: Path = RECIPE,
    upgrade: bool = typer.Option(
        False,
        "--upgrade",
        help="Move hub sources to their revisions' current commits and dependencies to their newest allowed versions.",
    ),
    sources: list[str] = typer.Argument(
        None, help="With --upgrade: only these sources or dependencies.", show_default=False
    ),
    offline: bool = OFFLINE,
) -> None:
    """Write or refresh the recipe's lock (RECIPE.lock beside it)."""
    r, session = open_recipe(recipe, offline=offline)
    if sources and not upgrade:
        raise typer.BadParameter("naming sources needs --upgrade", param_hint="SOURCES")
    locked = lock_recipe(r, session, upgrade=frozenset(sources or ()) if upgrade else None)
    for line in locked.changes or ["up to date"]:
        err.print(f"  {escape(line)}")
    out.print(str(locked.path), highlight=False)


def verify(
    recipe: Path = RECIPE,
    rebuild: bool = typer.Option(
        False, "--rebuild", help="Rebuild every step from the lock in a scratch store and compare."
    ),
    offline: bool = OFFLINE,
    no_remote: bool = typer.Option(
        False, "--no-remote", help="Do not pull the locked steps the store lacks from the remotes."
    ),
) -> None:
    """Check stored artifacts (or a rebuild) against the digests in the recipe's lock;
    locked steps the store lacks are pulled from the remotes that have them, checked."""
    r, session = open_recipe(recipe, offline=offline)
    with ProgressReporter() as reporter:
        checks = verify_recipe(r, session, rebuild=rebuild, reporter=reporter, remote="never" if no_remote else "auto")
    table = Table()
    for col in ("step", "key", "status", "locked digest", "found"):
        table.add_column(col, overflow="fold")  # on a narrow terminal, names and sha256s wrap, never cut
    colors = {
        "ok": "green",
        "missing": "yellow",
        "corrupt": "red",
        "unreadable": "red",
        "differs": "red",
        "refused": "red",
    }
    for c in checks:
        shown = c.status + (f" ({'pulled from' if c.ok else 'from'} {c.remote})" if c.remote else "")
        table.add_row(
            c.step,
            c.key[:12],
            Text(shown, style=colors.get(c.status, "red")),
            (c.locked or "-")[:19],
            (c.actual or "-")[:19],
        )
    out.print(table)
    for c in checks:
        if c.note:
            err.print(f"[red]{c.status}[/] {escape(c.step)}: {escape(c.note)}")
    bad = [c for c in checks if c.status in ("corrupt", "unreadable", "differs", "refused")]
    if any(c.status == "corrupt" for c in checks):
        err.print("[red]corrupt artifacts were removed from the store[/]; `mergepkg build` rebuilds them")
    if bad:
        raise typer.Exit(1)
