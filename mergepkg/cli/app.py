"""`mergepkg`: the typer app, global options and the mapping of errors to messages.

Commands are registered lazily, so that `mergepkg --help` and each command pay only
for the modules that command needs (docs/performance.md#startup). `COMMANDS` names
each command's module in this package and its function (or, for a command group, its
`typer.Typer`); adding a command is one line there:

    "export": "export:export",  # mergepkg/cli/export.py, def export(...)

The module is imported when its command runs. `mergepkg --help` lists every command
without importing any: its help line is read from the module's source (the function's
docstring, or a group's `typer.Typer(help=...)`), which is where typer reads it once
the module is imported.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import gc
import importlib
import os
import signal
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

import typer
from typer import _click  # typer vendors click
from typer.core import TyperCommand, TyperGroup

from mergepkg._lazy import STOPS
from mergepkg._version import __version__
from mergepkg.cli import coercion
from mergepkg.cli.output import err, show_error, tolerate_unencodable
from mergepkg.errors import MergepkgError, disk_error

# name -> "module:attribute" in mergepkg.cli, in the order `mergepkg --help` lists them
COMMANDS = {
    "build": "build:build",
    "validate": "validate:validate",
    "plan": "plan:plan",
    "graph": "plan:graph",
    "lock": "lock:lock",
    "verify": "lock:verify",
    "eval": "eval:eval_",
    "tune": "tune:tune",
    "import": "mergekit:import_",
    "methods": "methods:methods",
    "search": "registry:search",
    "info": "registry:info",
    "install": "registry:install",
    "publish": "registry:publish",
    "yank": "registry:yank",
    "push": "push:push",
    "export": "export:export",
    "cache": "cache:app",
    "registry": "registry:app",
    "remote": "remote:app",
}


def load_command(name: str) -> _click.Command:
    """The command `name` as typer makes it, its module imported."""
    module, attribute = COMMANDS[name].split(":")
    target = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


@cache
def _source(module: str) -> ast.Module:
    return ast.parse((Path(__file__).parent / f"{module}.py").read_text())


def source_help(name: str) -> str | None:
    """A command's help as typer reads it, from its module's source (not imported): the
    function's docstring, or the `help` a group's `typer.Typer` is made with. None if
    the source does not say it plainly."""
    module, attribute = COMMANDS[name].split(":")
    for node in _source(module).body:
        if isinstance(node, ast.FunctionDef) and node.name == attribute:
            return ast.get_docstring(node)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and [ast.unparse(t) for t in node.targets] == [attribute]
        ):
            given = {k.arg: k.value for k in node.value.keywords}.get("help")
            return given.value if isinstance(given, ast.Constant) and isinstance(given.value, str) else None
    return None


class _Listed(TyperCommand):
    """A command whose module is not imported yet: its name, and its help once asked for."""


class LazyGroup(TyperGroup):
    """The root command: every command in COMMANDS, listed by name and help line, and
    imported (replaced by the real one) when it runs."""

    def __init__(self, **attrs: Any):
        super().__init__(**attrs)
        for name in COMMANDS:  # keys for listing, and for typer's "did you mean"
            self.commands[name] = _Listed(name=name)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        cmd = self.commands.get(cmd_name)
        if isinstance(cmd, _Listed) and cmd.help is None:  # listed by --help
            cmd.help = source_help(cmd_name)
            if cmd.help is None:  # not plain in the source: ask typer
                cmd = self.commands[cmd_name] = load_command(cmd_name)
        return cmd

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        if args and isinstance(self.commands.get(args[0]), _Listed):
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)


coercion.install()  # typer's parameter coercion without pydantic, where that changes nothing

app = typer.Typer(
    name="mergepkg",
    help="A declarative package manager for LLM weight merges.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
STATE: dict[str, Any] = {"debug": False}  # --debug; the signal that stopped the command


def _version(value: bool):
    if value:
        print(f"mergepkg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    STATE["debug"] = debug


# Options whose value may be left out, and the value they then take: `--ray` alone is
# `--ray auto` (common.ray_option). click's optional values (is_flag=False with a
# flag_value) are gone from typer (0.29 ignores them: "--ray requires an argument"), so
# the command line is completed before typer reads it.
OPTIONAL_VALUES = {"--ray": "auto"}


def with_optional_values(args: list[str]) -> list[str]:
    """args with each option of OPTIONAL_VALUES given its value where it has none: at the
    end, before another option (or `--`), or before what no address is: a recipe or tune
    file (`.toml`, or any file there is) or a published NAME@RANGE."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--":
            return out + args[i + 1 :]
        if arg in OPTIONAL_VALUES and (i + 1 == len(args) or _not_a_value(args[i + 1])):
            out.append(OPTIONAL_VALUES[arg])
    return out


