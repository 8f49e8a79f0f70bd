"""Startup times of the `mergepkg` program (docs/performance.md#startup).

    .venv/bin/python bench/startup.py [--repeat 11] [--compare DIR]

Times, as separate processes, `python -c pass` (the floor), `mergepkg --help`,
`mergepkg validate` and `mergepkg plan` on bench/startup.toml (20 linear and ties steps
over the tiny models in recipes/models), and a no-op rebuild of recipes/demo.toml (a
copy, every step stored: one build first fills a scratch store). The commands run in
interleaved rounds, so a busy minute slows them all alike. For each it prints the
median wall time, the range, the median CPU time (user + sys, from wait4: less
sensitive to other load than wall time) and the heavy libraries the command imported.

`--compare DIR` also times another checkout (`git archive REV | tar -x -C DIR`), run as
`python -m mergepkg` with DIR first on the path, in the same rounds: on a busy machine,
before and after are measured together.
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

# bench/ is not a package: its folder on the path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, ROOT, compiled

RECIPE = ROOT / "bench" / "startup.toml"
HEAVY = ("networkx.classes", "rich.console", "pydantic", "torch._C", "numpy", "transformers", "ray")


def commands(work: Path) -> dict[str, list[str]]:
    """The mergepkg arguments of each timed command."""
    demo = work / "demo.toml"
    return {
        "mergepkg --help": ["--help"],
        "validate (20 steps)": ["validate", str(RECIPE)],
        "plan (20 steps)": ["plan", str(RECIPE)],
        "no-op rebuild (demo)": ["build", str(demo), "--out", str(work / "demo-out"), "-q"],
    }


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def imported(args: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """The heavy libraries `mergepkg ARGS` imports (run in-process through main())."""
    probe = (
        "import sys, contextlib, io\n"
        "from mergepkg.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    main({args!r})\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return run.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=11, help="rounds; medians are reported")
    parser.add_argument("--compare", type=Path, help="another checkout, timed in the same rounds")
    args = parser.parse_args()
    for code in [ROOT] + ([args.compare] if args.compare else []):
        compiled(code)
    work = Path(tempfile.mkdtemp(prefix="mergepkg-startup-"))
    try:
        for name in ("demo.toml", "demo.lock"):  # copies: no run rewrites recipes/demo.lock
            shutil.copy(ROOT / "recipes" / name, work / name)
        (work / "demo").symlink_to(ROOT / "recipes" / "demo")
        env = {**os.environ, "MERGEPKG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
        trees = {"": ([str(BIN / "mergepkg")], env)}
        if args.compare:
            path = os.pathsep.join([str(args.compare.resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            trees[f" [{args.compare.name}]"] = ([sys.executable, "-m", "mergepkg"], {**env, "PYTHONPATH": path})
        runs = {"python -c pass": ([sys.executable, "-c", "pass"], env, [])}
        for name, cmd in commands(work).items():
            for label, (program, tree_env) in trees.items():
                runs[name + label] = ([*program, *cmd], tree_env, cmd)
        subprocess.run(runs["no-op rebuild (demo)"][0], env=env, cwd=work, check=True, capture_output=True)  # the store
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, (argv, run_env, _cmd) in runs.items():
                times[name].append(timed(argv, run_env, work))  # in work: `python -m` puts the cwd on the path
        print(f"{args.repeat} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        width = max(map(len, runs))
        print(f"{'command':{width}} {'wall median':>11} {'wall range':>15} {'CPU median':>10}  imports")
        for name, measured in times.items():
            walls = [w for w, _ in measured]
            cpu = statistics.median(c for _, c in measured)
            _argv, run_env, cmd = runs[name]
            heavy = " ".join(imported(cmd, run_env, work)) if cmd else "-"
            median, low, high = statistics.median(walls), min(walls), max(walls)
            print(f"{name:{width}} {median:10.3f}s {low:6.3f}-{high:.3f} s {cpu:9.3f}s  {heavy}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
