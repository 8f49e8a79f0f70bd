"""Benchmark: pushing and pulling built steps through remotes, against copying.

    python bench/remote.py                  # the linear merge of the bench model set (bench/run.py)
    python bench/remote.py --generated 256  # a generated 256 MB artifact instead (no build)
    python bench/remote.py --repeat 3       # rounds per figure (default 1; medians)

With the model set of bench/run.py in ~/.cache/mergepkg-bench (a 542M-parameter model
per folder, ~1.1 GB), it builds bench/configs/linear.yml (imported, as bench/run.py
does) in a fresh home, then times, on the same artifact:
- `cp -r` of its folder, and `mergepkg cache push` / `cache pull` to and from a
  `file://` remote (the pull is into a fresh home and checks every file's sha256 and
  the tensors' digest against the lock);
- one PUT and one GET of the same bytes through boto3 on a moto S3 server on
  127.0.0.1 (started as tests/remotes.py does), then `cache push` / `cache pull` there;
- the time to a usable model from the remote (`cache pull` then `build --locked`)
  against building it (`mergepkg build`, empty store).
Every mergepkg figure is a whole command (process start included). This is a script
that prints figures, not a test: machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def mergepkg(home: Path, *args: object, env: dict | None = None) -> str:
    """Run `mergepkg ARGS` in `home`; stdout, or exit with its stderr on failure."""
    proc = subprocess.run(
        [str(BIN / "mergepkg"), *map(str, args)],
        env={**os.environ, "MERGEPKG_HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"failed: mergepkg {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return proc.stdout


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None) -> float:
    """Median seconds of `fn` over `repeat` rounds, `before` run (untimed) before each."""
    times = []
    for _ in range(repeat):
        before()
        os.sync()  # earlier rounds' dirty pages must not throttle this one
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the artifact -----------------------------------------------------------------------
def built_artifact(models: Path, work: Path, home: Path) -> tuple[Path, float]:
    """bench/configs/linear.yml imported and built in `home`: (recipe, build seconds)."""
    config = work / "linear.yml"
    config.write_text((ROOT / "bench" / "configs" / "linear.yml").read_text().replace("MODELS", str(models)))
    recipe = work / "linear.toml"
    mergepkg(home, "import", config, "-o", recipe)
    start = time.perf_counter()
    mergepkg(home, "build", recipe, "--out", work / "out-build", "-q")
    return recipe, time.perf_counter() - start


def generated_artifact(work: Path, home: Path, mb: int) -> Path:
    """A stored artifact of `mb` MB of random float32 tensors in 4 shards, and a lock
    pinning it (`generated.lock`); returns the lock."""
    import numpy as np
    from safetensors.numpy import save_file

    from mergepkg.canonical import canonical_json, sha256_hex
    from mergepkg.io.digest import tensor_digests
    from mergepkg.lockfile import Lock, LockedStep, write_lock
    from mergepkg.store.local import Store

    entry = {"hash_version": 1, "method": "bench", "mb": mb}
    key = sha256_hex(canonical_json(entry))
    store = Store(home)
    folder = store.new_folder(key)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    rows = mb * (1 << 20) // 16 // 4 // 4096  # 4 shards of 4 tensors, 4096 float32 columns
    rng = np.random.default_rng(0)
    for s in range(4):
        tensors = {f"t.{s}.{i}": rng.standard_normal((rows, 4096), dtype=np.float32) for i in range(4)}
        save_file(tensors, folder / f"model-{s + 1:05d}-of-00004.safetensors")
    art = store.commit(key, folder, entry, tensor_digests(folder), seconds=0.0)
    lock = work / "generated.lock"
    write_lock(lock, Lock("sha256:" + "0" * 64, {}, {"generated": LockedStep("generated", "bench", key, art.digest)}))
    return lock


# --- the figures --------------------------------------------------------------------
def measure(args: argparse.Namespace, work: Path) -> dict:
    home = work / "home-a"
    use_models = args.generated is None and (args.models / "ft1" / "model.safetensors").is_file()
    build_s = None
    if use_models:
        target, build_s = built_artifact(args.models, work, home)
    else:
        target = generated_artifact(work, home, args.generated or 256)
    (artifact,) = [p for p in (home / "store").iterdir()]
    nbytes = sum(p.stat().st_size for p in artifact.iterdir())
    row: dict = {"artifact_mb": nbytes / 1e6, "files": len(list(artifact.iterdir())), "build_s": build_s}

    def fresh(path: Path) -> Callable[[], None]:
        return lambda: (shutil.rmtree(path, ignore_errors=True), path.mkdir(parents=True))

    copy = work / "copy"
    row["cp_s"] = timed(
        lambda: subprocess.run(["cp", "-r", str(artifact), str(copy / "x")], check=True), args.repeat, fresh(copy)
    )

    disk = work / "disk"
    disk.mkdir()
    pull_home = work / "home-b"

    def setup_home(h: Path, url: str) -> None:
        shutil.rmtree(h, ignore_errors=True)
        mergepkg(h, "remote", "add", "r", url)

    mergepkg(home, "remote", "add", "disk", disk)
    row["file_push_s"] = timed(
        lambda: mergepkg(home, "cache", "push", target, "-r", "disk", "-q"), args.repeat, fresh(disk)
    )
    row["file_pull_s"] = timed(
        lambda: mergepkg(pull_home, "cache", "pull", target, "-q"),
        args.repeat,
        lambda: setup_home(pull_home, str(disk)),
    )
    if use_models:
        out = work / "out-pulled"
        row["pull_then_locked_build_s"] = timed(
            lambda: (
                mergepkg(pull_home, "cache", "pull", target, "-q"),
                mergepkg(pull_home, "build", target, "--locked", "--out", out, "-q"),
            ),
            args.repeat,
            lambda: setup_home(pull_home, str(disk)),
        )
    row.update(s3(args, work, home, pull_home, artifact, target, setup_home))
    return row


def s3(args, work: Path, home: Path, pull_home: Path, artifact: Path, target: Path, setup_home) -> dict:
    """The moto server's raw PUT/GET of the largest file and all files, then push and pull."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="raw")
        files = sorted(p for p in artifact.iterdir() if p.name != "mergepkg-manifest.json")

        def put_all() -> None:
            for p in files:
                with open(p, "rb") as f:
                    client.put_object(Bucket="raw", Key=p.name, Body=f)  # one PUT each

        def get_all() -> None:
            for p in files:
                body = client.get_object(Bucket="raw", Key=p.name)["Body"]
                while body.read(8 << 20):
                    pass

        row = {"s3_raw_put_s": timed(put_all, args.repeat), "s3_raw_get_s": timed(get_all, args.repeat)}
        buckets = iter(range(1000))

        def new_bucket() -> None:
            name = f"cache{next(buckets)}"
            client.create_bucket(Bucket=name)
            url = f"s3://{name}/mergepkg"
            subprocess.run(
                [str(BIN / "mergepkg"), "remote", "remove", "s3"],
                env={**os.environ, "MERGEPKG_HOME": str(home)},
                capture_output=True,
            )
            mergepkg(home, "remote", "add", "s3", url)
            row["url"] = url

        row["s3_push_s"] = timed(
            lambda: mergepkg(home, "cache", "push", target, "-r", "s3", "-q", env=env), args.repeat, new_bucket
        )
        row["s3_pull_s"] = timed(
            lambda: mergepkg(pull_home, "cache", "pull", target, "-q", env=env),
            args.repeat,
            lambda: setup_home(pull_home, row["url"]),
        )
        del row["url"]
        return row
    finally:
        server.stop()


