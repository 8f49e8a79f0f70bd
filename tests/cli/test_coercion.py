"""cli/coercion.py: typer's parameter coercion without pydantic gives what typer's own gives."""

import enum
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.core
from typer.testing import CliRunner

from mergepkg.cli import coercion


class Colour(str, enum.Enum):
    red = "red"
    blue = "blue"


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.command()
    def cmd(
        name: str,
        recipe: Path = typer.Option(Path("default.toml"), "--recipe", dir_okay=False),
        folder: Path | None = typer.Option(None, "--folder", file_okay=False, exists=True),
        out: str | None = typer.Option(None, "--out"),
        threads: int = typer.Option(1, "--threads", min=1),
        split: int = typer.Option(2, "--split"),
        dry: bool = typer.Option(False, "--dry"),
        tags: list[str] = typer.Option([], "--tag"),
        colour: Colour = typer.Option(Colour.red, "--colour"),
    ) -> None:
        values = (name, recipe, folder, out, threads, split, dry, tags, colour)
        print(repr([(type(v).__name__, str(v)) for v in values]))

    @app.command()
    def many(names: list[str], out: list[str] | None = typer.Option(None, "--out")) -> None:
        print(repr((type(names).__name__, names, out)))  # two commands: each a subcommand, as mergepkg's are

    return app


ARGS = [
    ["cmd", "n"],
    ["cmd", "n", "--recipe", "r.toml", "--out", "o", "--threads", "3", "--dry", "--tag", "a", "--tag", "b"],
    ["cmd", "n", "--folder", "{tmp}", "--colour", "blue"],
    ["cmd", "n", "--folder", "{tmp}/missing"],  # exists=True: typer's message
    ["cmd", "n", "--folder", "{tmp}/file"],  # file_okay=False
    ["cmd", "n", "--recipe", "{tmp}"],  # dir_okay=False
    ["cmd", "n", "--recipe", ""],  # an empty path: typer's own coercion decides
    ["cmd", "n", "--threads", "0"],
    ["cmd", "n", "--threads", "x"],
    ["cmd", "n", "--split", "5"],
    ["cmd", "n", "--split", " 7 "],
    ["cmd", "n", "--colour", "green"],
    ["cmd"],  # missing argument
    ["many", "a", "b"],
    ["many", "a", "--out", "x", "--out", "y"],
    ["many"],
    ["cmd", "--help"],
]


@pytest.mark.parametrize("args", ARGS, ids=[" ".join(a) for a in ARGS])
def test_the_same_values_and_messages_as_typer_gives(args, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    coercion.install()
    maker = typer.core.build_runtime_param.__self__
    assert isinstance(maker, coercion._Maker)
    runner = CliRunner()
    ours = runner.invoke(_app(), args)  # a new app: its parameters make their coercion anew
    monkeypatch.setattr(typer.core, "build_runtime_param", maker.original)
    theirs = runner.invoke(_app(), args)
    assert (ours.exit_code, ours.output) == (theirs.exit_code, theirs.output)


def test_install_is_idempotent():
    coercion.install()
    first = typer.core.build_runtime_param
    coercion.install()
    assert typer.core.build_runtime_param.__self__ is first.__self__


def test_str_path_and_flags_need_no_pydantic(tmp_path):
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "import typer\n"
        "from typer.testing import CliRunner\n"
        "from mergepkg.cli import coercion\n"
        "coercion.install()\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def cmd(name: str, folder: Path = typer.Option(..., exists=True), out: str | None = None, dry: bool = False):\n"
        "    print(type(folder).__name__, out, dry)\n"
        f"result = CliRunner().invoke(app, ['n', '--folder', {str(tmp_path)!r}, '--dry'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output.strip(), [m for m in sys.modules if m.startswith('pydantic')])\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["PosixPath", "None", "True", "[]"]
