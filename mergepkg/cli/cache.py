"""`mergepkg cache`: list, inspect, locate and collect the store's artifacts."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mergepkg.cli.common import size
from mergepkg.cli.output import err, out
from mergepkg.store.gc import collect_garbage
from mergepkg.store.session import Session

app = typer.Typer(help="The store of built steps, addressed by key.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
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
def info(key: str = typer.Argument(..., help="A key or a unique prefix of one.")) -> None:
    """An artifact's manifest: its lock entry, digest, files."""
    a = Session().store.find_one(key)
    out.print_json(json.dumps(a.manifest))


@app.command("path")
def path(key: str = typer.Argument(..., help="A key or a unique prefix of one.")) -> None:
    """The folder of an artifact."""
    out.print(str(Session().store.find_one(key).folder), highlight=False)


@app.command("gc")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing.")) -> None:
    """Remove artifacts no lockfile of a built recipe references, and leftovers of killed builds."""
    done = collect_garbage(Session().store, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for a in done.artifacts:
        out.print(f"{verb} {a.key[:16]} {a.manifest['entry']['method']} {size(a.size)}", highlight=False)
    for p in done.leftovers:
        out.print(f"{verb} {p}", highlight=False)
    err.print(
        f"{verb} {len(done.artifacts)} artifacts ({size(done.size)}) and {len(done.leftovers)} temp folders;"
        f" kept what {len(done.roots)} lockfiles reference"
    )
