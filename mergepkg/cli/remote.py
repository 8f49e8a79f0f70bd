"""`mergepkg remote`: configure remotes and trusted keys, make a signing key, and
collect a remote's garbage."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from mergepkg.builder import share
from mergepkg.cli.common import size
from mergepkg.cli.output import err, out
from mergepkg.remote import config
from mergepkg.remote.sign import generate_key, keys_dir, load_signing_key, parse_public_key
from mergepkg.settings import Settings

app = typer.Typer(help="Remotes: stores shared between machines (docs/remote.md).", no_args_is_help=True)

TRUSTED_KEY = typer.Option(
    None,
    "--trusted-key",
    metavar="NAME:BASE64",
    help="Trust this public key's signatures for steps no lock pins (repeatable).",
)


@app.command("add")
def add(
    name: str = typer.Argument(None, help="A name for the remote, used by -r."),
    url: str = typer.Argument(
        None, help="file:///folder (or a folder), s3://BUCKET\\[/PREFIX], hf://datasets/ORG/NAME."
    ),
    trusted_key: list[str] = TRUSTED_KEY,
) -> None:
    """Add a remote, and/or trust public keys. Credentials are never stored here: each
    backend reads its own (AWS_* and ~/.aws for S3, HF_TOKEN or `hf auth login`)."""
    settings = Settings()
    if name is None and not trusted_key:  # usage errors (exit 2)
        raise typer.BadParameter("give NAME URL, or --trusted-key NAME:BASE64", param_hint="NAME")
    if name is not None and url is None:
        raise typer.BadParameter(f"no URL for remote {name!r}: mergepkg remote add NAME URL", param_hint="URL")
    for key in trusted_key or ():
        parse_public_key(key)  # every key checked before anything is written
    if name is not None:
        remote = config.add_remote(settings, name, url)
        err.print(f"[green]added[/] {escape(remote.name)}: {escape(remote.url)}")
    for key in trusted_key or ():
        err.print(f"[green]trusted[/] {escape(config.trust_key(settings, key))}")


@app.command("list")
def list_() -> None:
    """The configured remotes, the trusted public keys and this home's signing keys, a
    line each: `remote NAME URL`, `trusted NAME:BASE64`, `signing NAME:BASE64` (public)."""
    settings = Settings()
    for r in config.configured(settings):
        out.print(f"remote {r.name} {r.url}", highlight=False)
    for key in config.trusted_keys(settings):
        out.print(f"trusted {key}", highlight=False)
    for secret in sorted(keys_dir(settings).glob("*.secret")):
        out.print(f"signing {load_signing_key(settings, secret.stem).public}", highlight=False)


@app.command("remove")
def remove(name: str = typer.Argument(..., help="The remote to forget (nothing on it is touched).")) -> None:
    """Forget a remote; what it holds stays there."""
    gone = config.remove_remote(Settings(), name)
    err.print(f"[green]removed[/] {escape(gone.name)}: {escape(gone.url)}")


@app.command("untrust")
def untrust(name: str = typer.Argument(..., help="The trusted key's name (before the colon).")) -> None:
    """Stop trusting a public key's signatures."""
    config.untrust_key(Settings(), name)
    err.print(f"[green]untrusted[/] {escape(name)}")


@app.command("keygen")
def keygen(name: str = typer.Argument(..., help="The key's name, e.g. your team's or host's.")) -> None:
    """Make an ed25519 signing key (as `nix key generate-secret`): the secret stays in
    $MERGEPKG_HOME/keys/NAME.secret (0600); stdout is the public key, NAME:BASE64, for
    others' `mergepkg remote add --trusted-key`."""
    settings = Settings()
    key = generate_key(settings, name)
    out.print(key.public, highlight=False)
    err.print(f"[green]secret key[/] in {escape(str(keys_dir(settings) / (name + '.secret')))}")


@app.command("gc")
def gc(
    name: str = typer.Argument(..., help="The remote."),
    keep: list[str] = typer.Option(
        None,
        "--keep",
        metavar="RECIPE|NAME@RANGE",
        help="Keep the steps a recipe's lock, or every matching published version's lock, pins (repeatable).",
    ),
    keep_lock: list[Path] = typer.Option(None, "--keep-lock", metavar="LOCK", help="Keep what a lock file pins."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing."),
) -> None:
    """Remove from a remote every artifact the given recipes' (or published packages') locks do not pin: records
    first, then their files; files no record names once older than an hour (a push in
    flight keeps its files). Safe while others pull: they refuse what went."""
    settings = Settings()
    remote = share.choose_remote(settings, name)
    keep_keys, roots = share.gc_roots(keep or [], keep_lock or [], settings)
    report = share.remote_gc(remote, keep_keys, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for key in report.removed:
        out.print(f"{verb} {key[:16]}", highlight=False)
    err.print(
        f"{verb} {len(report.removed)} artifacts and {len(report.files)} files from {escape(remote.url)};"
        f" kept what {len(roots)} locks pin ({len(keep_keys)} keys)"
    )


def summary(moved: list[share.Moved], remote: str) -> str:
    """`2 pushed (3.4 MB), 1 already on file:///...`: what a push or pull did, counted."""
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for m in moved:
        counts[m.what] = counts.get(m.what, 0) + 1
        nbytes[m.what] = nbytes.get(m.what, 0) + m.nbytes
    words = {
        "present": f"already on {remote}",
        "stored": "already stored here",
        "skipped": "skipped (not stored here, and the outputs do not need them)",
    }
    parts = [
        f"{n} {words.get(what, what)}"
        + (f" ({size(nbytes[what])})" if what in ("pushed", "pulled", "repaired") else "")
        for what, n in counts.items()
    ]
    return ", ".join(parts) or "nothing to do"
