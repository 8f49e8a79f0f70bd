"""A remote on a real S3-compatible server (moto's, on 127.0.0.1): a recipe built in one
home is pushed and a fresh home substitutes every step with the lock's digests; the
refusals and concurrent pushers as on disk (issue 16)."""

from __future__ import annotations

import time
import uuid

import pytest
from helpers import THREE, build_recipe
from remotes import S3_ENV, make_artifact, make_bucket, moto_server, push_together, s3_options

from mergepkg.lockfile import read_lock
from mergepkg.remote.errors import Refused
from mergepkg.remote.sync import open_remote, push_artifact, substitute
from mergepkg.settings import Settings
from mergepkg.store.local import Store

pytestmark = pytest.mark.slow  # a server


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_url(s3_endpoint):
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, bucket)
    return f"s3://{bucket}/cache"


def test_a_built_recipe_pushed_to_s3_is_substituted_in_a_fresh_home_with_the_locks_digests(
    s3_endpoint, s3_url, write_recipe, tmp_path
):
    recipe = write_recipe(THREE)
    build_recipe(recipe, tmp_path / "out", home=tmp_path / "builder")
    lock = read_lock(recipe.with_suffix(".lock"))
    remote = open_remote(s3_url, **s3_options(s3_endpoint))
    built = Store(tmp_path / "builder")
    for step in lock.steps.values():
        art = built.get(step.key)
        assert art is not None
        push_artifact(remote, art)
    assert remote.keys() == sorted(s.key for s in lock.steps.values())
    fresh = Store(tmp_path / "fresh")
    for step in lock.steps.values():
        got = substitute(remote, fresh, step.key, expected_digest=step.digest)
        assert got.digest == step.digest and got.holds()
    # the fresh home builds the recipe from what it pulled, reading no tensor
    report = build_recipe(recipe, tmp_path / "out2", home=tmp_path / "fresh", mode="locked")
    assert sorted(report.reused) == sorted(lock.steps) and not report.built


def test_s3_refuses_a_tampered_file_and_a_record_without_files(s3_endpoint, s3_url, tmp_path):
    remote = open_remote(s3_url, **s3_options(s3_endpoint))
    art = make_artifact(Store(tmp_path / "a"), 30)
    push_artifact(remote, art)
    record = remote.record(art.key)
    assert record is not None
    shard = remote.path(record.folder, "model-00001-of-00002.safetensors")
    data = bytearray(remote.fs.cat_file(shard))
    data[-3] ^= 1
    remote.fs.pipe_file(shard, bytes(data))
    fresh = Store(tmp_path / "b")
    with pytest.raises(Refused, match="differs from its record"):
        substitute(remote, fresh, art.key, expected_digest=art.digest)
    remote.fs.rm_file(shard)
    with pytest.raises(Refused, match="missing"):
        substitute(remote, fresh, art.key, expected_digest=art.digest)
    assert fresh.get(art.key) is None
    assert push_artifact(remote, art).uploaded == ("model-00001-of-00002.safetensors",)
    assert substitute(remote, fresh, art.key, expected_digest=art.digest).digest == art.digest


def test_four_concurrent_s3_pushers_of_one_key_leave_one_intact_artifact(s3_endpoint, s3_url, tmp_path):
    arts = [make_artifact(Store(tmp_path / f"h{i}"), 31) for i in range(4)]
    push_together(lambda: open_remote(s3_url, **s3_options(s3_endpoint)), arts)
    remote = open_remote(s3_url, **s3_options(s3_endpoint))
    assert remote.keys() == [arts[0].key]
    got = substitute(remote, Store(tmp_path / "fresh"), arts[0].key, expected_digest=arts[0].digest)
    assert got.digest == arts[0].digest
    remote.grace_seconds = 0
    assert remote.gc({arts[0].key}).files == ()  # one variant, all named by the record


def test_s3_credentials_and_endpoint_come_from_the_environment(s3_endpoint, s3_url, tmp_path, monkeypatch):
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    from mergepkg.remote.config import add_remote
    from mergepkg.remote.sync import open_configured

    settings = Settings()
    add_remote(settings, "team", s3_url)
    remote = open_configured(settings, "team", skip_instance_cache=True)
    art = make_artifact(Store(tmp_path / "a"), 32)
    assert push_artifact(remote, art).nbytes == art.size
    assert open_configured(settings, "team", skip_instance_cache=True).has(art.key)


def test_throughput_of_a_small_artifact(s3_endpoint, s3_url, tmp_path, record_property):
    """Not a benchmark: the figures are recorded (`-rA`, junit) for the docs, not asserted."""
    art = make_artifact(Store(tmp_path / "a"), 33, rows=4096, shards=4)  # 32 MiB
    (tmp_path / "shared").mkdir()
    for name, remote in (
        ("file", open_remote(str(tmp_path / "shared"))),
        ("s3", open_remote(s3_url, **s3_options(s3_endpoint))),
    ):
        t = time.perf_counter()
        push_artifact(remote, art)
        push_s = time.perf_counter() - t
        t = time.perf_counter()
        substitute(remote, Store(tmp_path / f"pull-{name}"), art.key, expected_digest=art.digest)
        pull_s = time.perf_counter() - t
        mb = art.size / 1e6
        record_property(f"{name}_push_MBps", round(mb / push_s, 1))
        record_property(f"{name}_pull_MBps", round(mb / pull_s, 1))
        print(f"{name}: {mb:.1f} MB push {mb / push_s:.0f} MB/s, pull (with checks) {mb / pull_s:.0f} MB/s")


def test_pushing_to_a_bucket_that_does_not_exist_fails_and_makes_none(s3_endpoint, tmp_path):
    """s3fs's makedirs creates a missing bucket: a mistyped one must not appear and "succeed"."""
    import boto3

    from mergepkg.remote.errors import RemoteError, reaching

    missing = f"nobucket-{uuid.uuid4().hex[:8]}"
    remote = open_remote(f"s3://{missing}/cache", **s3_options(s3_endpoint))
    art = make_artifact(Store(tmp_path / "a"), 33)
    with pytest.raises(RemoteError, match="cannot reach the remote"), reaching(remote.url):
        push_artifact(remote, art)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in S3_ENV.items() if "KEY" in k})
    assert missing not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
