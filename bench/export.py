"""Benchmark: GGUF export time against building the merge it exports.

    MERGEPKG_LLAMA_CPP=/path/to/llama.cpp python bench/export.py          # 3 rounds, medians
    python bench/export.py --repeat 1 --types bf16,q8_0

The models are bench/run.py's (542M parameters, bfloat16, ~/.cache/mergepkg-bench),
given the demo's SentencePiece tokenizer (a Llama-shaped model needs one to convert;
the converter pads its 69 tokens to the models' 32000 rows). Each round, in a fresh
store: `mergepkg build` of a linear merge of two of them with no exports (the merge),
then `mergepkg export` of each type alone (the conversion: llama.cpp's converter in a
subprocess of its own, and for quantized types its quantizer after it). Both with a
warm page cache. It prints the medians, every run, and each export's time as a
fraction of the merge's. A script that prints figures, not a test: machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, machine, make_models, measure, warm

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")


def model_folders(models: Path, work: Path) -> dict[str, Path]:
    """base and ft1 as folders of hard links, with the demo's tokenizer files."""
    out = {}
    for name in ("base", "ft1"):
        folder = work / "models" / name
        folder.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            os.link(models / name / f, folder / f)
        for f in TOKENIZER:
            (folder / f).write_bytes((ROOT / "recipes" / "demo" / "models" / "base" / f).read_bytes())
        out[name] = folder
    return out


def recipe(folders: dict[str, Path], types: list[str], work: Path) -> Path:
    exports = "".join(f'[exports.{t}]\nstep = "merged"\nformat = "gguf"\ntype = "{t}"\n\n' for t in types)
    path = work / "export-bench.toml"
    path.write_text(
        '[package]\nname = "export-bench"\nversion = "0.1.0"\n\n[sources]\n'
        + "".join(f'{n} = {{ path = "{p}" }}\n' for n, p in folders.items())
        + '\n[steps.merged]\nmethod = "linear"\nout_dtype = "bfloat16"\n'
        + 'inputs = [{ model = "base", weight = 0.5 }, { model = "ft1", weight = 0.5 }]\n\n'
        + exports
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "mergepkg-bench")
    parser.add_argument("--types", default="bf16,q8_0,q4_k_m", help="comma-separated GGUF types")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args()
    if not os.environ.get("MERGEPKG_LLAMA_CPP"):
        sys.exit("set MERGEPKG_LLAMA_CPP to a llama.cpp source tree (docs/export.md)")
    if not (args.models / "base" / "model.safetensors").exists():
        make_models(args.models)
    types = args.types.split(",")
    times: dict[str, list[float]] = {"merge": [], **{t: [] for t in types}}
    with tempfile.TemporaryDirectory(prefix="mergepkg-export-bench-") as tmp:
        work = Path(tmp)
        folders = model_folders(args.models, work)
        for folder in folders.values():
            warm(folder)
        for round_ in range(args.repeat):
            env = dict(os.environ, MERGEPKG_HOME=str(work / f"home{round_}"))
            plain = recipe(folders, [], work)
            seconds, _ = measure([str(BIN / "mergepkg"), "build", str(plain), "-o", str(work / "out"), "-q"], env)
            times["merge"].append(seconds)
            full = recipe(folders, types, work)
            for t in types:
                command = [str(BIN / "mergepkg"), "export", str(full), t, "-o", str(work / "gguf"), "-q"]
                seconds, _ = measure(command, env)
                times[t].append(seconds)
        sizes = {t: (work / "gguf" / f"{t}.gguf").stat().st_size for t in types}
    merge = statistics.median(times["merge"])
    print(f"# GGUF export against the merge ({machine()})\n")
    print("| what | median s | runs | / merge | file |")
    print("|---|---|---|---|---|")
    print(f"| build: linear, 2 x 1.08 GB | {merge:.1f} | {', '.join(f'{s:.1f}' for s in times['merge'])} | 1 | |")
    for t in types:
        median = statistics.median(times[t])
        runs = ", ".join(f"{s:.1f}" for s in times[t])
        print(f"| export {t} | {median:.1f} | {runs} | {median / merge:.2f} | {sizes[t] / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()
