"""Startup times of the `mergepkg` program (docs/performance.md#startup).

    .venv/bin/python bench/startup.py [--repeat 11]

Times, as separate processes, `python -c pass` (the floor), `mergepkg --help`,
`mergepkg validate` and `mergepkg plan` on bench/startup.toml (20 linear and ties steps
over the tiny models in recipes/models), and a no-op rebuild of recipes/demo.toml (every
step stored; one build first fills a scratch store). The commands run in interleaved
rounds, so a busy minute slows them all alike. For each it prints the median wall time,
the range, the median CPU time (user + sys, from wait4: less sensitive to other load
than wall time) and the heavy libraries the command imported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = ROOT / "bench" / "startup.toml"
DEMO = ROOT / "recipes" / "demo.toml"
HEAVY = ("networkx", "rich.console", "torch._C", "numpy", "transformers", "ray")  # torch._C: torch really loaded


def commands(out: Path) -> dict[str, list[str]]:
    mergepkg = str(BIN / "mergepkg")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "mergepkg --help": [mergepkg, "--help"],
        "validate (20 steps)": [mergepkg, "validate", str(RECIPE)],
        "plan (20 steps)": [mergepkg, "plan", str(RECIPE)],
        "no-op rebuild (demo)": [mergepkg, "build", str(DEMO), "--out", str(out), "-q"],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """The heavy libraries a mergepkg command imports (run in-process through main())."""
    if Path(argv[0]).name != "mergepkg":
        return []
    probe = (
        "import sys, contextlib, io\n"
        "from mergepkg.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    main({argv[1:]!r})\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return run.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=11, help="rounds; medians are reported")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mergepkg-startup-"))
    try:
        env = {**os.environ, "MERGEPKG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
        runs = commands(work / "demo-out")
        subprocess.run(runs["no-op rebuild (demo)"], env=env, check=True, capture_output=True)  # fill the store
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, argv in runs.items():
                times[name].append(timed(argv, env))
        print(f"{args.repeat} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'command':24} {'wall median':>11} {'wall range':>15} {'CPU median':>10}  imports")
        for name, measured in times.items():
            walls = [w for w, _ in measured]
            cpu = statistics.median(c for _, c in measured)
            heavy = " ".join(imported(runs[name], env)) or "-"
            print(
                f"{name:24} {statistics.median(walls):10.3f}s {min(walls):6.3f}-{max(walls):.3f} s {cpu:9.3f}s  {heavy}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
