"""Cluster figures (docs/performance.md#cluster): what a step costs through Ray, and a model
of what a large merge would take on N nodes.

    .venv/bin/python bench/cluster.py              # --steps 16 --nodes 1 --bandwidth 10

1. Scheduling overhead: a recipe of `--steps` trivial steps (linear merges of the demo's
   0.9 MB models, distinct weights) built in-process here, then on a local Ray cluster of
   `--nodes` one-CPU nodes (`ray.cluster_utils.Cluster`, each node its own home, the
   remote on `file://`), workers warmed first by a build of other steps. The difference
   per step is what a step pays for being a task: submitting it, pulling its inputs
   (none here: sources are local paths) and pushing its result, the driver's pull of the
   outputs. A split part would be one such task too.
2. A model of a TIES (base + 3) on 1, 4 and 16 nodes, split by tensors, from this page's
   measured rate (ties over 4.34 GB of input in 8.5 s on 2 cores, 1.8 s of it start-up)
   and a stated network bandwidth (see `model`): the assembly in place on the remote as
   the code does it (renames on a shared disk; on S3, server-side copies at an assumed
   `--copy-gbps`), and as it was before (gathered through one node). `--model-only`
   prints the model without starting Ray.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo" / "models"

# measured on this machine at the end of round 1 (docs/performance-log.md, "Round 1"): 2 cores
TIES_SECONDS, TIES_INPUT_GB, START_SECONDS = 8.5, 4.34, 1.8
HASH_GBPS = 1.75  # sha256 of an output, one core (docs/performance.md)


def recipe(folder: Path, name: str, steps: int, offset: float) -> Path:
    body = "".join(
        f'[steps.s{i}]\nmethod = "linear"\ninputs = [{{ model = "upper", weight = {offset + i / 1000:.4f} }}, '
        f'{{ model = "inc", weight = 0.5 }}]\n\n'
        for i in range(steps)
    )
    sources = "".join(f'{m} = {{ path = "{DEMO / m}" }}\n' for m in ("upper", "inc"))
    path = folder / f"{name}.toml"
    path.write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n[sources]\n{sources}\n{body}')
    return path


def timed_local(path: Path, home: Path) -> float:
    from mergepkg.builder.build import build
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.settings import Settings
    from mergepkg.store.session import Session

    started = time.perf_counter()
    build(load_recipe(path), Session(Settings(home=home, threads=1)), remote="never")
    return time.perf_counter() - started


def timed_cluster(path: Path, home: Path, remote: str, parts: int = 1) -> float:
    from mergepkg.cluster.driver import build_on_cluster
    from mergepkg.cluster.plan import Split
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.settings import Settings
    from mergepkg.store.session import Session

    session = Session(Settings(home=home, threads=1, max_shard_bytes=SPLIT_SHARD))
    started = time.perf_counter()
    split = Split(parts) if parts > 1 else None
    build_on_cluster([load_recipe(path)], session, address="auto", remote=remote, split=split)
    return time.perf_counter() - started


SPLIT_SHARD = 100_000  # the demo model (0.9 MB) in about nine shards, so a step splits in up to nine parts


def overhead(steps: int, nodes: int, parts: int) -> tuple[float, float, float]:
    """(seconds per step here, seconds per step on the cluster, seconds per part of a split step)."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="mergepkg-bench-cluster-"))
    try:
        (tmp / "remote").mkdir()
        remote = f"file://{tmp / 'remote'}"
        local = timed_local(recipe(tmp, "warm", steps, 0.1), tmp / "warm-home")  # imports, numba: warm
        local = timed_local(recipe(tmp, "local", steps, 0.3), tmp / "local-home")
        store = 100 * 1024**2
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store})
        try:
            for i in range(nodes):
                env = {"MERGEPKG_HOME": str(tmp / f"node{i}")}
                cluster.add_node(num_cpus=1, object_store_memory=store, env_vars=env)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
            timed_cluster(recipe(tmp, "warm", steps, 0.2), tmp / "driver-warm", remote)  # workers warm
            on = timed_cluster(recipe(tmp, "cluster", steps, 0.3), tmp / "driver", remote)
            whole = timed_cluster(recipe(tmp, "whole", 1, 0.7), tmp / "driver", remote)
            split = timed_cluster(recipe(tmp, "split", 1, 0.8), tmp / "driver", remote, parts)
        finally:
            ray.shutdown()
            cluster.shutdown()
        return local / steps, on / steps, (split - whole) / parts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model(
    params_b: float, nodes: int, gbps: float, per_task: float, cores: int, gather: bool = False, copy_gbps: float = 0
) -> float:
    """Seconds for a TIES of base + 3 models of `params_b` billion bfloat16 parameters, split
    by tensors over `nodes` nodes of `cores` cores, on a `gbps` Gbit/s network; inputs in
    each node's Hugging Face cache already (downloads are not counted).

    Each node merges 1/N of the tensors at this page's measured rate (scaled by its cores),
    writes and stages its part (1/N of the output) on the remote (an unsplit step on one
    node pushes its output). Every part and the assembly are tasks (`per_task` each). The
    assembly, as `cluster/parts.py` does it, moves no tensor bytes through its node: the
    staged shards become the artifact's files on the remote (`remote/adopt.py`), a rename
    on a shared disk (counted as free), or a server-side copy on S3 at `copy_gbps` GB/s
    over all its files together (0: not counted). With `gather`, the assembly as it was
    before: one node pulls the parts, hashes the output and pushes it back."""
    model_gb = params_b * 2  # bfloat16
    rate = TIES_INPUT_GB / (TIES_SECONDS - START_SECONDS) * cores / 2  # input GB/s per node
    net = gbps / 8  # GB/s
    merge = 4 * model_gb / nodes / rate + model_gb / nodes / net + per_task
    if nodes == 1:
        return START_SECONDS + merge
    if gather:
        moved = 2 * model_gb / net + model_gb / HASH_GBPS  # parts in, hashed, artifact out
    else:
        moved = model_gb / copy_gbps if copy_gbps else 0.0  # renames, or the remote's own copies
    return START_SECONDS + merge + moved + per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--parts", type=int, default=8, help="parts of the split step")
    parser.add_argument("--bandwidth", type=float, default=10.0, help="Gbit/s between nodes and the remote")
    parser.add_argument("--cores", type=int, default=16, help="cores per node in the model")
    parser.add_argument(
        "--copy-gbps", type=float, default=1.0, help="an S3 store's server-side copy rate (GB/s), for the S3 column"
    )
    parser.add_argument("--model-only", action="store_true", help="the model alone, with --per-task seconds a task")
    parser.add_argument("--per-task", type=float, default=0.11, help="a task's overhead for --model-only (s)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    per_task = args.per_task
    if not args.model_only:
        here, there, part = overhead(args.steps, args.nodes, args.parts)
        print(f"{args.steps} trivial steps, {args.nodes} one-CPU node(s)")
        print(f"  in-process build: {here * 1000:.0f} ms a step")
        print(f"  through Ray:      {there * 1000:.0f} ms a step (overhead {1000 * (there - here):.0f} ms)")
        print(f"  one step split in {args.parts} parts: {part * 1000:+.0f} ms a part against the step whole")
        per_task = max(there - here, 0.0)
    print(f"\nTIES base + 3, bfloat16, {args.cores} cores a node, {args.bandwidth:g} Gbit/s, inputs cached on nodes")
    print(f"  model  nodes  gathered s  speedup  in place s  speedup  S3 copy {args.copy_gbps:g} GB/s s  speedup")
    for params in (7, 70):
        one = model(params, 1, args.bandwidth, per_task, args.cores)
        for n in (1, 4, 16):
            t = model(params, n, args.bandwidth, per_task, args.cores, gather=True)
            u = model(params, n, args.bandwidth, per_task, args.cores)
            c = model(params, n, args.bandwidth, per_task, args.cores, copy_gbps=args.copy_gbps)
            row = f"{t:>10.0f}  {one / t:>7.2f}  {u:>10.0f}  {one / u:>7.2f}  {c:>18.0f}  {one / c:>7.2f}"
            print(f"  {params:>3}B  {n:>5}  {row}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
