"""`mergepkg registry ...`, `search`, `info`, `install`, `publish`, `yank`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from mergepkg.builder.substitute import push_locked
from mergepkg.cli.output import err, out
from mergepkg.errors import RegistryError
from mergepkg.recipe.parse import load_recipe
from mergepkg.registry import audit, packages, tokens
from mergepkg.registry import client as registries
from mergepkg.registry.folder import RegistryFolder
from mergepkg.registry.server import Limits, make_server
from mergepkg.registry.site import write_site
from mergepkg.settings import Settings
from mergepkg.store.session import Session

app = typer.Typer(help="Configure registries; create and serve one.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens that may publish to and yank from a served registry.", no_args_is_help=True)
app.add_typer(token_app, name="token")

REGISTRY = typer.Option(None, "--registry", "-r", help="A configured registry (default: each in order).")
OFFLINE = typer.Option(False, "--offline", help="Only what was fetched before.")


def _settings(offline: bool = False) -> Settings:
    base = Settings()
    return replace(base, offline=offline or base.offline, registry_offline=offline or base.registry_offline)


# -- configuration ---------------------------------------------------------------------
@app.command("add")
def add(
    name: str = typer.Argument(..., help="A name for it, used by --registry."),
    url: str = typer.Argument(..., help="A folder, file:// URL or http(s):// base URL."),
    token: str = typer.Option(
        None, "--token", help="Bearer token for publish and yank (stored 0600; MERGEPKG_TOKEN_<NAME> overrides it)."
    ),
) -> None:
    """Add a registry to the list searched, in order, for packages."""
    reg = registries.add_registry(_settings(), name, url, token)
    err.print(f"[green]added[/] {escape(name)}: {escape(reg.url)}")


@app.command("list")
def list_() -> None:
    """The configured registries, in the order they are searched."""
    table = Table()
    for col in ("name", "url", "token"):
        table.add_column(col, overflow="fold")  # on a narrow terminal, names and sha256s wrap, never cut
    for r in registries.configured(_settings()):
        table.add_row(r.name, r.url, "yes" if r.token else "")
    out.print(table)


@app.command("remove")
def remove(name: str = typer.Argument(...)) -> None:
    """Forget a registry (what was installed from it stays)."""
    settings = _settings()
    client = registries.Client(settings)
    client.registry(name)  # a clear error for an unknown name
    registries.save(settings, [r for r in client.registries if r.name != name])
    err.print(f"[green]removed[/] {escape(name)}")


# -- hosting --------------------------------------------------------------------------
@app.command("init")
def init(
    folder: Path = typer.Argument(..., file_okay=False),
    name: str = typer.Option(..., "--name"),
    private: bool = typer.Option(False, "--private", help="When served, reads too need a token (scope read)."),
) -> None:
    """Create an empty registry folder (serve it, or commit it to git, as it is)."""
    RegistryFolder(folder).init(name, private=private)
    err.print(f"[green]created[/] {'private ' if private else ''}registry {escape(name)} in {escape(str(folder))}")


@app.command("serve")
def serve(
    folder: Path = typer.Argument(..., file_okay=False, exists=True),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8780, "--port", min=0, max=65535, help="Port to listen on; 0: a free one."),
    threads: int = typer.Option(4, "--threads", min=1, help="Requests served at once."),
    per_client: int = typer.Option(Limits.per_client, "--per-client", min=1, help="Connections one address may hold."),
    max_connections: int = typer.Option(Limits.total, "--max-connections", min=1, help="Connections at once, in all."),
    request_seconds: float = typer.Option(
        Limits.request_seconds,
        "--request-timeout",
        min=0.001,
        help="Seconds a client has to send a whole request.",
    ),
) -> None:
    """Serve a registry folder over HTTP; publish and yank need a token."""
    limits = Limits(request_seconds=request_seconds, per_client=per_client, total=max_connections)
    try:
        server = make_server(folder, host, port, threads, limits)
    except (OSError, ValueError) as e:  # the port taken, or a host that is no address of this machine
        raise RegistryError(
            f"cannot listen on {host}:{port}: {e}", hint="pick another --port (0: a free one) or --host"
        ) from None
    err.print(f"serving {escape(str(folder))} on http://{escape(host)}:{server.effective_port} (Ctrl-C stops)")
    try:
        server.run()
    finally:
        server.close()


@app.command("site")
def site(
    folder: Path = typer.Argument(..., file_okay=False, exists=True),
    out: Path = typer.Argument(..., file_okay=False, help="Where to write the site (created; outside FOLDER)."),
    url: str = typer.Option("", "--url", help="Where OUT will be served, for the pages' `registry add` line."),
) -> None:
    """Write the registry's web pages as a static site (with a copy of the registry's files)."""
    count = write_site(folder, out, url)
    err.print(f"[green]wrote[/] {count} pages to {escape(str(out))}")


@token_app.command("create")
def token_create(
    folder: Path = typer.Argument(..., file_okay=False, exists=True),
    label: str = typer.Option(..., "--label", help="Who holds it, e.g. alice or ci."),
    scope: list[str] = typer.Option(
        list(tokens.DEFAULT_SCOPES), "--scope", help="publish, yank or read (reads of a private registry); repeatable."
    ),
    package: list[str] = typer.Option(
        ["*"], "--package", help="Packages it may act on: name, team/* or *; repeatable."
    ),
    expires: str = typer.Option(None, "--expires", help="When it stops working: 90d, or a date like 2027-06-30."),
) -> None:
    """Create a token; it is printed once and only its hash is kept."""
    token = tokens.create(folder, label, scopes=scope, packages=package, expires=_expiry(expires) if expires else None)
    try:
        out.print(token, highlight=False)
        out.file.flush()  # a full disk or a closed pipe fails here, not after the revoke below is out of reach
    except BaseException:
        tokens.revoke(folder, label)  # nobody saw it: a live token no one holds would block the label's retry
        raise
    err.print(f"[green]created[/] a token for {escape(label)}; keep it: it is not stored anywhere")


def _expiry(text: str) -> datetime:
    """`90d` from now, or a UTC date (`2027-06-30`) or time (`2027-06-30T12:00:00`)."""
    try:
        if text.endswith("d") and text[:-1].isdigit():
            return datetime.now(timezone.utc) + timedelta(days=int(text[:-1]))
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: a day count past the year 9999
        raise typer.BadParameter(
            f"expected 90d or a date like 2027-06-30, got {text!r}", param_hint="--expires"
        ) from None


@token_app.command("revoke")
def token_revoke(
    folder: Path = typer.Argument(..., file_okay=False, exists=True), label: str = typer.Option(..., "--label")
) -> None:
    """Stop accepting a token (at once, no restart needed)."""
    tokens.revoke(folder, label)
    err.print(f"[green]revoked[/] the token of {escape(label)}")


@token_app.command("list")
def token_list(folder: Path = typer.Argument(..., file_okay=False, exists=True)) -> None:
    """Labels, scopes, packages, creation and expiry of the tokens (the tokens themselves are not kept)."""
    table = Table()
    for col in ("label", "scopes", "packages", "created", "expires"):
        table.add_column(col, overflow="fold")
    for t in tokens.load(folder):
        table.add_row(t.label, ", ".join(t.scopes), ", ".join(t.packages), t.created, t.expires or "never")
    out.print(table)


@app.command("log")
def log(folder: Path = typer.Argument(..., file_okay=False, exists=True)) -> None:
    """The audit log of a registry folder: every publish and yank, who, when, from where."""
    table = Table()
    for col in ("time", "who", "action", "package", "sha256", "from"):
        table.add_column(col, overflow="fold")
    for row in audit.read(RegistryFolder(folder).private):
        table.add_row(
            row["time"], row["who"], row["action"], f"{row['name']}@{row['version']}", row["sha256"][:16], row["from"]
        )
    out.print(table)


# -- packages -------------------------------------------------------------------------
def search(
    text: str = typer.Argument(..., help="Words that must all appear in name, description or tags."),
    offline: bool = OFFLINE,
) -> None:
    """Find published recipes in the configured registries."""
    found, unreachable = packages.search(registries.Client(_settings(offline)), text)
    for e in unreachable:
        err.print(f"[yellow]warning[/]: {escape(e.message)} (skipped)")
    table = Table()
    for col in ("name", "latest", "registry", "description", "tags"):
        table.add_column(col, overflow="fold")
    for reg, name, info in found:
        latest = info.get("latest", "") + (" (yanked)" if info.get("yanked") else "")
        table.add_row(name, latest, reg.name, info.get("description", ""), ", ".join(info.get("tags", [])))
    out.print(table)
    err.print(f"{len(found)} packages match {escape(repr(text))}")


def info(
    spec: str = typer.Argument(..., metavar="NAME[@RANGE]"), registry: str = REGISTRY, offline: bool = OFFLINE
) -> None:
    """A package's versions (those a range allows), checksums, dependencies and sources."""
    reg, entries = packages.info(registries.Client(_settings(offline)), packages.Spec.parse(spec), registry)
    latest = entries[-1]
    err.print(f"[bold]{escape(latest.name)}[/] from {escape(reg.name)}: {escape(latest.description)}")
    table = Table()
    for col in ("version", "published", "sha256", "dependencies", "sources", "yanked"):
        table.add_column(col, overflow="fold")
    for e in entries:
        deps = ", ".join(f"{d.name} {d.range}" for d in e.dependencies)
        table.add_row(
            e.version,
            e.published,
            e.sha256[:16],
            deps,
            "\n".join(f"{k}: {v}" for k, v in e.sources.items()),
            "yanked" if e.yanked else "",
        )
    out.print(table)


