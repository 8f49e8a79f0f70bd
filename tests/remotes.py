"""Remotes for tests: artifacts made without torch, and a real S3-compatible server
(moto's) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.io.digest import tensor_digests
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote
from mergepkg.store.local import Artifact, Store


def scratch_remote(kind: str, tmp_path: Path) -> Iterator[Remote]:
    """An empty remote of `kind` ("memory" or "file"), removed afterwards: the body of the
    `remote` fixtures of tests/remote/."""
    if kind == "memory":
        url = f"memory://t-{uuid.uuid4().hex[:8]}/cache"
        yield open_remote(url)
        open_remote(url).fs.rm(url.partition("://")[2].split("/")[0], recursive=True)
    else:
        (tmp_path / "shared").mkdir()
        yield open_remote(str(tmp_path / "shared"))


def make_artifact(store: Store, seed: int = 0, *, rows: int = 64, shards: int = 2) -> Artifact:
    """A stored artifact as a build leaves one: config.json and `shards` safetensors
    files of two float32 tensors each (`rows` x 256: 2 KiB a row a shard), committed under the
    key of a made-up lock entry."""
    import numpy as np
    from safetensors.numpy import save_file

    entry = {"hash_version": 1, "method": "test", "seed": seed, "rows": rows, "shards": shards}
    key = sha256_hex(canonical_json(entry))
    with store.lock(key):
        folder = store.new_folder(key)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
        rng = np.random.default_rng(seed)
        for s in range(shards):
            tensors = {f"layers.{s}.{i}.weight": rng.standard_normal((rows, 256), dtype=np.float32) for i in range(2)}
            save_file(tensors, folder / f"model-{s + 1:05d}-of-{shards:05d}.safetensors")
        return store.commit(key, folder, entry, tensor_digests(folder), seconds=0.0)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1: its endpoint URL; stopped on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    # port 0: the server binds a free port itself (a port found free, then bound by the
    # server, could be taken in between, and moto's start() would then wait forever)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    kw = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **kw).create_bucket(Bucket=bucket)


def s3_options(endpoint: str) -> dict:
    """What `open_remote` passes s3fs to reach the moto server with fake credentials."""
    return {
        "key": S3_ENV["AWS_ACCESS_KEY_ID"],
        "secret": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": True,
    }


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def env_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def push_together(open_one: Callable[[], object], arts: list) -> None:
    """Push each artifact from a thread of its own, all released at once, each through a
    remote `open_one()` gives; fails with the first error any pusher met."""
    from mergepkg.remote.sync import push_artifact

    barrier, errors = threading.Barrier(len(arts), timeout=60), []  # a pusher that fails to open breaks it

    def push(art):
        try:
            remote = open_one()
            barrier.wait()
            push_artifact(remote, art)
        except Exception as e:  # reported below, on the test's thread
            errors.append(e)  # first, before the others' BrokenBarrierError
            barrier.abort()  # the others stop waiting for this one

    threads = [threading.Thread(target=push, args=(a,)) for a in arts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a pusher still runs after 120 s"
