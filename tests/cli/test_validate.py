"""Commands import only what they use: `validate` and `plan` not networkx, not the
builder; `validate` not the remotes' machinery or filelock; a no-op rebuild not networkx
or numpy (docs/performance.md#startup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses

RECIPE = Path(__file__).resolve().parents[2] / "bench" / "startup.toml"  # 20 steps over recipes/models


def _imported(args: list[str], home: Path) -> set[str]:
    probe = (
        "import sys, contextlib, io\n"
        "from mergepkg.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    assert main({args!r}) == 0\n"
        "print('\\n'.join(sys.modules))\n"
    )
    env = {**os.environ, "MERGEPKG_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_validate_imports_no_graph_library_remote_or_lock(tmp_path):
    loaded = _imported(["validate", str(RECIPE)], tmp_path)
    assert "mergepkg.builder.describe" in loaded
    unwanted = {"networkx.classes", "filelock._core", "mergepkg.builder.substitute", "mergepkg.remote.store"}
    assert not unwanted & loaded
    assert "pydantic" not in loaded  # typer's coercion of RECIPE and the flags (cli/coercion.py)
    assert "mergepkg.builder.build" not in loaded


def test_plan_imports_no_graph_library(tmp_path):
    loaded = _imported(["plan", str(RECIPE)], tmp_path)
    assert "mergepkg.builder.substitute" in loaded  # plan asks the remotes
    assert not {"networkx.classes", "mergepkg.builder.build", "pydantic"} & loaded


def test_a_no_op_rebuild_imports_no_graph_library_or_pydantic(tmp_path):
    """The builder asks the plan (`Plan.inputs`, `Plan.upstream`), not networkx, and a no-op
    rebuild only places the outputs and their cards; build's options at their defaults are
    coerced without pydantic (cli/coercion.py); the output writer imports numpy for its
    first write, and a no-op writes none."""
    recipe = tmp_path / "bench" / "startup.toml"  # a copy: a build writes its lock beside it
    recipe.parent.mkdir()
    recipe.write_text(RECIPE.read_text().replace('"../recipes/', f'"{RECIPE.parents[1]}/recipes/'))
    args = ["build", str(recipe), "--out", str(tmp_path / "out"), "-q"]
    _imported(args, tmp_path / "home")  # the build
    loaded = _imported(args, tmp_path / "home")  # the no-op rebuild
    assert "mergepkg.builder.card" in loaded
    assert not {"networkx.classes", "torch._C", "pydantic", "numpy"} & loaded
