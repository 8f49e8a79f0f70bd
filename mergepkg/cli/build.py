"""`mergepkg build`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.markup import escape

from mergepkg.builder.build import BuildReport
from mergepkg.builder.build import build as build_recipe
from mergepkg.builder.share import choose_remote
from mergepkg.cli.common import (
    CLUSTER_REMOTE,
    DENY_WARNINGS,
    NO_REMOTE,
    OFFLINE,
    PREFER_REMOTE,
    open_recipe,
    parse_size,
    ray_option,
    remote_policy,
)
from mergepkg.cli.output import ProgressReporter, err, out, show_pitfall
from mergepkg.cluster.driver import build_on_cluster
from mergepkg.cluster.plan import Split
from mergepkg.engine.device import check_device
from mergepkg.errors import RegistryError, SourceError
from mergepkg.pitfalls.params import unresolved_pitfalls
from mergepkg.pitfalls.pitfall import WarningsDenied, deny
from mergepkg.recipe.model import Recipe
from mergepkg.registry import packages
from mergepkg.resolve.resolution import Mode
from mergepkg.settings import Settings

LLAMA_CPP = typer.Option(
    None, "--llama-cpp", help="A llama.cpp source tree, for GGUF exports (default: MERGEPKG_LLAMA_CPP)."
)


def build(
    recipes: list[str] = typer.Argument(
        ..., metavar="RECIPE...", help="Recipe files, or NAME or NAME@RANGE of published recipes."
    ),
    out_dir: Path = typer.Option(
        None, "--out", "-o", help="Output folder (default: out/<package name>); one recipe only."
    ),
    device: str = typer.Option("cpu", "--device", help="Where the math runs: cpu, cuda, cuda:N, mps."),
    seed: int = typer.Option(None, "--seed", help="Seed for random methods (default: the recipe's)."),
    offline: bool = OFFLINE,
    locked: bool = typer.Option(False, "--locked", help="Fail if the recipe's lock is missing or out of date."),
    frozen: bool = typer.Option(False, "--frozen", help="Use the lock as is: never resolve, never touch the network."),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Threads for the math (default: torch's, usually all cores): torch's for most methods; "
        "light methods and fused kernels share work out to mergepkg's own, torch on one.",
    ),
    shard_size: str = typer.Option("2GB", "--shard-size", help="Largest output shard, e.g. 500MB, 5GB."),
    max_memory: str = typer.Option(
        None,
        "--max-memory",
        help="Memory to stay under, e.g. 2GB: less read-ahead, "
        "and elementwise methods merge large tensors in blocks of rows.",
    ),
    verify_store: bool = typer.Option(
        False,
        "--verify-store",
        help="Re-read every tensor of what is reused from the store (--locked and "
        "--frozen re-read a random sample of each).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    deny_warnings: bool = DENY_WARNINGS,
    no_remote: bool = NO_REMOTE,
    prefer_remote: bool = PREFER_REMOTE,
    ray: str = ray_option("Build", ", through a remote (docs/cluster.md)"),
    remote_name: str = CLUSTER_REMOTE,
    split: int | None = typer.Option(
        None, "--split", min=1, help="With --ray: split each large step by tensors over N workers (see --split-bytes)."
    ),
    split_bytes: str | None = typer.Option(
        None, "--split-bytes", help="With --split: the output size from which a step is split (default 1GB), e.g. 5GB."
    ),
    llama_cpp: Path = LLAMA_CPP,
) -> None:
    """Build recipes' outputs: steps already in the store are reused, steps the remotes
    hold pulled when that moves less, the rest built (here, or with --ray on a cluster)."""
    policy = remote_policy(no_remote, prefer_remote)
    if locked and frozen:  # usage errors (exit 2), as typer's own
        raise typer.BadParameter(
            "--locked and --frozen exclude each other (--frozen implies --locked)", param_hint="--frozen"
        )
    if out_dir is not None and len(recipes) > 1:
        raise typer.BadParameter(
            "--out takes one recipe; without it each recipe goes to out/<package name>", param_hint="--out"
        )
    if ray is None:
        for value, option in ((split, "--split"), (split_bytes, "--split-bytes"), (remote_name, "--remote")):
            if value is not None:  # the cluster's options would be ignored without --ray
                raise typer.BadParameter(f"{option} needs --ray", param_hint=option)
        check_device(device)  # on a cluster, each worker checks its own (cluster/worker.py)
    else:
        _check_cluster(no_remote=no_remote, prefer_remote=prefer_remote)
    cut = _split(split, split_bytes)
    options: dict = dict(
        offline=offline,
        device=device,
        threads=threads,
        max_shard_bytes=parse_size(shard_size),
        max_memory=parse_size(max_memory, "--max-memory") if max_memory else None,
    )
    if llama_cpp is not None:
        options["llama_cpp"] = llama_cpp
    opened = [open_recipe(_recipe_file(recipe, offline), **options) for recipe in recipes]
    session = opened[0][1]
    targets = [out_dir or Path("out") / r.name for r, _ in opened]
    mode: Mode = "frozen" if frozen else "locked" if locked else "update"
    if deny_warnings and len(opened) > 1:
        _deny_recipe_warnings([r for r, _ in opened])
    reports: list[BuildReport]
    with ProgressReporter(enabled=not quiet) as reporter:
        if ray is not None:
            url = choose_remote(session.settings, remote_name).url
            reports = build_on_cluster(
                [r for r, _ in opened],
                session,
                address=ray,
                remote=url,
                outs=targets,
                seed=seed,
                mode=mode,
                reporter=reporter,
                verify_store=verify_store,
                deny_warnings=deny_warnings,
                split=cut,
                remote_name=remote_name,
            ).reports
        else:
            reports = []
            for (r, session), target in zip(opened, targets):
                try:
                    report = build_recipe(
                        r,
                        session,
                        out=target,
                        seed=seed,
                        mode=mode,
                        reporter=reporter,
                        verify_store=verify_store,
                        deny_warnings=deny_warnings,
                        remote=policy,
                    )
                except WarningsDenied as e:
                    raise _denied_after(e, r, [b.resolution.recipe.display for b in reports]) from None
                reports.append(report)
    for report in reports:
        tell(report)


def _deny_recipe_warnings(recipes: list[Recipe]) -> None:
    """--deny-warnings over several recipes: every recipe's MP1xx warnings shown and denied
    before the first is built, as one recipe's are before anything of it is written (a
    recipe with registry dependencies, and every MP2xx, are checked as each builds)."""
    found = [p for r in recipes for p in unresolved_pitfalls(r) or []]
    for p in found:
        show_pitfall(p)
    deny(found, "nothing was built")


def _denied_after(e: WarningsDenied, recipe: Recipe, built: list[Path]) -> WarningsDenied:
    """`e` for a recipe after others were built (their outputs and locks are written): its
    message says so, where it would say that nothing was."""
    if not built:
        return e
    done = f"{', '.join(map(str, built))}, before it, {'was' if len(built) == 1 else 'were'} built"
    return WarningsDenied(f"{e.message} for {recipe.display}; {done}", hint=e.hint)


def _check_cluster(*, no_remote: bool, prefer_remote: bool) -> None:
    """What --ray cannot honour: usage errors, before anything is resolved."""
    if no_remote:
        raise typer.BadParameter(
            "--ray builds through a remote: --no-remote cannot go with it", param_hint="--no-remote"
        )
    if prefer_remote:
        raise typer.BadParameter(
            "--prefer-remote cannot go with --ray: a cluster build takes every step its remote holds already",
            param_hint="--prefer-remote",
        )


def _split(count: int | None, min_bytes: str | None) -> Split | None:
    """--split N (with --split-bytes) as the driver's `Split`; None for one part."""
    if min_bytes is not None and count is None:
        raise typer.BadParameter("--split-bytes needs --split N", param_hint="--split-bytes")
    threshold = parse_size(min_bytes or "1GB", "--split-bytes")
    return Split(count, threshold) if count is not None and count > 1 else None


