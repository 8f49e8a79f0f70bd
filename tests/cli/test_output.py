"""What the commands print: stdout (paths, tables, trees) is data, never rich markup and
never cropped where it is no terminal; user text on stderr is escaped."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import MERGEPKG, cli, run_cli
from rich.table import Table
from rich.tree import Tree

from mergepkg.cli import output
from mergepkg.cli.output import UncroppedConsole

ROOT = Path(__file__).resolve().parents[2]
LINEAR = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stdout_prints_brackets_as_they_are():
    """A folder named `final [v2]` lost its `[v2]` on stdout; `[/x]` was a MarkupError."""
    buf = io.StringIO()
    console = UncroppedConsole(file=buf, soft_wrap=True, markup=False)
    console.print("merges/final [v2]", highlight=False)
    console.print("x/[/x]", highlight=False)
    assert buf.getvalue() == "merges/final [v2]\nx/[/x]\n"


def test_a_piped_stdout_crops_no_table_cell_and_no_tree_line(monkeypatch):
    """rich takes 80 columns where stdout is no terminal, and cut cells to `examples/mistral…`."""
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    console = UncroppedConsole(file=buf, soft_wrap=True, markup=False)
    name, sha = "examples/mistral-math-chat-zephyr-" + "x" * 60, "f" * 64
    table = Table()
    for col in ("name", "sha256", "description"):
        table.add_column(col)
    table.add_row(name, sha, "words " * 30)
    tree = Tree("root")
    tree.add("a line of " + "words " * 30 + "that ends here")
    console.print(table)
    console.print(tree)
    text = buf.getvalue()
    assert name in text and sha in text and ("words " * 30).strip() in text and "that ends here" in text, text


def test_a_piped_stderr_crops_no_table_either(monkeypatch, capsys):
    """eval's and tune's tables go to stderr, which took 80 columns when redirected to a file."""
    monkeypatch.setenv("COLUMNS", "80")
    table = Table(title="evaluation")
    for col in ("model", "arithmetic-" + "x" * 40, "commonsense-" + "y" * 40):
        table.add_column(col)
    table.add_row("merges/final", "0.975", "12.34")
    output.err.print(table)
    err = capsys.readouterr().err
    assert "arithmetic-" + "x" * 40 in err and "commonsense-" + "y" * 40 in err and "…" not in err, err


def test_a_terminal_keeps_its_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert UncroppedConsole(file=Terminal()).width == 80
    assert UncroppedConsole(file=io.StringIO()).width > 10_000


def test_search_and_info_piped_show_names_and_checksums_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "80")
    assert cli(capsys, "registry", "add", "examples", ROOT / "registry")[0] == 0
    code, out, err = cli(capsys, "search", "mistral")
    assert code == 0, err
    assert "examples/mistral-math-chat-zephyr " in out and "…" not in out, out
    code, out, err = cli(capsys, "info", "examples/mistral-math-chat-zephyr")
    assert code == 0, err
    assert "…" not in out and "zephyr: HuggingFaceH4/zephyr-7b-beta@" in out, out


@pytest.fixture
def bracketed(tmp_path, stub_models) -> Path:
    """A recipe in a folder, and over model folders, whose names rich would read as markup
    (and long enough to pass 80 columns on a line of `plan`'s tree)."""
    folder = tmp_path / "proj [v2]"
    models = "models [a] " + "x" * 70
    for name in ("ft1", "ft2"):
        shutil.copytree(stub_models[name], folder / models / name)
    recipe = folder / "recipe.toml"
    recipe.write_text(
        '[package]\nname = "test"\nversion = "0.1.0"\n\n[sources]\n'
        + "".join(f'{n} = {{ path = "{models}/{n}" }}\n' for n in ("ft1", "ft2"))
        + "\n"
        + LINEAR
    )
    return recipe


def test_lock_and_plan_print_bracketed_paths_whole(bracketed, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = cli(capsys, "lock", bracketed)
    assert code == 0, err
    assert out == f"{bracketed.parent}/recipe.lock\n"
    code, out, err = cli(capsys, "plan", bracketed)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].endswith(" linear build reads 64 B, writes 32 B"), out
    assert lines[2:] == [f"    ├── ft1 models [a] {'x' * 70}/ft1", f"    └── ft2 models [a] {'x' * 70}/ft2"], out


def test_user_text_on_stderr_is_escaped(tmp_path, monkeypatch, capsys):
    """A home named `h [/x]` made `cache list` end in a MarkupError."""
    home = tmp_path / "h [/x]"
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    code, _, err = cli(capsys, "cache", "list")
    assert code == 0 and f"in {home / 'store'}" in err, err


def test_json_on_stdout_is_never_coloured(monkeypatch):
    """FORCE_COLOR=1 (many CI systems set it) styled `--json` output: not JSON any more."""
    buffer = io.StringIO()
    monkeypatch.setattr(output, "out", UncroppedConsole(file=buffer, force_terminal=True, markup=False))
    output.print_data({"task": "inc", "score": 0.5, "none": float("nan")})
    assert "\x1b" not in buffer.getvalue()
    assert json.loads(buffer.getvalue()) == {"task": "inc", "score": 0.5, "none": None}


def test_bars_that_drew_nothing_leave_no_empty_line(capsys):
    """`verify` of a stored recipe, or an error before any step, printed an empty line first."""
    with output.ProgressReporter():
        pass
    with output.TransferReporter():
        pass
    assert capsys.readouterr().err == ""


def test_names_stdout_cannot_encode_are_written_not_a_traceback(tmp_path, stub_models):
    """A source folder named in CJK under an ASCII stdout, and a recipe folder whose name
    is not UTF-8 under a strict UTF-8 one: `plan` ended in a UnicodeEncodeError, and a
    build that had placed its output exited 1 printing its path."""
    folder = tmp_path / os.fsdecode(b"proj \xff")  # undecodable: a surrogate in the str
    shutil.copytree(stub_models["ft1"], folder / "fïne模型")
    shutil.copytree(stub_models["ft2"], folder / "ft2")
    recipe = folder / "recipe.toml"
    recipe.write_text(
        '[package]\nname = "test"\nversion = "0.1.0"\n\n[sources]\n'
        'ft1 = { path = "fïne模型" }\nft2 = { path = "ft2" }\n\n' + LINEAR
    )
    planned = run_cli("plan", recipe, env={"PYTHONIOENCODING": "ascii"})
    assert planned.returncode == 0 and "Traceback" not in planned.stderr, planned.stderr
    assert "f\\xefne\\u6a21\\u578b" in planned.stdout  # escaped, as Python escapes stderr
    locked = subprocess.run(
        [MERGEPKG, "lock", str(recipe)], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}
    )
    assert locked.returncode == 0, locked.stderr
    assert locked.stdout == os.fsencode(folder / "recipe.lock") + b"\n"  # the name's own bytes


def test_the_escape_handler_keeps_bytes_and_escapes_characters():
    assert "a\udcffb模".encode("utf-8", "backslashreplace") != b"a\xffb\xe6\xa8\xa1"  # what it is not
    encode = output.escape_unencodable
    assert "a\udcffb".encode("utf-8", "surrogateescape") == b"a\xffb"
    err = UnicodeEncodeError("utf-8", "a\udcffb", 1, 2, "surrogates not allowed")
    assert encode(err) == (b"\xff", 2)  # the name's byte, as it is on disk
    err = UnicodeEncodeError("latin-1", "ó模", 1, 2, "ordinal not in range")
    assert encode(err) == ("\\u6a21", 2)  # a character the encoding lacks: escaped
