"""`mergepkg cache`: list, inspect, locate and collect the store's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from mergepkg.cli.common import size
from mergepkg.cli.output import err, out
from mergepkg.errors import MergepkgError
from mergepkg.lock import read_lock
from mergepkg.resolve import Session
from mergepkg.store import Artifact

app = typer.Typer(help="The store of built steps, addressed by key.", no_args_is_help=True)


def _one(session: Session, prefix: str) -> Artifact:
    found = session.store.find(prefix) if prefix else []
    if len(found) != 1:
        raise MergepkgError(f"{'no' if not found else len(found)} artifacts match key {prefix!r}",
                            hint="see `mergepkg cache list`" if not found else "give more of the key")
    return found[0]


@app.command("list")
def list_():
    """Every artifact: key, method, size, build time."""
    session = Session()
    table = Table()
    for col in ("key", "method", "size", "built"):
        table.add_column(col, justify="right" if col == "size" else "left")
    arts = session.store.all()
    for a in arts:
        table.add_row(a.key[:16], a.manifest["entry"]["method"], size(a.size), a.manifest.get("built_at", ""))
    out.print(table)
    err.print(f"{len(arts)} artifacts, {size(sum(a.size for a in arts))} in {session.store.root}")


@app.command("info")
def info(key: str = typer.Argument(..., help="A key or a unique prefix of one.")):
    """An artifact's manifest: its lock entry, digest, files."""
    a = _one(Session(), key)
    out.print_json(json.dumps(a.manifest))


@app.command("path")
def path(key: str = typer.Argument(..., help="A key or a unique prefix of one.")):
    """The folder of an artifact."""
    out.print(str(_one(Session(), key).folder), highlight=False)


@app.command("gc")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing.")):
    """Remove artifacts no lockfile of a built recipe references, and leftovers of killed builds."""
    session = Session()
    keep, roots = set(), []
    for root in session.roots():
        try:
            lock = read_lock(Path(root))
        except MergepkgError:
            lock = None
        if lock is not None:
            roots.append(root)
            keep |= {s.key for s in lock.steps.values()}
    gone, leftovers = session.store.gc(keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for a in gone:
        out.print(f"{verb} {a.key[:16]} {a.manifest['entry']['method']} {size(a.size)}", highlight=False)
    for p in leftovers:
        out.print(f"{verb} {p}", highlight=False)
    err.print(f"{verb} {len(gone)} artifacts ({size(sum(a.size for a in gone))}) and {len(leftovers)} temp folders;"
              f" kept what {len(roots)} lockfiles reference")
