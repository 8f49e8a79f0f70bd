"""Options and helpers shared by commands."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mergepkg.recipe.model import Recipe
from mergepkg.recipe.parse import load_recipe
from mergepkg.settings import Settings
from mergepkg.store.session import Session

if TYPE_CHECKING:
    from mergepkg.builder.substitute import Policy

RECIPE = typer.Argument(..., help="The recipe file (TOML).", metavar="RECIPE", dir_okay=False)
OFFLINE = typer.Option(False, "--offline", help="Use only the local Hugging Face cache.")
DENY_WARNINGS = typer.Option(
    False, "--deny-warnings", help="Fail (exit 1) on any pitfall warning, e.g. in CI (docs/warnings.md)."
)

CLUSTER_REMOTE = typer.Option(
    None, "--remote", "-r", help="With --ray: the configured remote the cluster shares (default: the only one)."
)


def ray_option(what: str, then: str = "") -> Any:
    """`--ray [ADDRESS]`: an option whose value may be left out (`auto`: app.OPTIONAL_VALUES
    completes the command line)."""
    return typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help=f"{what} on a Ray cluster: `auto` (the default) or its address{then}.",
    )


NO_REMOTE = typer.Option(False, "--no-remote", help="Never take a step from a remote: build what the store lacks.")
PREFER_REMOTE = typer.Option(
    False,
    "--prefer-remote",
    help="Pull every step a remote has, even when building it here would download less (docs/remote.md).",
)


def remote_policy(no_remote: bool, prefer_remote: bool) -> Policy:
    """--no-remote / --prefer-remote as the builder's policy ("auto" without either)."""
    if no_remote and prefer_remote:
        raise typer.BadParameter("--no-remote and --prefer-remote exclude each other", param_hint="--prefer-remote")
    return "never" if no_remote else "prefer" if prefer_remote else "auto"


def open_recipe(path: Path, *, offline: bool = False, **settings) -> tuple[Recipe, Session]:
    base = Settings()
    session = Session(
        replace(base, offline=offline or base.offline, registry_offline=offline or base.registry_offline, **settings)
    )
    return load_recipe(path), session


def parse_size(text: str, option: str = "--shard-size") -> int:
    """'500MB' -> 500_000_000; plain numbers are bytes. Anything else ('1.5.5GB', '.') is
    a usage error naming `option`, never a traceback."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = m and m[2].upper() + ("B" if m[2].upper() in ("K", "M", "G") else "")
    if not m or unit not in units or int(float(m[1]) * units[unit]) < 1:  # '0.1B' is no byte either
        raise typer.BadParameter(f"expected a size like 500MB or 2GB, got {text!r}", param_hint=option)
    return int(float(m[1]) * units[unit])


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
