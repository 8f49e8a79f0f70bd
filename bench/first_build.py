"""First builds: a recipe built on a machine whose hash cache has never seen its inputs.

    python bench/first_build.py                  # linear and ties, 3 alternating rounds
    python bench/first_build.py --only linear --repeat 5

Each merge in bench/configs is imported and locked once (in a home of its own, so the
lock sits beside the recipe as a checkout brings it), then built in alternation, each
with a warm page cache (every input read first), an empty store and `sync` first:

- **first build**: a fresh MERGEPKG_HOME, so a cold hash cache; the lock is there;
- **first build, no lock**: the same with the lock moved away, so every input is hashed
  before any step is keyed;
- **first build, `--local-dir` download, no lock**: the same merge over a copy of the
  models laid out as `hf download --local-dir` leaves them (each weights file, then
  huggingface_hub's record of its sha256 beside it), with no lock: keyed by the records;
- **warm hash cache**: the home of earlier builds with its store emptied, the row
  bench/run.py times;
- with `--before DIR` (a checkout of older code, e.g. `git worktree add DIR COMMIT`),
  also **first build, before**: a first build (lock there) with DIR's mergepkg.

It prints, per merge, the median wall time of each kind, every run's seconds, the spread
(slowest minus fastest) and the ratio of a first build to a build with a warm hash cache
(the goal of issue 20: within 10 %). bench/run.py prints `section` after its own table.
"""

from __future__ import annotations

import argparse
import json
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
from run import BIN, CONFIGS, compiled, make_models, measure, warm

from mergepkg.store.hashcache import DOWNLOAD_RECORDS, sha256_file

KINDS = ("first", "first_no_lock", "first_local_dir", "warm_hashes")
GOAL = 1.10  # a first build within 10 % of a build with a warm hash cache
MERGES = ("linear", "ties")  # what bench/run.py adds first builds for: the lightest and the heaviest


def _prepare(name: str, models: Path, work: Path, locked: bool = True) -> Path:
    """The merge's recipe, imported and (`locked`) locked, in a home used for nothing else."""
    config = work / f"{name}.yml"
    config.write_text((CONFIGS / f"{name}.yml").read_text().replace("MODELS", str(models)))
    recipe = work / f"{name}.toml"
    subprocess.run([BIN / "mergepkg", "import", str(config), "-o", str(recipe)], check=True, capture_output=True)
    if locked:
        env = {**os.environ, "MERGEPKG_HOME": str(work / "lock-home")}
        subprocess.run([BIN / "mergepkg", "lock", str(recipe)], check=True, capture_output=True, env=env)
    return recipe


def _as_downloaded(models: Path, into: Path) -> Path:
    """A copy of the model set laid out as `hf download --local-dir` leaves a repo: each
    file, then huggingface_hub's record of a weights file (`NAME.metadata` in
    .cache/huggingface/download: a commit, the etag, which for an LFS file is its sha256,
    and the time), written after the file, as huggingface_hub writes it."""
    for model in sorted(p for p in models.iterdir() if p.is_dir()):
        shutil.copytree(model, into / model.name)
        for weights in sorted((into / model.name).glob("*.safetensors")):
            record = into / model.name / DOWNLOAD_RECORDS / f"{weights.name}.metadata"
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(f"{'0' * 40}\n{sha256_file(weights)}\n{time.time()}\n")
    return into


def _build(recipe: Path, home: Path, out: Path, code: Path | None = None) -> float:
    env = {"MERGEPKG_HOME": str(home)} | ({"PYTHONPATH": str(code)} if code else {})
    seconds, _ = measure([str(BIN / "mergepkg"), "build", str(recipe), "--out", str(out), "-q"], env)
    shutil.rmtree(out)
    return seconds