def _not_a_value(arg: str) -> bool:
    """Whether `arg`, after an option of OPTIONAL_VALUES, is the command's next word."""
    if arg.startswith("-") or arg.lower().endswith(".toml") or ("@" in arg and "://" not in arg):
        return True
    with contextlib.suppress(OSError, ValueError):
        return Path(arg).is_file()
    return False


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def stopped() -> int:
    """Say a command was stopped, and by what: every command keeps what it finished and
    leaves the output folder as it was (docs/reliability.md). The exit code is the
    shell's, 128 + the signal."""
    signum = STATE.pop("signal", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    err.print(f"[red]{what}[/]: nothing half-written was kept")
    return 128 + signum


def _stop(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP (a `kill`, a closed terminal) stop a command as Ctrl-C does, so
    the same cleanup runs: a GGUF converter is killed with it, a scratch store removed."""
    STATE["signal"] = signum
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    for s in STOPS:  # Ctrl-C's KeyboardInterrupt is Python's own
        if s != signal.SIGINT and signal.getsignal(s) == signal.SIG_DFL:  # `nohup` ignores SIGHUP: leave it ignored
            signal.signal(s, _stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point: known errors become one clean message and exit 1; --debug re-raises."""
    args = with_optional_values(sys.argv[1:] if argv is None else list(argv))
    try:
        rc = app(args=args, standalone_mode=False)  # typer returns (not raises) Exit codes here
        if rc == INTERRUPTED:  # typer turns Ctrl-C inside a command into a silent Exit(130)
            return stopped()
        return rc if isinstance(rc, int) else 0
    except MergepkgError as e:
        if STATE["debug"]:
            raise
        show_error(e)
        return 1
    except KeyboardInterrupt:  # outside a command: while the command line is read
        return stopped()
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 1
    except typer.exceptions.TyperException as e:  # usage errors: click's own message, exit 2
        # typer raises its (vendored) ClickException subclasses, which have show(); the base declares none
        e.show()  # type: ignore[attr-defined]
        return e.exit_code
    except OSError as e:  # the machine's, not the program's: a full disk, an unwritable one
        # (a stdout whose reader went away is click's: it exits 1 quietly)
        disk = disk_error(e)
        if STATE["debug"] or disk is None:
            raise
        _drop_stdout_if_stuck()  # stdout may be what is full
        show_error(disk)
        return 1


def _drop_stdout_if_stuck() -> None:
    """Point stdout at /dev/null where flushing it fails (the failed write was stdout's),
    so that flushing it at exit cannot fail again."""
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run() -> None:
    """The `mergepkg` program: main(), collecting garbage rarely, and exit without a
    last collection. Importing torch makes ~10^5 long-lived objects: at Python's
    default threshold that cost 475 collections (0.26 s) per build, and a collection of
    them all at exit 0.5 s. Tensors are freed by reference counting, not by the collector;
    at exit the OS frees the memory, and files were closed by then."""
    gc.set_threshold(50_000)
    tolerate_unencodable()
    stop_on_signals()
    rc = main()
    gc.freeze()
    _exit(rc)


def _exit(rc: int) -> None:
    """Exit as Python's shutdown does (threads joined, atexit handlers run, the standard
    streams flushed), then leave without tearing the modules down one by one: after a
    build that loaded torch that teardown took 0.08 s of a 2.4 s build (linear, bench/)."""
    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first (private)
    if shutdown is None:  # a Python without it: the usual way out
        sys.exit(rc)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more to say there
            stream.flush()
    os._exit(rc)


if __name__ == "__main__":
    run()
