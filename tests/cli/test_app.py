"""The root command: commands registered lazily, listed with the help typer gives them
once imported, and modules imported only when their command runs."""

from __future__ import annotations

import ast
import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

from mergepkg.cli import app as app_module
from mergepkg.cli.app import COMMANDS, load_command, source_help


@pytest.mark.parametrize("name", COMMANDS)
def test_the_help_read_from_source_is_the_help_typer_gives(name):
    assert source_help(name) == load_command(name).help
    assert load_command(name).name == name


def test_commands_are_modules_of_the_cli_that_never_import_the_app():
    """The import in load_command is hidden from lint-imports and the layers test: it
    stays inside cli/ (the top layer) and cannot close a cycle through cli/app.py."""
    cli_dir = Path(app_module.__file__).parent
    for name, target in COMMANDS.items():
        module = cli_dir / f"{target.split(':')[0]}.py"
        assert module.is_file(), name
        imported = {node.module for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, ast.ImportFrom)}
        assert "mergepkg.cli.app" not in imported, name


def test_help_lists_every_command_with_its_help_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per paragraph
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for name in COMMANDS:
        first_line = (source_help(name) or "").split("\n")[0]
        assert any(line.strip(" │").startswith(f"{name} ") and first_line in line for line in out.splitlines()), name


def test_a_command_runs_through_its_lazily_imported_module(capsys):
    code, out, _ = cli(capsys, "methods")
    assert code == 0
    assert "ties" in out


def test_a_mistyped_command_is_told_the_nearest_one(capsys):
    code, _, err = cli(capsys, "biuld")
    assert code == 2
    assert "Did you mean 'build'?" in err


def test_a_command_the_source_does_not_describe_plainly_is_asked_of_typer(monkeypatch):
    monkeypatch.setitem(COMMANDS, "methods-again", "methods:methods")
    monkeypatch.setattr(app_module, "source_help", lambda name: None)
    group = app_module.LazyGroup(name="mergepkg")
    command = group.get_command(None, "methods-again")
    assert command is not None and command.help == load_command("methods").help


HEAVY = ("torch._C", "networkx", "transformers", "numpy", "pydantic", "mergepkg.builder", "mergepkg.recipe.plan")


@pytest.mark.slow
def test_the_root_command_imports_no_command_and_no_heavy_library():
    probe = f"import sys, mergepkg.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_the_program_exits_as_python_would_without_tearing_modules_down(tmp_path):
    """run() leaves through app._exit: threads still running are waited for, atexit
    handlers run, what was printed reaches the pipe, and the exit code is main()'s."""
    marker = tmp_path / "thread-done"
    script = f"""
import atexit, sys, threading, time
from mergepkg.cli import app
def late():
    time.sleep(0.3)
    open({str(marker)!r}, "w").write("done")
threading.Thread(target=late).start()
atexit.register(lambda: print("atexit ran", file=sys.stderr))
sys.stdout.write("no newline, still buffered")
app._exit(3)
raise AssertionError("not reached")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, still buffered"
    assert done.stderr == "atexit ran\n"
    assert marker.read_text() == "done"


def test_without_pythons_private_shutdown_the_program_exits_the_usual_way():
    script = """
import atexit, sys, threading
from mergepkg.cli import app
shutdown = threading._shutdown
del threading._shutdown
atexit.register(lambda: print("atexit ran", file=sys.stderr))
try:
    app._exit(4)
except SystemExit as e:
    print("sys.exit", e.code)
    threading._shutdown = shutdown  # Python's own shutdown calls it next
    raise
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (4, "sys.exit 4\n", "atexit ran\n")


def _fail_with(monkeypatch, error: OSError) -> None:
    """`mergepkg methods` failing with `error` as it makes its table."""
    import mergepkg.cli.methods

    def table(*args, **kwargs):
        raise error

    monkeypatch.setattr(mergepkg.cli.methods, "Table", table)


