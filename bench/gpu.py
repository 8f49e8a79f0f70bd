"""Benchmark on a GPU: `mergepkg build --device cuda` against `mergekit-yaml --cuda`, 7B-shaped.

    python bench/gpu.py                              # 7B shape on cuda: linear and ties (issue 20, goal 4)
    python bench/gpu.py --shape tiny --device cpu    # a few MB on the CPU: the whole script, end to end
    python bench/gpu.py --only ties --repeat 1 --json gpu.json

It prints the torch and CUDA it sees, then two tables.

Same bytes. A subset of the shape (`--check-layers`, default 2 layers: every tensor shape of
the whole model, embeddings included; each tensor is seeded by its name, so these are the
whole model's first layers) is merged by `mergepkg build --device cpu` and `--device
DEVICE` for each merge in `--check` (linear, ties, dare_ties), and the output digests are
compared, tensor by tensor where they differ. What the documentation says of each is
printed beside it: DARE's masks are promised equal across devices (docs/methods.md); for
linear and TIES nothing is written, but a step's store key holds no device, so a lock made
on one device is checked against a build on another. With `--device cpu` the other side
is `--device cpu --threads 1`, whose bytes are promised equal (docs/store.md).

Speed. A Llama-shaped set in bfloat16 (7b: hidden 4096, 32 layers, MLP 11008, vocab 32000,
6.74B parameters, 13.5 GB a model in 2 GB shards): a base and two fine-tunes (base +
N(0, 0.002)), generated once, seeded, on DEVICE (a GPU draws 20G numbers in seconds). Each
merge runs through `mergepkg build --device DEVICE` (imported by `mergepkg import`, empty
store, warm hash cache) and `mergekit-yaml` (`--cuda` on a GPU), in alternation, each round
after a read of its inputs so the page cache is warm for both, for up to `--repeat` rounds
while another fits in `--seconds` since the start. The table holds medians: wall time, peak
RSS (the process and its children, from wait4), peak GPU memory (the device's memory in use,
sampled every 50 ms, less what was in use before), input GB/s and the ratios.

Disk: the 7b set takes 40.4 GB and one output 13.5 GB more (each output is removed before
the next run); the free space is checked before anything is written. The subset is removed
after its check, before the set is generated. This is a script that prints figures, not a
test.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from remote import mergepkg  # bench/remote.py: `mergepkg ARGS` in a home, failing with its stderr
from run import BIN, CONFIGS, machine, measure  # bench/run.py: the CPU benchmark

from mergepkg.io.tensors import TensorInfo
from mergepkg.io.writer import plan_shards, shard_names, write_index

SHAPES = {
    "7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    ),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, vocab_size=2000),
}
SHARD_BYTES = {"7b": 2 * 10**9, "tiny": 2 * 10**6}  # the tiny set in several shards too
MODELS = ("base", "ft1", "ft2")
GB = 1e9

# linear: bench/configs/linear.yml (ft1 0.6, ft2 0.4). TIES and DARE-TIES over base + 2:
TASK_VECTORS = """merge_method: {method}
base_model: MODELS/base
models:
  - model: MODELS/ft1
    parameters: {{weight: 0.6, density: 0.5}}
  - model: MODELS/ft2
    parameters: {{weight: 0.4, density: 0.3}}
parameters:
  normalize: true
dtype: float32
out_dtype: bfloat16
"""
DOCUMENTED = {  # what the documentation says of a merge's bytes on a GPU and on the CPU
    "linear": "nothing (the store key holds no device)",
    "ties": "nothing (the store key holds no device)",
    "dare_ties": "masks equal (methods.md); L1 rescale sums in the device's order",
}
THREADS = "the same bytes at any --threads (store.md)"  # --device cpu: the check compares thread counts


def config_text(method: str, models: Path) -> str:
    text = (CONFIGS / "linear.yml").read_text() if method == "linear" else TASK_VECTORS.format(method=method)
    return text.replace("MODELS", str(models))


# --- the model set ------------------------------------------------------------------


def in_child(fn, *args):
    """fn(*args) in a fresh interpreter. What this process touches stays small: a command
    it starts inherits its peak RSS as the floor of its own (Linux keeps the larger
    maxrss across exec), so torch, model tensors and CUDA stay out of it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def tensor_shapes(shape: dict, layers: int) -> dict[str, tuple[int, ...]]:
    """The state dict of transformers' LlamaForCausalLM (untied embeddings, a key and value
    head per query head): {tensor name: shape}."""
    h, mlp, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for n in range(layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{n}.self_attn.{name}.weight"] = (h, h)
        shapes.update({f"model.layers.{n}.mlp.{name}.weight": (mlp, h) for name in ("gate_proj", "up_proj")})
        shapes[f"model.layers.{n}.mlp.down_proj.weight"] = (h, mlp)
        for name in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"model.layers.{n}.{name}.weight"] = (h,)
    return shapes


