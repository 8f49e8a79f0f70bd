"""`mergepkg eval`: accuracy and perplexity of models, steps and whole recipes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from mergepkg.cli.common import NO_REMOTE, OFFLINE, PREFER_REMOTE, remote_policy
from mergepkg.cli.output import ProgressReporter, err, print_data
from mergepkg.engine.device import check_device
from mergepkg.eval.run import evaluate_model, task_labels
from mergepkg.eval.targets import target_models
from mergepkg.eval.tasks import load_task
from mergepkg.settings import Settings
from mergepkg.store.evals import EvalCache
from mergepkg.store.session import Session


def eval_(
    targets: list[str] = typer.Argument(
        ...,
        metavar="MODEL_OR_STEP...",
        help="Folder, org/name\\[@rev], recipe.toml (all its models) or recipe.toml:step.",
    ),
    tasks: list[Path] = typer.Option(
        ..., "--task", "-t", help="A .jsonl of prompt/answer (exact match) or a text file (perplexity); repeatable."
    ),
    as_json: bool = typer.Option(False, "--json", help="Also print the results as JSON on stdout."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs."),
    offline: bool = OFFLINE,
    no_remote: bool = NO_REMOTE,
    prefer_remote: bool = PREFER_REMOTE,
) -> None:
    """Evaluate models: exact-match accuracy on task files, perplexity on text; cached.
    Steps the store lacks are pulled from remotes or built, as `build` does."""
    policy = remote_policy(no_remote, prefer_remote)
    check_device(device)  # before anything is built or read
    base = Settings()
    session = Session(Settings(home=base.home, offline=offline or base.offline, device=device))
    task_list = [load_task(t, session.hashes) for t in tasks]
    names = task_labels(task_list)  # `a/t` and `b/t` where two files share a stem
    cache = EvalCache(session.settings.home)
    results = []
    # `cache gc` waits until every step built here is evaluated, not only built
    with session.store.in_use():
        with ProgressReporter() as reporter:
            models = [m for t in targets for m in target_models(t, session, reporter, policy)]
        with Progress(
            TextColumn("[bold]eval[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            job = progress.add_task("", total=len(models))
            for model in models:
                progress.update(job, description=escape(model.label))  # formatted into the column's markup
                mine = evaluate_model(model.folder, model.key, task_list, cache, device=device, names=names)
                results.append(mine)
                progress.update(job, advance=1)
    table = Table(title="evaluation", title_justify="left")
    table.add_column("model")
    for t, name in zip(task_list, names):
        table.add_column(
            f"{escape(name)}\n[dim]{'accuracy' if t.metric == 'exact_match' else 'perplexity'}[/]", justify="right"
        )
    exact = [i for i, t in enumerate(task_list) if t.metric == "exact_match"]
    if len(exact) > 1:
        table.add_column("mean\n[dim]accuracy[/]", justify="right")
    for model, mine in zip(models, results):
        cells = [f"{r.value:.3f}" if r.metric == "exact_match" else f"{r.value:.2f}" for r in mine]
        if len(exact) > 1:
            cells.append(f"{sum(mine[i].value for i in exact) / len(exact):.3f}")
        table.add_row(Text(model.label), *cells)
    err.print(table)
    if as_json:
        print_data([{"model": m.label, "key": m.key, **asdict(r)} for m, mine in zip(models, results) for r in mine])
