"""The tree stays as CI wants it: ruff (lint and format) and mypy clean, configured in
pyproject.toml; the layers are tests/test_layers.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_is_clean():
    run = _run("ruff", "check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_format_is_clean():
    run = _run("ruff", "format", "--no-cache", "--check", ".")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_mypy_is_clean():
    run = _run("mypy")
    assert run.returncode == 0, run.stdout + run.stderr
