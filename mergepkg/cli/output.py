"""Shared rendering: consoles, error messages, progress bars."""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from mergepkg._lazy import lazy_import
from mergepkg.errors import MergepkgError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from mergepkg.pitfalls.pitfall import Pitfall

bars = lazy_import("rich.progress")  # imported by the first progress bar: most commands draw none

UNBOUNDED = 1 << 16  # the width of a stream that is no terminal: wider than any table or tree we print


class UncroppedConsole(Console):
    """A console that crops nothing where its file is no terminal: rich would otherwise
    take 80 columns and cut tables, sha256s and tree lines to fit (`mergepkg plan | less`,
    `mergepkg eval ... 2> eval.log`)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if _is_tty(self.file) else ConsoleDimensions(UNBOUNDED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


def _is_tty(file: object) -> bool:
    """Whether `file` is a terminal (FORCE_COLOR may make rich style a pipe; it is still a pipe)."""
    try:
        return bool(file.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


# data: strings are never read as markup (a folder named `final [v2]` is printed as it
# is; styled parts are built as `Text`)
out = UncroppedConsole(soft_wrap=True, markup=False)
err = UncroppedConsole(stderr=True, soft_wrap=True)  # everything else: markup, with every user value escaped


_SURROGATES = codecs.lookup_error("surrogateescape")


def escape_unencodable(error: UnicodeError) -> tuple[str | bytes, int]:
    """stdout's error handler (`tolerate_unencodable`): a file name's undecodable bytes
    (surrogates) go out as those bytes, and a character the encoding lacks as a `\\x`,
    `\\u` escape, so data is never lost to a traceback after the work is done."""
    try:
        return _SURROGATES(error)
    except UnicodeError:
        return codecs.backslashreplace_errors(error)


def tolerate_unencodable() -> None:
    """Write names stdout's encoding cannot hold instead of failing: a folder named in
    Latin-1 under a UTF-8 locale, a CJK description under a Latin-1 one (stderr already
    escapes them, as Python sets it up)."""
    codecs.register_error("mergepkg.escape", escape_unencodable)
    with contextlib.suppress(AttributeError, ValueError):  # not a text stream, or closed
        sys.stdout.reconfigure(errors="mergepkg.escape")  # type: ignore[union-attr]


def show_error(e: MergepkgError) -> None:
    where = f"[bold]{escape(e.where)}[/]: " if e.where else ""
    err.print(f"[red]error:[/] {where}{escape(e.message)}")
    if e.hint:
        err.print(f"  [dim]hint:[/] {escape(e.hint)}")


def show_pitfall(p: Pitfall) -> None:
    """`warning: MP101: recipe.toml:14: steps.x.inputs: message` and its hint (docs/warnings.md)."""
    where = f"[bold]{escape(p.where)}[/]: " if p.where else ""
    err.print(f"[yellow]warning:[/] [bold]{p.code}[/]: {where}{escape(p.message)}")
    if p.hint:
        err.print(f"  [dim]hint:[/] {escape(p.hint)}")


class ProgressReporter:
    """The engine's Reporter drawn with rich: per step, bytes read and tensors done."""

    def __init__(self, enabled: bool = True):
        self.progress: Progress = bars.Progress(
            bars.TextColumn("[bold]{task.description}"),
            bars.BarColumn(),
            bars.DownloadColumn(),
            bars.TransferSpeedColumn(),
            bars.TextColumn("{task.fields[done]}/{task.fields[tensors]} tensors"),
            bars.TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self.task: TaskID | None = None  # the bar of the step being built

    def __enter__(self) -> ProgressReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.progress)

    def step_reused(self, name: str, key: str) -> None:
        if not self.progress.disable:
            self.progress.console.print(f"[dim]stored[/] {name} [dim]{key[:12]}[/]")

    def step_started(self, name: str, tensors: int, nbytes: int) -> None:
        self.task = self.progress.add_task(name, total=nbytes, done=0, tensors=tensors)

    def tensor_done(self, nbytes: int) -> None:
        done = self.progress.tasks[-1].fields["done"] + 1
        self.progress.update(self._task(), advance=nbytes, done=done)

    def step_finished(self, name: str) -> None:
        self.progress.update(self._task(), completed=self.progress.tasks[-1].total)

    def warning(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(message)}")  # shown even with -q

    def pitfall(self, pitfall: Pitfall) -> None:
        show_pitfall(pitfall)  # err is the progress bars' console: printed above them

    def pull_started(self, name: str, remote: str, nbytes: int) -> None:
        self.task = self.progress.add_task(f"{name} [dim]from {escape(remote)}[/]", total=nbytes, done="-", tensors="-")

    def pull_progress(self, done: int) -> None:
        self.progress.update(self._task(), completed=done)

    def step_pulled(self, name: str, key: str, remote: str) -> None:
        self.progress.update(self._task(), completed=self.progress.tasks[-1].total)

    def step_placed(self, name: str, key: str, node: str) -> None:  # a cluster build (mergepkg/cluster/)
        if not self.progress.disable:
            self.progress.console.print(f"[dim]started[/] {name} [dim]on node {node[:12]}[/]")

    def step_built(self, name: str, key: str, node: str) -> None:
        if not self.progress.disable:
            self.progress.console.print(f"[green]built[/] {name} [dim]{key[:12]} on node {node[:12]}[/]")

    def total_grown(self, tensors: int, nbytes: int) -> None:  # a step laid out on its node (mergepkg/cluster/)
        task = self.progress.tasks[-1]
        self.progress.update(self._task(), total=(task.total or 0) + nbytes, tensors=task.fields["tensors"] + tensors)

    def _task(self) -> TaskID:
        assert self.task is not None  # the engine starts a step before it reports on its tensors
        return self.task


class TransferReporter:
    """Pushes and pulls drawn with rich: one bar per artifact, in bytes."""

    def __init__(self, enabled: bool = True):
        self.progress: Progress = bars.Progress(
            bars.TextColumn("[bold]{task.description}"),
            bars.BarColumn(),
            bars.DownloadColumn(),
            bars.TransferSpeedColumn(),
            bars.TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}  # by key

    def __enter__(self) -> TransferReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.progress)

    def transfer_started(self, label: str, key: str) -> Callable[[str, int, int], None]:
        task = self.tasks[key] = self.progress.add_task(escape(label), total=None)

        def moved(name: str, done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total)

        return moved

    def transfer_finished(self, label: str, key: str, what: str, nbytes: int) -> None:
        task = self.tasks.pop(key)
        if nbytes:
            self.progress.update(task, completed=nbytes, total=nbytes)
        else:  # nothing moved (the remote had it): no bar
            self.progress.remove_task(task)


def _stop(progress: Progress) -> None:
    """Stop the bars; where none was drawn, without the empty line rich leaves on a stream
    that is no terminal (before an error, it made the error's one line two)."""
    if progress.tasks or progress.disable:
        progress.stop()
    else:  # Progress.stop ends a stream's last drawing with a line of its own
        progress.live.transient = True
        progress.live.stop()


def print_data(data: Any) -> None:
    """`data` as JSON on stdout, every NaN and infinity as null: strict JSON has no such
    numbers, and a score that is none (a perplexity that overflowed) is no value. Never
    coloured: FORCE_COLOR (set by many CI systems) would put escape codes into the JSON."""
    out.print_json(json.dumps(_json_safe(data)), highlight=False)


def _json_safe(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_json_safe(v) for v in data]
    return data
