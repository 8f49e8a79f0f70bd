"""The public API: docs/api.md's example runs as written; `import mergepkg` is cheap;
`python -m mergepkg` is the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_documented_example_runs(monkeypatch, capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)[1]
    monkeypatch.chdir(ROOT)
    exec(compile(code, "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'final'" in printed and "build" in printed


def test_public_names_resolve_and_import_nothing_heavy():
    # torch is bound lazily (mergepkg/_lazy.py): only its C extension shows it was really imported
    probe = (
        "import sys, mergepkg; names = [getattr(mergepkg, n) for n in mergepkg.__all__]; "
        "print(sorted(m for m in ('torch._C', 'transformers', 'numba') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_python_dash_m_is_the_command():
    run = subprocess.run(
        [sys.executable, "-m", "mergepkg", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0 and run.stdout.startswith("mergepkg ")


def test_a_mode_or_remote_policy_typo_is_a_value_error_before_anything_is_built(write_recipe, tmp_path):
    """`mode="lockd"` resolved as "update", rebuilt, then said the build did not reproduce
    the lock; with no lock it silently wrote none."""
    import mergepkg

    path = write_recipe(
        '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
    )
    session = mergepkg.Session(mergepkg.Settings(home=str(tmp_path / "home")))  # a str home is a path too
    with pytest.raises(ValueError, match="mode must be one of 'update', 'locked', 'frozen', not 'lockd'"):
        mergepkg.build(path, session=session, mode="lockd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="remote must be one of"):
        mergepkg.build(path, session=session, remote="always")  # type: ignore[arg-type]
    assert session.settings.home == tmp_path / "home" and not session.store.all()
    assert not path.with_suffix(".lock").exists()
