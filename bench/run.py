"""Benchmark: the same merges through mergepkg and mergekit, side by side.

    python bench/run.py                       # all merges, models in ~/.cache/mergepkg-bench
    python bench/run.py --only ties,linear    # some of them
    python bench/run.py --no-mergekit         # mergepkg only (mergekit is not installed)
    python bench/run.py --repeat 1            # one round per merge (default 3, medians)
    python bench/run.py --no-first-build      # without the first-build rows (bench/first_build.py)
    python bench/run.py --layers 24           # larger models (1.37B), in ~/.cache/mergepkg-bench-24

It generates (once, seeded) a 542M-parameter Llama-shaped model set in bfloat16 (hidden
2048, 8 layers, MLP 5632, vocab 32000): a base and three fine-tunes (base + small noise);
`--layers` sets the layer count (51.4M parameters a layer), for how the ratios move with
the models' size, fixed costs such as torch's import mattering less.
Each merge in bench/configs/*.yml runs through `mergekit-yaml` and, converted by
`mergepkg import`, through `mergepkg build` with an empty store, in alternation (three
rounds by default), each run after a warm-up read of every input so the page cache is
warm for both. It prints the median wall time, peak RSS (the process and its children),
input GB/s and mergepkg/mergekit ratios, then
times a no-op rebuild of recipes/demo.toml and checks it imports neither torch nor
transformers. For linear it also times bench/floor.py in the same rounds (read the
inputs once, write an output of the same size once; and the same after importing torch)
and prints linear/floor.
This is a script that prints figures, not a test: machines are noisy.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "configs"
BIN = Path(sys.executable).parent
SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
MODELS = ("base", "ft1", "ft2", "ft3")


# --- the model set ------------------------------------------------------------------


def make_models(folder: Path, layers: int = SHAPE["num_hidden_layers"]) -> None:
    """base ~ N(0, 0.02) (norms 1), ft_i = base + N(0, 0.002), bfloat16, one file each,
    `layers` decoder layers; models already in `folder` are kept as they are."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**SHAPE, "num_hidden_layers": layers}
    config = LlamaConfig(**shape, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    for index, name in enumerate(MODELS):
        target = folder / name
        if (target / "model.safetensors").is_file():
            continue
        print(f"generating {name} ({len(shapes)} tensors)", file=sys.stderr, flush=True)
        tensors = {}
        for i, (key, shape) in enumerate(sorted(shapes.items())):
            gen = torch.Generator().manual_seed(i)  # the base's tensor: same in every model
            base = torch.ones(shape) if key.endswith("norm.weight") else torch.randn(shape, generator=gen) * 0.02
            if index:
                noise = torch.Generator().manual_seed(1000 * index + i)
                base += torch.randn(shape, generator=noise) * 0.002
            tensors[key] = base.to(torch.bfloat16)
        tmp = folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tmp.rename(target)


def compiled(root: Path = ROOT) -> None:
    """Write the bytecode of `root`'s mergepkg, as installing a wheel does. An editable
    install writes it on a module's first import, unless PYTHONDONTWRITEBYTECODE is set (it
    is on the machines these figures come from): every build then compiled each module it
    imported again, about 0.2 s."""
    compileall.compile_dir(root / "mergepkg", quiet=1)


def warm(folder: Path) -> None:
    """Read every input once so both tools start with a warm page cache."""
    for path in sorted(folder.glob("*/model.safetensors")):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


# --- running and measuring ----------------------------------------------------------


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of a command; RSS from wait4 covers the process
    and the children it waited for."""
    os.sync()  # earlier runs' dirty pages must not throttle this run's writes
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr.decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def inputs(config_text: str, models: Path) -> list[Path]:
    return [models / name / "model.safetensors" for name in MODELS if f"{models}/{name}" in config_text]


def input_bytes(config_text: str, models: Path) -> int:
    return sum(path.stat().st_size for path in inputs(config_text, models))


def floor(files: list[Path], out_bytes: int, work: Path, *, torch: bool = False) -> float:
    """bench/floor.py over `files` (`torch`: importing torch first), timed as a build is:
    wall seconds (its memory is one 16 MiB buffer, so its peak RSS says nothing)."""
    out = work / "floor.out"
    flag = ["--torch"] if torch else []
    wall, _ = measure(
        [sys.executable, str(ROOT / "bench" / "floor.py"), *flag, str(out), str(out_bytes), *map(str, files)]
    )
    out.unlink()
    return wall


def run_merge(name: str, models: Path, work: Path, with_mergekit: bool, repeat: int) -> dict:
    """`repeat` rounds of one mergepkg build and one mergekit run, in alternation; the
    row holds the medians and every run's seconds."""
    config_text = (CONFIGS / f"{name}.yml").read_text().replace("MODELS", str(models))
    config = work / f"{name}.yml"
    config.write_text(config_text)
    recipe = work / f"{name}.toml"
    subprocess.run([BIN / "mergepkg", "import", str(config), "-o", str(recipe)], check=True, capture_output=True)
    home = work / "home"
    env = {"MERGEPKG_HOME": str(home)}
    subprocess.run([BIN / "mergepkg", "lock", str(recipe)], check=True, capture_output=True, env={**os.environ, **env})
    runs: dict[str, list] = {"mergepkg": [], "mergekit": []}
    floors: list[float] = []
    torch_floors: list[float] = []
    digests = set()
    for _ in range(repeat):
        warm(models)
        shutil.rmtree(home / "store", ignore_errors=True)  # hash cache stays warm, the store is empty
        out = work / "out-mergepkg"
        runs["mergepkg"].append(measure([str(BIN / "mergepkg"), "build", str(recipe), "--out", str(out), "-q"], env))
        lock = (work / f"{name}.lock").read_text()
        digests.add(next(line.split('"')[1] for line in lock.splitlines() if line.startswith("digest")))
        out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        shutil.rmtree(out)
        if name in FLOORS:  # the same files, the same warmth, in the same round
            warm(models)
            floors.append(floor(inputs(config_text, models), out_bytes, work))
            warm(models)
            torch_floors.append(floor(inputs(config_text, models), out_bytes, work, torch=True))
        if with_mergekit:
            out = work / "out-mergekit"
            runs["mergekit"].append(
                measure(
                    [
                        str(BIN / "mergekit-yaml"),
                        str(config),
                        str(out),
                        "--no-copy-tokenizer",
                        "--quiet",
                        "--no-write-model-card",
                    ]
                )
            )
            shutil.rmtree(out)
    shutil.rmtree(home / "store", ignore_errors=True)
    if len(digests) != 1:
        raise SystemExit(f"{name}: builds gave different digests: {sorted(digests)}")
    row = {"merge": name, "digest": digests.pop(), "input_gb": input_bytes(config_text, models) / 1e9}
    if floors:
        row.update({"floor_s": statistics.median(floors), "floor_runs_s": [round(w, 2) for w in floors]})
        row.update(
            {
                "floor_torch_s": statistics.median(torch_floors),
                "floor_torch_runs_s": [round(w, 2) for w in torch_floors],
            }
        )
    for tool, measured in runs.items():
        if measured:
            row.update(
                {
                    f"{tool}_s": statistics.median(w for w, _ in measured),
                    f"{tool}_rss_gb": statistics.median(r for _, r in measured),
                    f"{tool}_runs_s": [round(w, 2) for w, _ in measured],
                }
            )
    return row


def noop_rebuild(work: Path, repeat: int = 5) -> dict:
    """A build whose steps are all stored: seconds (median) and whether torch was imported."""
    env = {**os.environ, "MERGEPKG_HOME": str(work / "demo-home")}
    recipe = ROOT / "recipes" / "demo.toml"
    out = work / "demo-out"
    subprocess.run(
        [BIN / "mergepkg", "build", str(recipe), "--out", str(out), "-q"], check=True, env=env, capture_output=True
    )
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [BIN / "mergepkg", "build", str(recipe), "--out", str(out), "-q"], check=True, env=env, capture_output=True
        )
        times.append(time.perf_counter() - start)
    probe = (
        "import sys; from mergepkg.cli.app import main; "
        f"rc = main(['build', {str(recipe)!r}, '--out', {str(out)!r}, '-q']); "
        # torch._C: torch really loaded (mergepkg._lazy registers a lazy 'torch' module)
        "print(rc, 'torch._C' in sys.modules, 'transformers' in sys.modules)"
    )
    _rc, torch_loaded, transformers_loaded = (
        subprocess.run([sys.executable, "-c", probe], check=True, env=env, capture_output=True, text=True)
        .stdout.split("\n")[-2]
        .split()
    )
    return {
        "seconds": statistics.median(times),
        "torch": torch_loaded == "True",
        "transformers": transformers_loaded == "True",
    }


