"""`mergepkg`: the typer app, global options and the mapping of errors to messages."""

from __future__ import annotations

import gc
import sys

import typer

from mergepkg._version import __version__
from mergepkg.cli import build as build_cmd
from mergepkg.cli import cache as cache_cmd
from mergepkg.cli import eval as eval_cmd
from mergepkg.cli import lock as lock_cmd
from mergepkg.cli import mergekit as mergekit_cmd
from mergepkg.cli import methods as methods_cmd
from mergepkg.cli import plan as plan_cmd
from mergepkg.cli import push as push_cmd
from mergepkg.cli import registry as registry_cmd
from mergepkg.cli import remote as remote_cmd
from mergepkg.cli import tune as tune_cmd
from mergepkg.cli.output import err, show_error
from mergepkg.errors import MergepkgError

app = typer.Typer(
    name="mergepkg",
    help="A declarative package manager for LLM weight merges.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
STATE = {"debug": False}


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


app.command("build")(build_cmd.build)
app.command("validate")(build_cmd.validate)
app.command("plan")(plan_cmd.plan)
app.command("graph")(plan_cmd.graph)
app.command("lock")(lock_cmd.lock)
app.command("verify")(lock_cmd.verify)
app.command("eval")(eval_cmd.eval_)
app.command("tune")(tune_cmd.tune)
app.command("import")(mergekit_cmd.import_)
app.command("methods")(methods_cmd.methods)
app.command("search")(registry_cmd.search)
app.command("info")(registry_cmd.info)
app.command("install")(registry_cmd.install)
app.command("publish")(registry_cmd.publish)
app.command("yank")(registry_cmd.yank)
app.command("push")(push_cmd.push)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(registry_cmd.app, name="registry")
app.add_typer(remote_cmd.app, name="remote")


def main(argv: list[str] | None = None) -> int:
    """Entry point: known errors become one clean message and exit 1; --debug re-raises."""
    try:
        rc = app(args=argv, standalone_mode=False)  # typer returns (not raises) Exit codes here
        return rc if isinstance(rc, int) else 0
    except MergepkgError as e:
        if STATE["debug"]:
            raise
        show_error(e)
        return 1
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was written to the output")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 1
    except typer.exceptions.TyperException as e:  # usage errors: click's own message, exit 2
        # typer raises its (vendored) ClickException subclasses, which have show(); the base declares none
        e.show()  # type: ignore[attr-defined]
        return e.exit_code


def run() -> None:
    """The `mergepkg` program: main(), collecting garbage rarely, and exit without a
    last collection. Importing torch makes ~10^5 long-lived objects: at Python's
    default threshold that cost 475 collections (0.26 s) per build, and a collection of
    them all at exit 0.5 s. Tensors are freed by reference counting, not by the collector;
    at exit the OS frees the memory, and files were closed by then."""
    gc.set_threshold(50_000)
    rc = main()
    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    run()