def install(
    spec: str = typer.Argument(..., metavar="NAME[@RANGE]"), registry: str = REGISTRY, offline: bool = OFFLINE
) -> None:
    """Resolve the newest matching version and its dependencies; fetch, verify, keep."""
    deps = packages.install(_settings(offline), packages.Spec.parse(spec), registry)
    for name, pick in deps.picks.items():
        err.print(f"[green]installed[/] {escape(name)} {pick.version} [dim]sha256 {pick.sha256[:16]}[/]")
    for path in deps.files.values():
        out.print(str(path), highlight=False)


def publish(
    recipe: Path = typer.Argument(..., exists=True, dir_okay=False, help="The recipe file."),
    registry: str = typer.Option(..., "--registry", "-r", help="A configured registry."),
    push: str = typer.Option(
        None,
        "--push",
        metavar="REMOTE",
        help="First push the built steps the lock pins to this remote (a configured name or a URL).",
    ),
) -> None:
    """Publish a recipe (and its lock): validated, checksummed, immutable once published."""
    checked = packages.check_publish(_settings(), recipe, registry, against_index=push is not None)  # before any push
    if push is not None:
        session = Session(_settings())
        pushed = push_locked(session.settings, session.store, load_recipe(recipe), push)
        for name, report in pushed.items():
            what = "present" if report.present else f"pushed {len(report.uploaded)} files, {report.nbytes} bytes"
            err.print(f"[green]{what}[/] {escape(name)} [dim]{report.key[:12]}[/]")
    reg, entry, new = packages.publish_checked(_settings(), checked)
    verb = "[green]published[/]" if new else "[yellow]already published[/] (same bytes)"
    err.print(f"{verb} {escape(entry.name)}@{entry.version} to {escape(reg.name)}")
    out.print(f"{entry.name}@{entry.version} sha256:{entry.sha256}", highlight=False)


def yank(
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    registry: str = typer.Option(..., "--registry", "-r"),
    undo: bool = typer.Option(False, "--undo", help="Un-yank."),
) -> None:
    """Hide a version from new resolutions; locks that name it keep working."""
    name, _, version = spec.partition("@")
    if not version:
        raise typer.BadParameter("expected NAME@VERSION", param_hint="NAME@VERSION")
    reg, entry = packages.yank(_settings(), name, version, registry, undo)
    err.print(
        f"[green]{'un-yanked' if undo else 'yanked'}[/] {escape(entry.name)}@{entry.version} in {escape(reg.name)}"
    )