def first_build_rows(
    models: Path, work: Path, names: list[str], repeat: int = 3, before: Path | None = None
) -> list[dict]:
    """Per merge, `repeat` rounds of a first build, a first build without a lock and a
    build with a warm hash cache (and a first build of the code in `before`), in
    alternation: each kind's runs (seconds) and median."""
    kinds = KINDS + (("first_before",) if before else ())
    if before:
        compiled(before)  # this checkout's own: main() (or bench/run.py's) compiled it
    rows = []
    downloaded = _as_downloaded(models, work / "local-dir")
    for name in names:
        recipe = _prepare(name, models, work)
        lock = recipe.with_suffix(".lock")
        kept = lock.read_bytes()
        (work / "local-dir-recipes").mkdir(exist_ok=True)
        over_downloads = _prepare(name, downloaded, work / "local-dir-recipes", locked=False)
        warm_home = work / f"{name}-warm"
        warm(models)
        _build(recipe, warm_home, work / "out")  # fills its hash cache
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        for i in range(repeat):
            for kind in kinds:
                warm(downloaded if kind == "first_local_dir" else models)
                if kind == "warm_hashes":
                    shutil.rmtree(warm_home / "store", ignore_errors=True)
                    home = warm_home
                else:
                    home = work / f"{name}-{kind}-{i}"  # never used: a cold hash cache
                if kind == "first_no_lock":
                    lock.unlink()
                try:
                    built = over_downloads if kind == "first_local_dir" else recipe
                    runs[kind].append(_build(built, home, work / "out", before if kind == "first_before" else None))
                finally:
                    lock.write_bytes(kept)  # the lock as the import made it (mtime: now)
                if home != warm_home:
                    shutil.rmtree(home)
        row: dict = {"merge": name}
        for kind, seconds in runs.items():
            row[f"{kind}_s"] = statistics.median(seconds)
            row[f"{kind}_runs_s"] = [round(s, 2) for s in seconds]
        rows.append(row)
    return rows


def report(rows: list[dict], repeat: int) -> str:
    lines = [
        f"First builds (cold hash cache, warm page cache, empty store): medians of {repeat} alternating rounds.",
        "",
        f"| merge | first build s | first build, no lock s | `--local-dir`, no lock s | warm hash cache s "
        f"| first / warm (goal ≤ {GOAL:.2f}) | no lock / warm | `--local-dir` / warm "
        "| runs: first; no lock; `--local-dir`; warm | spread s (same order) |",
        "|---" * 10 + "|",
    ]
    for r in rows:
        runs = "; ".join(", ".join(f"{s:.2f}" for s in r[f"{k}_runs_s"]) for k in KINDS)
        spread = ", ".join(f"{max(r[f'{k}_runs_s']) - min(r[f'{k}_runs_s']):.2f}" for k in KINDS)
        warm_s = r["warm_hashes_s"]
        first, no_lock, local = r["first_s"], r["first_no_lock_s"], r["first_local_dir_s"]
        lines.append(
            f"| {r['merge']} | {first:.2f} | {no_lock:.2f} | {local:.2f} | {warm_s:.2f} | {first / warm_s:.3f} | "
            f"{no_lock / warm_s:.3f} | {local / warm_s:.3f} | {runs} | {spread} |"
        )
        if "first_before_s" in r:
            runs = ", ".join(f"{s:.2f}" for s in r["first_before_runs_s"])
            lines.append(
                f"|   before: first build | {r['first_before_s']:.2f} | | | | "
                f"{r['first_before_s'] / warm_s:.3f} | | | {runs} | |"
            )
    return "\n".join(lines)


def section(models: Path, names: list[str], repeat: int = 3) -> str:
    """The first-build table for those of `names` in MERGES, measured in a folder of its
    own: what bench/run.py prints after its own table."""
    chosen = [n for n in names if n in MERGES]
    if not chosen:
        return ""
    with tempfile.TemporaryDirectory(prefix="mergepkg-first-build-") as tmp:
        return report(first_build_rows(models, Path(tmp), chosen, repeat), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "mergepkg-bench")
    parser.add_argument("--only", default="linear,ties", help="comma-separated merges (bench/configs)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--before", type=Path, help="a checkout of older code: its first builds too")
    args = parser.parse_args()
    make_models(args.models)
    compiled()
    with tempfile.TemporaryDirectory(prefix="mergepkg-first-build-") as tmp:
        rows = first_build_rows(args.models, Path(tmp), args.only.split(","), args.repeat, args.before)
    print(report(rows, args.repeat))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