def model_bytes(shape: dict, layers: int) -> int:
    return 2 * sum(math.prod(s) for s in tensor_shapes(shape, layers).values())


def draw(seed: int, name: str, shape: tuple, device: str, std: float):
    """N(0, std) float32 on `device`, seeded by `seed` and `name` alone."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed << 32 | zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen, device=device).mul_(std)


def make_models(folder: Path, shape: str, layers: int, device: str, seed: int, room: int) -> None:
    """base ~ N(0, 0.02) (norms 1), ft_i = base + N(0, 0.002), bfloat16, in shards with an
    index; kept in `folder` (bench.json says what was generated, and on which kind of
    device). `room`: bytes the disk must have free besides the set."""
    spec = {"shape": SHAPES[shape], "layers": layers, "device": device.partition(":")[0], "seed": seed}
    if (folder / "bench.json").is_file() and json.loads((folder / "bench.json").read_text()) == spec:
        need_disk(folder.parent, room)
        return
    shutil.rmtree(folder, ignore_errors=True)
    need_disk(folder.parent, len(MODELS) * model_bytes(SHAPES[shape], layers) + room)
    in_child(generate, folder, shape, layers, device, seed)
    (folder / "bench.json").write_text(json.dumps(spec))


def generate(folder: Path, shape: str, layers: int, device: str, seed: int) -> None:
    """make_models' tensors and config.json, in a child process (`in_child`)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    fields = {**SHAPES[shape], "num_hidden_layers": layers, "num_key_value_heads": SHAPES[shape]["num_attention_heads"]}
    config = LlamaConfig(**fields, tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    shapes = tensor_shapes(SHAPES[shape], layers)
    shards = plan_shards([(n, TensorInfo("BF16", s)) for n, s in sorted(shapes.items())], SHARD_BYTES[shape])
    files = shard_names(len(shards))
    for name in MODELS:
        (folder / name).mkdir(parents=True)
        config.save_pretrained(folder / name)
        write_index(folder / name, shards, files)
    print(f"generating {folder} on {device}: {len(shapes)} tensors, {len(files)} shards a model", file=sys.stderr)
    with ThreadPoolExecutor(len(MODELS)) as pool:
        writing: list = []
        for shard, file in zip(shards, files):
            tensors: dict[str, dict] = {m: {} for m in MODELS}
            for key, info in shard:
                if key.endswith("norm.weight"):
                    base = torch.ones(info.shape, device=device)
                else:
                    base = draw(seed, key, info.shape, device, 0.02)
                for index, m in enumerate(MODELS):
                    tuned = base + draw(seed, f"{m}/{key}", info.shape, device, 0.002) if index else base
                    tensors[m][key] = tuned.to(torch.bfloat16).cpu()
            for done in writing:  # one shard a model on its way to disk while the next is drawn
                done.result()
            writing = [pool.submit(save_file, tensors[m], folder / m / file, {"format": "pt"}) for m in MODELS]
        for done in writing:
            done.result()


def need_disk(folder: Path, nbytes: int) -> None:
    """Stop before writing when the disk of `folder` has less than `nbytes` free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise SystemExit(
            f"{folder}: {nbytes / GB:.1f} GB needed, {free / GB:.1f} GB free; use --models on another disk"
        )


def warm(folder: Path, models: tuple[str, ...]) -> None:
    """Read the inputs once so both tools start with a warm page cache."""
    buffer = bytearray(64 << 20)  # reused: fresh memory for every read would cost page faults
    for path in sorted(p for m in models for p in (folder / m).glob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


# --- running and measuring ----------------------------------------------------------


def measured(cmd: list, device: str, env: dict | None = None) -> dict:
    """wall seconds, peak RSS GB (measure, bench/run.py) and peak GPU GB of a command: the
    device's memory in use (every process's, from nvidia-smi every 50 ms) less what was in
    use before it started; None off CUDA or without nvidia-smi."""
    if not device.startswith("cuda") or not shutil.which("nvidia-smi"):
        wall, rss = measure([str(c) for c in cmd], env)
        return {"s": wall, "rss_gb": rss, "gpu_gb": None}
    query = ["nvidia-smi", f"--id={device.partition(':')[2] or 0}", "--query-gpu=memory.used"]
    sampler = subprocess.Popen(
        [*query, "--format=csv,noheader,nounits", "-lms", "50"], stdout=subprocess.PIPE, text=True
    )
    assert sampler.stdout is not None
    first = sampler.stdout.readline().strip()  # MiB
    if not first.isdigit():  # nvidia-smi cannot tell: time it without
        sampler.kill()
        sampler.wait()
        return measured(cmd, "cpu", env)
    before = float(first)
    used = [before]
    reader = threading.Thread(target=lambda: used.extend(float(line) for line in sampler.stdout), daemon=True)
    reader.start()
    try:
        wall, rss = measure([str(c) for c in cmd], env)
    finally:
        sampler.terminate()
        reader.join()
        sampler.wait()
    return {"s": wall, "rss_gb": rss, "gpu_gb": (max(used) - before) * 2**20 / GB}


class Merges:
    """Recipes imported from the configs and locked, in `work`, over the models in `models`,
    built (`--device device`, and `flags`) and merged on demand; in `home` (its hash cache
    warm), its store emptied before each build."""

    def __init__(self, models: Path, work: Path, home: Path, device: str, flags: tuple[str, ...] = ()):
        self.models, self.work, self.home, self.device, self.flags = models, work, home, device, flags
        self.label = " ".join((device, *flags))
        self.recipes: dict[str, Path] = {}

    def recipe(self, method: str) -> Path:
        if method not in self.recipes:
            self.work.mkdir(parents=True, exist_ok=True)
            config = self.work / f"{method}.yml"
            config.write_text(config_text(method, self.models))
            self.recipes[method] = self.work / f"{method}.toml"
            mergepkg(self.home, "import", config, "-o", self.recipes[method])
            mergepkg(self.home, "lock", self.recipes[method])
        return self.recipes[method]

    def mergepkg(self, method: str, out: Path) -> dict:
        """`mergepkg build`: its measures and the output's digest (the lock's)."""
        recipe = self.recipe(method)
        shutil.rmtree(self.home / "store", ignore_errors=True)
        build = [BIN / "mergepkg", "build", recipe, "--out", out, "-q", "--device", self.device, *self.flags]
        run = measured(build, self.device, {"MERGEPKG_HOME": str(self.home)})
        lock = recipe.with_suffix(".lock").read_text()
        run["digest"] = next(line.split('"')[1] for line in lock.splitlines() if line.startswith("digest"))
        shutil.rmtree(self.home / "store")  # `out` keeps its links until it is removed
        return run

    def mergekit(self, method: str, out: Path) -> dict:
        self.recipe(method)
        cuda = ["--cuda"] if self.device.startswith("cuda") else []
        flags = ["--no-copy-tokenizer", "--quiet", "--no-write-model-card", *cuda]
        return measured([BIN / "mergekit-yaml", self.work / f"{method}.yml", out, *flags], self.device)

    def inputs(self, method: str) -> tuple[str, ...]:
        return tuple(m for m in MODELS if f"{self.models}/{m}" in config_text(method, self.models))


# --- same bytes on both devices ---------------------------------------------------------


def differences(a: Path, b: Path) -> dict:
    """Tensors of two merged models that differ: how many, their entries, the largest difference."""
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for path in folder.glob("*.safetensors"):
            with safe_open(path, framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - safe_open is not a dict
        return out

    left, right = tensors(a), tensors(b)
    found = {"tensors": 0, "entries": 0, "max_abs": 0.0}
    for key, x in left.items():
        bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        unequal = x.view(bits) != right[key].view(bits)  # the bits: NaN and -0.0 count
        if unequal.any():
            found["tensors"] += 1
            found["entries"] += int(unequal.sum())
            found["max_abs"] = max(found["max_abs"], float((x.float() - right[key].float()).abs().max()))
    return found


def check(methods: list[str], models: Path, work: Path, device: str) -> list[dict]:
    """Each merge built on the CPU and on `device` (on the CPU: at one thread); digests compared."""
    home = work / "home"
    cpu = Merges(models, work / "cpu", home, "cpu")
    other = Merges(models, work / "other", home, device, () if device != "cpu" else ("--threads", "1"))
    rows = []
    for method in methods:
        outs = [side.work / f"out-{method}" for side in (cpu, other)]
        row: dict = {"merge": method, "cpu": cpu.mergepkg(method, outs[0]), "other": other.mergepkg(method, outs[1])}
        row.update(other_label=other.label, equal=row["cpu"]["digest"] == row["other"]["digest"])
        row["documented"] = DOCUMENTED.get(method, "–") if device != "cpu" else THREADS
        if not row["equal"]:
            row["differences"] = in_child(differences, *outs)
        for out in outs:
            shutil.rmtree(out)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --- speed ----------------------------------------------------------------------------


def rounds(methods: list[str], merges: Merges, repeat: int, deadline: float, with_mergekit: bool) -> list[dict]:
    """Up to `repeat` rounds, each every merge by mergepkg then mergekit; a round after the
    first starts only if one as long as the last ends before `deadline` (time.monotonic)."""
    runs: dict[str, dict[str, list]] = {m: {"mergepkg": [], "mergekit": []} for m in methods}
    for method in methods:
        merges.recipe(method)  # imported and locked (the inputs hashed) before the first round is timed
    for done in range(repeat):
        start = time.monotonic()
        for method in methods:
            warm(merges.models, merges.inputs(method))
            out = merges.work / "out"
            runs[method]["mergepkg"].append(merges.mergepkg(method, out))
            shutil.rmtree(out)
            if with_mergekit:
                runs[method]["mergekit"].append(merges.mergekit(method, out))
                shutil.rmtree(out)
            print(json.dumps({method: runs[method]}), file=sys.stderr, flush=True)
        if time.monotonic() + (time.monotonic() - start) > deadline and done + 1 < repeat:
            print(f"stopping after {done + 1} round(s): another would pass --seconds", file=sys.stderr)
            break
    rows = []
    for method, by_tool in runs.items():
        digests = {r["digest"] for r in by_tool["mergepkg"]}
        if len(digests) != 1:
            raise SystemExit(f"{method}: builds gave different digests: {sorted(digests)}")
        inputs = sum(p.stat().st_size for m in merges.inputs(method) for p in (merges.models / m).glob("*.safetensors"))
        row: dict = {"merge": method, "digest": digests.pop(), "input_gb": inputs / GB}
        for tool, measures in by_tool.items():
            for field in ("s", "rss_gb", "gpu_gb") if measures else ():
                values = [r[field] for r in measures if r[field] is not None]
                row[f"{tool}_{field}"] = statistics.median(values) if values else None
            row[f"{tool}_runs_s"] = [round(r["s"], 2) for r in measures]
        rows.append(row)
    return rows


# --- report ---------------------------------------------------------------------------


def torch_line(device: str) -> tuple[str, bool]:
    """What torch sees (in a child, `in_child`): a line, and whether CUDA is available."""
    import torch

    line = f"torch {torch.__version__}, CUDA build {torch.version.cuda}, CUDA available: {torch.cuda.is_available()}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device if device.startswith("cuda") else "cuda"))
        line += (
            f", {torch.cuda.device_count()} device(s): {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}"
        )
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        line += f", driver {subprocess.run(query, capture_output=True, text=True).stdout.strip()}"
    return line + f"; --device {device}", torch.cuda.is_available()


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12] + "…"


def fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def report(checks: list[dict], rows: list[dict], layers: int, shape: str) -> str:
    lines = []
    if checks:
        other = checks[0]["other_label"]
        lines += [
            f"Same bytes: mergepkg build --device cpu and --device {other} ({layers}-layer subset of {shape})",
            "",
            f"| merge | cpu digest | {other} digest | equal | cpu s | {other} s | documented | differing |",
            "|---" * 8 + "|",
        ]
        for c in checks:
            diff = c.get("differences")
            differing = (
                f"{diff['tensors']} tensors, {diff['entries']} entries, max {diff['max_abs']:.3g}" if diff else "–"
            )
            lines.append(
                f"| {c['merge']} | {short(c['cpu']['digest'])} | {short(c['other']['digest'])} | {c['equal']} | "
                f"{c['cpu']['s']:.1f} | {c['other']['s']:.1f} | {c['documented']} | {differing} |"
            )
        lines.append("")
    if rows:
        runs = len(rows[0]["mergepkg_runs_s"])
        lines += [
            f"Speed ({shape}): medians of {runs} round(s), in alternation.",
            "",
            "| merge | input GB | mergepkg s | mergekit s | time ratio | mergepkg RSS GB | mergekit RSS GB | "
            "mergepkg GPU GB | mergekit GPU GB | mergepkg input GB/s |",
            "|---" * 10 + "|",
        ]
        for r in rows:
            mk = r.get("mergekit_s")
            lines.append(
                f"| {r['merge']} | {r['input_gb']:.2f} | {r['mergepkg_s']:.1f} | {fmt(mk)} | "
                f"{fmt(mk and r['mergepkg_s'] / mk, '.3f')} | {r['mergepkg_rss_gb']:.2f} | "
                f"{fmt(r.get('mergekit_rss_gb'), '.2f')} | {fmt(r.get('mergepkg_gpu_gb'), '.2f')} | "
                f"{fmt(r.get('mergekit_gpu_gb'), '.2f')} | {r['input_gb'] / r['mergepkg_s']:.2f} |"
            )
        lines += [
            "",
            "Runs (s): " + "; ".join(f"{r['merge']} {r['mergepkg_runs_s']} {r['mergekit_runs_s']}" for r in rows),
        ]
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda", help="where mergepkg merges (and mergekit, with --cuda)")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "mergepkg-bench-gpu")
    parser.add_argument("--only", default="linear,ties", help="comma-separated merges to time")
    parser.add_argument("--check", default="linear,ties,dare_ties", help="merges built on both devices ('' for none)")
    parser.add_argument("--check-layers", type=int, default=2, help="layers of the subset the check builds")
    parser.add_argument("--repeat", type=int, default=3, help="rounds at most; medians are reported")
    parser.add_argument("--seconds", type=float, default=360, help="no round starts that would end later than this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    seen, cuda = in_child(torch_line, args.device)
    print(seen, flush=True)
    if args.device.startswith("cuda") and not cuda:
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device (use --device cpu)")
    shape, root = SHAPES[args.shape], args.models
    with_mergekit = not args.no_mergekit and (BIN / "mergekit-yaml").exists()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=root))  # outputs on the models' disk
    size, layers = model_bytes(shape, shape["num_hidden_layers"]), min(args.check_layers, shape["num_hidden_layers"])
    try:
        checks: list[dict] = []
        if args.check:
            subset = root / f"{args.shape}-{layers}-layers"
            make_models(subset, args.shape, layers, args.device, args.seed, room=2 * model_bytes(shape, layers))
            checks = check(args.check.split(","), subset, work / "check", args.device)
            shutil.rmtree(subset)  # its disk goes to the whole set
        rows: list[dict] = []
        if args.only:
            models = root / args.shape
            make_models(models, args.shape, shape["num_hidden_layers"], args.device, args.seed, room=size + 10**9)
            merges = Merges(models, work / "speed", work / "speed" / "home", args.device)
            rows = rounds(args.only.split(","), merges, args.repeat, started + args.seconds, with_mergekit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(machine())
    took = time.monotonic() - started
    print(f"{args.shape}: {size / 2 / 1e6:,.0f}M parameters, {size / GB:.2f} GB a model; the script took {took:.0f} s")
    print()
    print(report(checks, rows, layers, args.shape))
    if args.json:
        out = {"machine": machine(), "torch": seen, "shape": args.shape, "checks": checks}
        args.json.write_text(json.dumps({**out, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
