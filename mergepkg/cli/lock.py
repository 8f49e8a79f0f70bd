"""`mergepkg lock` and `mergepkg verify`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mergepkg.cli.common import OFFLINE, RECIPE, open_recipe
from mergepkg.cli.output import ProgressReporter, err, out
from mergepkg.lock import differences, lock_path, read_lock, write_lock
from mergepkg.resolve import ALL, resolve
from mergepkg.verify import verify as verify_recipe


def lock(
    recipe: Path = RECIPE,
    upgrade: bool = typer.Option(False, "--upgrade", help="Move hub sources to their revisions' current commits and dependencies to their newest allowed versions."),
    sources: list[str] = typer.Argument(None, help="With --upgrade: only these sources or dependencies.", show_default=False),
    offline: bool = OFFLINE,
):
    """Write or refresh the recipe's lock (RECIPE.lock beside it)."""
    r, session = open_recipe(recipe, offline=offline)
    if sources and not upgrade:
        raise typer.BadParameter("naming sources needs --upgrade", param_hint="SOURCES")
    path = lock_path(r)
    old = read_lock(path)
    res = resolve(r, session, lock=old, upgrade=frozenset(sources or [ALL]) if upgrade else frozenset())
    digests = {}
    for name, key in res.keys.items():
        art = session.store.get(key)
        digests[name] = art.digest if art else (old.steps[name].digest if old and name in old.steps
                                                and old.steps[name].key == key else None)
    new = res.lock(digests)
    changes = differences(old, new) if old else ["new lock"]
    if new != old:
        write_lock(path, new)
    session.add_root(path)
    for line in changes or ["up to date"]:
        err.print(f"  {line}")
    out.print(str(path), highlight=False)


def verify(
    recipe: Path = RECIPE,
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild every step from the lock in a scratch store and compare."),
    offline: bool = OFFLINE,
):
    """Check stored artifacts (or a rebuild) against the digests in the recipe's lock."""
    r, session = open_recipe(recipe, offline=offline)
    with ProgressReporter(enabled=rebuild) as reporter:
        checks = verify_recipe(r, session, rebuild=rebuild, reporter=reporter)
    table = Table()
    for col in ("step", "key", "status", "locked digest", "found"):
        table.add_column(col)
    colors = {"ok": "green", "missing": "yellow", "corrupt": "red", "differs": "red"}
    for c in checks:
        table.add_row(c.step, c.key[:12], f"[{colors[c.status]}]{c.status}[/]", (c.locked or "-")[:19], (c.actual or "-")[:19])
    out.print(table)
    bad = [c for c in checks if c.status in ("corrupt", "differs")]
    if any(c.status == "corrupt" for c in checks):
        err.print("[red]corrupt artifacts were removed from the store[/]; `mergepkg build` rebuilds them")
    if bad:
        raise typer.Exit(1)
