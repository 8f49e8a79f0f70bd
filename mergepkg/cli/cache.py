"""`mergepkg cache`: list, inspect, locate and collect the store's artifacts; push them to,
pull them from and sign them on a remote."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from mergepkg.builder import share
from mergepkg.cli.common import size
from mergepkg.cli.output import TransferReporter, err, out, print_data
from mergepkg.cli.remote import summary
from mergepkg.remote.config import trusted_keys
from mergepkg.store.gc import collect_garbage
from mergepkg.store.session import Session

app = typer.Typer(help="The store of built steps, addressed by key.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """Every artifact: key, method, size, build time."""
    session = Session()
    table = Table()
    for col in ("key", "method", "size", "built"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    arts = session.store.all()
    for a in arts:
        table.add_row(a.key[:16], _what(a), size(a.size), a.manifest.get("built_at", ""))
    out.print(table)
    err.print(f"{len(arts)} artifacts, {size(sum(a.size for a in arts))} in {escape(str(session.store.root))}")


@app.command("info")
def info(key: str = typer.Argument(..., help="A key or a unique prefix of one.")) -> None:
    """An artifact's manifest: its lock entry, digest, files."""
    a = Session().store.find_one(key)
    print_data(a.manifest)


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
        out.print(f"{verb} {a.key[:16]} {_what(a)} {size(a.size)}", highlight=False)
    for p in done.leftovers:
        out.print(f"{verb} {p}", highlight=False)
    err.print(
        f"{verb} {len(done.artifacts)} artifacts ({size(done.size)}) and {len(done.leftovers)} temp folders;"
        f" kept what {len(done.roots)} lockfiles reference"
    )


# -- sharing through a remote (docs/remote.md) ------------------------------------------
TARGETS = typer.Argument(None, metavar="[RECIPE|KEY]...", help="Recipe files (the steps their locks pin) or keys.")
REMOTE = typer.Option(None, "--remote", "-r", help="A configured remote (default: the only one).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
KEY = typer.Option(None, "--key", help="The signing key: a name under keys/ or a file (default: the only one).")


def _report(moved: list[share.Moved], remote: str) -> None:
    for m in moved:
        out.print(f"{m.what} {m.key[:16]} {m.label} {size(m.nbytes) if m.nbytes else ''}".rstrip(), highlight=False)
    err.print(f"[green]done[/]: {escape(summary(moved, remote))}")


@app.command("push")
def push(
    targets: list[str] = TARGETS,
    remote: str = REMOTE,
    sign: bool = typer.Option(False, "--sign", help="Sign the records (those already there too) with --key."),
    key: str = KEY,
    rehash: bool = typer.Option(
        False,
        "--rehash",
        help="Read the remote's files back and replace those that differ (and a record of another build): "
        "repairs a remote whose pulls are refused.",
    ),
    quiet: bool = QUIET,
) -> None:
    """Push stored artifacts to a remote (none named: every stored one). The remote's
    records are checked first; only missing files move, in parallel."""
    session = Session()
    target = share.choose_remote(session.settings, remote)
    signing_key = share.choose_signing_key(session.settings, key) if sign else None
    with TransferReporter(enabled=not quiet) as reporter:
        moved = share.push(target, session, targets or [], signing_key=signing_key, reporter=reporter, rehash=rehash)
    _report(moved, target.url)


@app.command("pull")
def pull(
    targets: list[str] = typer.Argument(
        ..., metavar="RECIPE|KEY...", help="Recipe files (the steps their locks pin) or keys.", show_default=False
    ),
    remote: str = REMOTE,
    quiet: bool = QUIET,
) -> None:
    """Pull artifacts into the store: a recipe's steps checked against its lock's digests,
    a key no given lock pins by a trusted signature. A refused one never enters the store."""
    session = Session()
    target = share.choose_remote(session.settings, remote)
    trusted = trusted_keys(session.settings)
    with TransferReporter(enabled=not quiet) as reporter:
        moved = share.pull(target, session, targets, trusted=trusted, reporter=reporter)
    _report(moved, target.url)


@app.command("sign")
def sign(targets: list[str] = TARGETS, remote: str = REMOTE, key: str = KEY) -> None:
    """Add your signature to the remote's records of stored artifacts (none named: every
    one the remote has), keeping other signatures; the record must list the same files
    as the artifact here. Only records are rewritten."""
    session = Session()
    target = share.choose_remote(session.settings, remote)
    moved = share.sign(target, session, targets or [], share.choose_signing_key(session.settings, key))
    for m in moved:
        out.print(f"{'signed' if m.what == 'signed' else 'already signed'} {m.key[:16]} {m.label}", highlight=False)
    n = sum(m.what == "signed" for m in moved)
    err.print(f"[green]done[/]: {n} signed, {len(moved) - n} signed already on {escape(target.url)}")


def _what(art) -> str:
    """What an artifact is: a step's method, or an export's format and type (`gguf q8_0`)."""
    entry = art.manifest.get("entry", {})
    return entry.get("method") or " ".join(str(entry[k]) for k in ("export", "type") if k in entry) or "?"