def tell(report: BuildReport) -> None:
    """What a build did, on stderr; its output folders on stdout."""
    for name, remote in report.pulled.items():
        err.print(f"[green]pulled[/] {name} [dim]{report.resolution.keys[name][:12]}[/] from {escape(remote)}")
    for name in report.built:
        err.print(f"[green]built[/] {name} [dim]{report.resolution.keys[name][:12]}[/]")
    for name in report.exported:
        export = report.resolution.recipe.exports[name]
        err.print(f"[green]exported[/] {name} ({export.format} {export.type}) [dim]{report.exports[name].key[:12]}[/]")
    pulled = f", {len(report.pulled)} pulled from remotes" if report.pulled else ""
    exported = f", {len(report.exported)} exported" if report.exported else ""
    err.print(
        f"[green]done[/]: {len(report.built)} built, {len(report.reused)} reused from the store{pulled}{exported}"
    )
    for folder in report.outputs.values():
        out.print(str(folder), highlight=False)
    for file in report.placed_exports.values():
        out.print(str(file), highlight=False)


def _recipe_file(arg: str, offline: bool) -> Path:
    """The recipe file to build: `arg` itself, or a registry package installed for it."""
    if not packages.looks_like_spec(arg):
        return Path(arg)
    settings = Settings()
    try:
        spec = packages.Spec.parse(arg)
        deps = packages.install(replace(settings, registry_offline=True) if offline else settings, spec)
    except RegistryError as e:  # neither a file nor a package: say both
        raise SourceError(
            f"no recipe file {arg!r}, and no published package: {e.message}",
            hint=e.hint or "give a recipe file, or NAME[@RANGE] of a published recipe",
        ) from None
    err.print(f"[green]installed[/] {spec.name} {deps.picks[spec.name].version}")
    return deps.files[spec.name]
