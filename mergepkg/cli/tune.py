"""`mergepkg tune`: search a step's merge parameters; every trial a cached build."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mergepkg import api
from mergepkg.cli.common import CLUSTER_REMOTE, ray_option
from mergepkg.cli.output import ProgressReporter, err, out, print_data
from mergepkg.engine.device import check_device
from mergepkg.settings import Settings
from mergepkg.store.session import Session
from mergepkg.tune.log import Trial
from mergepkg.tune.report import figures, text_plot
from mergepkg.tune.search import Finished, Searched


def tune(
    tune_file: Path = typer.Argument(..., metavar="TUNE_FILE", help="The search description (TOML).", dir_okay=False),
    trials: int | None = typer.Option(None, "--trials", "-n", min=1, help="Trials in all (overrides the file's)."),
    seconds: float | None = typer.Option(None, "--seconds", min=1, help="Trial time in all (overrides the file's)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the trial log and search from the start."),
    device: str = typer.Option("cpu", "--device", help="Where builds and evaluations run."),
    offline: bool = typer.Option(False, "--offline", help="Use only the local Hugging Face cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the trials and the result as JSON on stdout."),
    ray: str = ray_option("Run each generation's trials at once"),
    remote_name: str = CLUSTER_REMOTE,
) -> None:
    """Search a step's parameters on validation tasks, resuming from the trial log; write,
    build and lock the best as best.toml and report it on the held-out test tasks."""
    if ray is None:  # on a cluster, each worker checks its own
        check_device(device)
    base = Settings()
    session = Session(Settings(home=base.home, offline=offline or base.offline, device=device))

    def told(trial: Trial, resumed: bool) -> None:
        how = "logged" if resumed else "stored" if trial.stored else "built"
        where = f" [dim]on {trial.node[:8]}[/]" if trial.node and not resumed else ""
        cells = escape(" ".join(f"{k}={v}" for k, v in trial.values.items()))
        err.print(f"trial {trial.number:>3} [dim]{how:>6}[/] {trial.objective:.4f}{where}  [dim]{cells}[/]")

    with ProgressReporter(enabled=False) as reporter:
        searched, finished = api.tune(
            tune_file,
            session=session,
            trials=trials,
            seconds=seconds,
            restart=restart,
            reporter=reporter,
            on_trial=told,
            ray=ray,
            remote=remote_name,
        )
    for w in searched.warnings:
        err.print(f"[yellow]warning[/]: {escape(w)}")
    _render(searched, finished)
    if as_json:
        result = {"best": asdict(finished.best), "test": finished.test, "recipe": str(finished.recipe)}
        print_data({"trials": [asdict(t) for t in searched.trials], **result})
    else:
        out.print(str(finished.recipe), highlight=False)


def _render(searched: Searched, finished: Finished) -> None:
    spec, best = searched.spec, finished.best
    table = Table(title=Text(f"tune {spec.path.name}: step {spec.step}"), title_justify="left")
    table.add_column("trial", justify="right")
    paths = list(best.values)
    for p in paths:
        table.add_column(Text(p.removeprefix(f"steps.{spec.step}.").removeprefix("inputs").removeprefix("params.")))
    table.add_column("valid.", justify="right")
    table.add_column("key")
    table.add_column("build+eval s", justify="right")
    top = sorted(searched.trials, key=lambda t: (-t.objective, t.number))[:10]
    for t in top:
        style = "bold" if t.number == best.number else None
        cells = [Text(str(t.values[p])) for p in paths]  # a value may be a list: [0.5, 1.0]
        times = f"{t.build_s:.1f}+{t.eval_s:.1f}" + (" stored" if t.stored else "")
        table.add_row(
            str(t.number), *cells, f"{t.objective:.4f}", t.key.removeprefix("sha256:")[:8], times, style=style
        )
    err.print(table)
    err.print(
        "\n".join(["validation objective against trial (● a new best, ─ best so far):", *text_plot(searched.trials)]),
        markup=False,
    )
    result = Table(title="held-out test (never read by the search)", title_justify="left")
    result.add_column("model")
    names = [k for k in finished.test if k != "objective"]
    for n in names:
        result.add_column(Text(n), justify="right")
    result.add_column(f"{spec.combine}", justify="right")
    result.add_column(f"validation {spec.combine}", justify="right")
    written_val = finished.written_validation["objective"]
    for label, test, val in (
        (f"{spec.recipe.name}:{spec.evaluate} as written", finished.written_test, written_val),
        (f"best.toml:{spec.evaluate} (trial {best.number})", finished.test, best.objective),
    ):
        result.add_row(Text(label), *[f"{test[n]:.3f}" for n in names], f"{test['objective']:.3f}", f"{val:.3f}")
    err.print(result)
    f = figures(searched.trials)
    err.print(
        f"{f.trials} trials ({searched.resumed} from the log, stopped by {searched.stopped}): "
        f"{f.per_hour:.0f} trials/hour of trial time, {f.build_share:.0%} building "
        f"({f.mean_build_s:.2f} s each), {f.eval_share:.0%} evaluating ({f.mean_eval_s:.2f} s each); "
        f"{f.stored} trials found their key stored"
    )
    err.print(
        f"wrote {finished.recipe.name}, {finished.lock.name}, {finished.plot.name} and trials.jsonl in {spec.folder}",
        markup=False,
    )