# --- report -------------------------------------------------------------------------

TARGETS = {  # mergepkg/mergekit wall time (issue 20); peak RSS: RSS_TARGET for every merge
    "linear": 0.25,
    "task_arithmetic": 0.25,
    "slerp": 0.25,
    "ties": 0.05,
    "dare_ties": 0.05,
    # half-precision compute (`dtype: bfloat16` / `float16`): the same fused kernels, rounding as torch does
    "task_arithmetic_bf16": 0.25,
    "ties_bf16": 0.05,
    "task_arithmetic_fp16": 0.25,
    "ties_fp16": 0.05,
}
RSS_TARGET = 0.3
FLOORS = {"linear": 1.5}  # merges timed against bench/floor.py, and their target ratio to it


def report(rows: list[dict], noop: dict, repeat: int) -> str:
    lines = [
        f"Medians of {repeat} runs each, in alternation.",
        "",
        "| merge | input GB | mergepkg s | mergekit s | time ratio (target) | mergepkg RSS GB | "
        f"mergekit RSS GB | RSS ratio (≤ {RSS_TARGET}) | mergepkg input GB/s |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        mk = "mergekit_s" in r
        time_ratio = f"{r['mergepkg_s'] / r['mergekit_s']:.3f} (≤ {TARGETS[r['merge']]})" if mk else "–"
        rss_ratio = f"{r['mergepkg_rss_gb'] / r['mergekit_rss_gb']:.3f}" if mk else "–"
        lines.append(
            f"| {r['merge']} | {r['input_gb']:.2f} | {r['mergepkg_s']:.1f} | "
            f"{r.get('mergekit_s', float('nan')):.1f} | {time_ratio} | {r['mergepkg_rss_gb']:.2f} | "
            f"{r.get('mergekit_rss_gb', float('nan')):.2f} | {rss_ratio} | {r['input_gb'] / r['mergepkg_s']:.2f} |"
        )
    lines += ["", "The single runs, in seconds:", "", "| merge | mergepkg | mergekit | output digest |"]
    lines.append("|---" * 4 + "|")
    for r in rows:
        runs = [", ".join(f"{w:.2f}" for w in r.get(f"{tool}_runs_s", [])) or "–" for tool in ("mergepkg", "mergekit")]
        lines.append(f"| {r['merge']} | {runs[0]} | {runs[1]} | {r['digest'].removeprefix('sha256:')[:12]} |")
    for r in rows:
        if "floor_s" in r:
            lines += [
                "",
                f"floor of {r['merge']} (bench/floor.py: read its inputs once, write its output once): "
                f"{r['floor_s']:.2f} s (runs {r['floor_runs_s']}); {r['merge']} (runs {r['mergepkg_runs_s']}) / "
                f"floor: {r['mergepkg_s'] / r['floor_s']:.2f} (≤ {FLOORS[r['merge']]})",
                f"the same after `import torch` (bench/floor.py --torch): {r['floor_torch_s']:.2f} s "
                f"(runs {r['floor_torch_runs_s']}); "
                f"{r['merge']} / that floor: {r['mergepkg_s'] / r['floor_torch_s']:.2f}",
            ]
    lines.append("")
    lines.append(
        f"no-op rebuild of recipes/demo.toml: {noop['seconds']:.2f} s (median of 5); "
        f"imports torch: {noop['torch']}, transformers: {noop['transformers']}"
    )
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    try:
        from importlib.metadata import version

        mk = version("mergekit")
    except Exception:
        mk = "not installed"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"torch {torch.__version__}, mergekit {mk}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="model set folder (default ~/.cache/mergepkg-bench[-LAYERS])")
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="decoder layers of the models")
    parser.add_argument("--only", default=",".join(TARGETS), help="comma-separated merges")
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per merge; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--no-first-build", action="store_true", help="skip the first-build rows (first_build.py)")
    args = parser.parse_args()
    with_mergekit = not args.no_mergekit and (BIN / "mergekit-yaml").exists()
    if args.models is None:
        suffix = "" if args.layers == SHAPE["num_hidden_layers"] else f"-{args.layers}"
        args.models = Path.home() / ".cache" / f"mergepkg-bench{suffix}"
    make_models(args.models, args.layers)
    compiled()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mergepkg-bench-") as tmp:
        work = Path(tmp)
        for name in args.only.split(","):
            rows.append(run_merge(name, args.models, work, with_mergekit, args.repeat))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        noop = noop_rebuild(work)
    print(machine())
    print(report(rows, noop, args.repeat))
    if not args.no_first_build:
        # first builds (cold hash cache) against warm ones, for linear and ties: bench/first_build.py,
        # imported here because it imports this module's helpers
        from first_build import section

        print("\n" + section(args.models, args.only.split(","), args.repeat))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "noop": noop}, indent=2))


if __name__ == "__main__":
    main()
