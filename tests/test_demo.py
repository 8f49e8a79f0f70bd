"""The shipped demo: scripts/train_demo.py reproduces its models byte for byte, and the
evaluation table in README.md and docs/demo.md is what `mergepkg eval` prints for it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mergepkg.cli.app import main

pytestmark = pytest.mark.slow  # trains the demo models and evaluates them

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "recipes" / "demo"
TASKS = [DEMO / "tasks" / "upper.jsonl", DEMO / "tasks" / "inc.jsonl"]


def digests(folder: Path) -> dict[str, str]:
    """sha256 of each file; of a config.json without `transformers_version`, which the
    installed transformers stamps into it (its next release changes that and nothing else)."""

    def content(p: Path) -> bytes:
        if p.name != "config.json":
            return p.read_bytes()
        config = json.loads(p.read_text())
        config.pop("transformers_version", None)
        return json.dumps(config, sort_keys=True).encode()

    return {
        str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_training_script_reproduces_the_shipped_files(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    shipped = digests(DEMO)
    assert len(shipped) == 3 * 5 + 2  # three models (config, weights, tokenizer x3) and two task files
    assert digests(tmp_path) == shipped


def test_held_out_prompts_are_distinct_and_follow_the_format():
    for path in TASKS:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 200 and len({r["prompt"] for r in rows}) == 200
        assert all(r["prompt"].startswith(path.stem + " ") and r["prompt"].endswith("=") for r in rows)


def documented_table(path: Path) -> dict[str, tuple[float, float, float]]:
    """Rows `│ demo.toml:NAME │ upper │ inc │ mean │` of the table a document shows."""
    rows = re.findall(r"│ demo\.toml:(\w+)\s*│\s*([\d.]+) │\s*([\d.]+) │\s*([\d.]+) │", path.read_text())
    return {name: tuple(map(float, values)) for name, *values in rows}


def test_documented_table_is_what_eval_prints(capsys):
    assert (
        main(["eval", str(ROOT / "recipes" / "demo.toml"), *[a for t in TASKS for a in ("-t", str(t))], "--json"]) == 0
    )
    results = json.loads(capsys.readouterr().out)
    measured = {}
    for row in results:
        measured.setdefault(row["model"].split(":")[1], {})[row["task"]] = row["value"]

    def shown(x: float) -> float:  # as the table prints it
        return float(f"{x:.3f}")

    table = {
        name: (shown(v["upper"]), shown(v["inc"]), shown((v["upper"] + v["inc"]) / 2)) for name, v in measured.items()
    }
    assert list(table) == ["base", "upper", "inc", "linear", "task_arithmetic", "ties", "dare_ties", "ties_slerp"]
    for doc in (ROOT / "README.md", ROOT / "docs" / "demo.md"):
        assert documented_table(doc) == table, doc
    # the documents' claim: some merge beats each fine-tune on the mean of the two skills
    best_merge = max(mean for name, (_, _, mean) in table.items() if name not in ("base", "upper", "inc"))
    assert best_merge > max(table["upper"][2], table["inc"][2])