def test_a_full_disk_is_one_line_and_a_hint_not_a_traceback(capsys, monkeypatch):
    _fail_with(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/home/u/.mergepkg/tmp/x.safetensors"))
    code, _, err = cli(capsys, "methods")
    assert code == 1
    assert err.startswith("error: No space left on device (/home/u/.mergepkg/tmp/x.safetensors)\n")
    assert "mergepkg cache gc" in err and "Traceback" not in err
    with pytest.raises(OSError):  # --debug shows where
        cli(capsys, "--debug", "methods")


def test_an_os_error_of_the_program_still_shows_its_traceback(capsys, monkeypatch):
    """Only errors of the machine (a full disk, a read-only one, an I/O error) are said in a
    line; any other OSError that reaches the CLI is a bug to report, with its traceback."""
    _fail_with(monkeypatch, FileNotFoundError(errno.ENOENT, "No such file or directory", "x"))
    with pytest.raises(FileNotFoundError):
        cli(capsys, "methods")


def test_stdout_on_a_full_device_ends_in_an_error_line():
    done = subprocess.run(
        f"{shlex.quote(sys.executable)} -m mergepkg --help > /dev/full",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: No space left on device"), done.stderr
    assert "Traceback" not in done.stderr


def test_stdout_closed_by_its_reader_ends_quietly(tmp_path):
    """`mergepkg import config.yml | head -1`, the pipe closed before the recipe is
    written (`import` writes to stdout directly; click turns EPIPE into exit 1)."""
    config = tmp_path / "config.yml"
    config.write_text("merge_method: linear\nmodels:\n  - model: org/a\n  - model: org/b\ndtype: float32\n")
    script = f"import sys; from mergepkg.cli.app import run; sys.argv = ['mergepkg', 'import', {str(config)!r}]; run()"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away at once
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "Error" not in err, err


@pytest.mark.parametrize(
    ("args", "completed"),
    [
        (["build", "a.toml", "--ray"], ["build", "a.toml", "--ray", "auto"]),
        (["build", "--ray", "a.toml", "b.toml"], ["build", "--ray", "auto", "a.toml", "b.toml"]),
        (["tune", "t.toml", "--ray", "-r", "shared"], ["tune", "t.toml", "--ray", "auto", "-r", "shared"]),
        (["build", "a.toml", "--ray", "--", "b.toml"], ["build", "a.toml", "--ray", "auto", "--", "b.toml"]),
        (["build", "a.toml", "--ray", "head:6379"], None),
        (["build", "a.toml", "--ray=head:6379"], None),
        (["build", "--", "--ray"], None),  # past `--`, an argument
        (["build", "--ray", "merges/demo@^1.2"], ["build", "--ray", "auto", "merges/demo@^1.2"]),  # a registry name
        (["build", "--ray", "A.TOML"], ["build", "--ray", "auto", "A.TOML"]),
        (["build", "--ray", __file__], ["build", "--ray", "auto", __file__]),  # a file, whatever its name
        (["build", "a.toml", "--ray", "ray://head:10001"], None),
    ],
)
def test_an_option_whose_value_is_left_out_takes_its_default(args, completed):
    assert app_module.with_optional_values(args) == (completed or args)


def test_ray_with_no_address_builds_on_the_cluster_ray_finds(capsys, recipe_file, monkeypatch):
    """`build RECIPE --ray` as docs/cluster.md shows it: not a usage error (exit 2) but the
    cluster build at address `auto`, the recipe a recipe wherever --ray stands."""
    import mergepkg.cli.build as build_command
    from mergepkg.errors import BuildError

    path = recipe_file(
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
    )
    asked = []

    def build_on_cluster(recipes, session, *, address, **_):
        asked.append((address, [r.name for r in recipes]))
        raise BuildError("stopped here")

    monkeypatch.setattr(build_command, "choose_remote", lambda *_: type("Remote", (), {"url": "s3://b"}))
    monkeypatch.setattr(build_command, "build_on_cluster", build_on_cluster)
    for args in (["build", path, "--ray"], ["build", "--ray", path], ["build", "--ray", path, "-q"]):
        code, _, err = cli(capsys, *args)
        assert code == 1 and "stopped here" in err, err
    code, _, err = cli(capsys, "build", path, "--ray", "head:6379")
    assert code == 1 and "stopped here" in err, err
    assert [a for a, _ in asked] == ["auto", "auto", "auto", "head:6379"]
    assert len({tuple(names) for _, names in asked}) == 1


# -- every command's --help ------------------------------------------------------------
def every_command() -> list[tuple[list[str], object]]:
    """(the words that name it, the click command) for every command and subcommand."""
    found: list[tuple[list[str], object]] = []

    def walk(words: list[str], command) -> None:
        found.append((words, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk([*words, name], sub)

    for name in COMMANDS:
        walk([name], load_command(name))
    return found


def plain(text: str) -> str:
    """Help as shown, or as written, with the boxes and line breaks rich adds taken out."""
    return " ".join(text.replace("\\[", "[").translate(str.maketrans("│╭╮╰╯─", "      ")).split())


EVERY_COMMAND = every_command()


@pytest.mark.parametrize("words,command", EVERY_COMMAND, ids=[" ".join(words) for words, _ in EVERY_COMMAND])
def test_every_help_shows_every_word_of_its_help_texts(capsys, monkeypatch, words, command):
    """typer reads help strings as rich markup: `s3://BUCKET[/PREFIX]` crashed `remote add
    --help`, and `[default: print it]` vanished. Brackets in help are written `\\[`."""
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = cli(capsys, *words, "--help")
    assert code == 0, err
    shown = plain(out)
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    for text in texts:
        assert plain(text) in shown, text