def report(row: dict, repeat: int) -> str:
    mb = row["artifact_mb"]

    def rate(key: str) -> str:
        return f"{row[key]:.2f} s ({mb / row[key]:.0f} MB/s)"

    lines = [
        f"artifact: {mb:.0f} MB in {row['files'] - 1} files (+ the local manifest); medians of {repeat} rounds",
        f"cp -r:                    {rate('cp_s')}",
        f"file:// push:             {rate('file_push_s')}",
        f"file:// pull:             {rate('file_pull_s')}",
        f"moto S3, raw PUT (boto3): {rate('s3_raw_put_s')}",
        f"moto S3, raw GET (boto3): {rate('s3_raw_get_s')}",
        f"moto S3 push:             {rate('s3_push_s')}",
        f"moto S3 pull:             {rate('s3_pull_s')}",
    ]
    if row.get("build_s") is not None:
        lines += [
            f"build (mergepkg build, empty store):          {row['build_s']:.2f} s",
            f"usable from file:// (pull + build --locked):  {row['pull_then_locked_build_s']:.2f} s",
        ]
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "mergepkg-bench")
    parser.add_argument("--generated", type=int, metavar="MB", help="a generated artifact of MB megabytes, no build")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per figure; medians are reported")
    parser.add_argument("--work", type=Path, help="where to work (default: a temp folder, removed after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mergepkg-bench-remote-", dir=args.work) as tmp:
        row = measure(args, Path(tmp))
    print(machine())
    print(report(row, args.repeat))


if __name__ == "__main__":
    main()
