"""A split step's tasks (`cluster/parts.py`) run in this process, each "node" a home of
its own, the remote on `file://`, no Ray: the parts stage their shards, the assembly
makes them the artifact's files on the remote by renames (the same inodes), reads
none of their bytes and stores nothing; a pull gives the local build byte for byte; an
assembly lost before its record leaves nothing readable and its retry finishes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import build_recipe

from mergepkg.builder.substitute import Remotes
from mergepkg.cluster import parts as parts_module
from mergepkg.cluster.driver import CLUSTER_REMOTE, _plan
from mergepkg.cluster.jobs import Engine, StepJob
from mergepkg.cluster.parts import run_assemble, run_part, staging
from mergepkg.cluster.plan import Split, make_graph, make_jobs
from mergepkg.engine.progress import NullReporter
from mergepkg.engine.split import Part
from mergepkg.recipe.parse import load_recipe
from mergepkg.remote import transfer
from mergepkg.remote.errors import RemoteError
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, substitute
from mergepkg.settings import Settings
from mergepkg.store.local import MANIFEST, Store
from mergepkg.store.session import Session

SHARD = 20_000  # the tiny models in about ten shards
BODY = """
[steps.s]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.7 }]
"""


def planned(path: Path, url: str) -> tuple[StepJob, list[Part]]:
    """The split step's job and parts, as the driver plans them."""
    session = Session(Settings(max_shard_bytes=SHARD))
    p = _plan(load_recipe(path), None, session, None, "update", NullReporter(), False)
    graph = make_graph([p], session, Remotes(session.settings, [(CLUSTER_REMOTE, url)], p.warnings.warning), 0)
    make_jobs(graph, url, Engine.of(session.settings), False, Split(3))
    (key,) = graph.parts
    return graph.jobs[key], graph.parts[key]


def on_node(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("MERGEPKG_HOME", str(home))


@pytest.fixture
def split(write_recipe, tmp_path, monkeypatch):
    """The step planned in three parts, each built and staged on the remote by a node of its own."""
    path = write_recipe(BODY)
    (tmp_path / "remote").mkdir()
    url = f"file://{tmp_path / 'remote'}"
    on_node(monkeypatch, tmp_path / "driver")
    job, parts = planned(path, url)
    assert len(parts) == 3
    answers = []
    for part in parts:
        on_node(monkeypatch, tmp_path / f"node{part.index}")
        answers.append(run_part(job, part, None))
    assert all(a.error is None and a.result is not None for a in answers)
    on_node(monkeypatch, tmp_path / "local")
    local = build_recipe(path, max_shard_bytes=SHARD).artifacts["s"]
    return job, parts, answers, open_remote(url), local


def staged_inodes(remote: Remote, parts: list[Part]) -> dict[str, int]:
    return {n: Path(staging(remote, p), n).stat().st_ino for p in parts for n in p.shards}


def no_reads(*_args, **_kw):
    raise AssertionError("the assembly read a shard's bytes")


def test_the_assembly_renames_the_staged_shards_on_the_remote_reading_none(split, tmp_path, monkeypatch):
    job, parts, answers, remote, local = split
    inodes = staged_inodes(remote, parts)
    on_node(monkeypatch, tmp_path / "assembler")
    with monkeypatch.context() as m:  # undone after, leaving the test's home as it was
        for name in ("get_file", "hash_file"):  # the transfer layer's reads
            m.setattr(transfer, name, no_reads)
        done = run_assemble(job, parts, None, *answers)
    assert done.error is None and done.digest == local.digest and not done.found
    record = remote.record(job.key)
    assert record is not None and record.digest == local.digest
    for name, inode in inodes.items():  # renamed where they were staged: not one byte moved
        assert Path(remote.path(record.folder, name)).stat().st_ino == inode
    assert not Path(remote.path("staging", job.key)).exists()
    assert Store(tmp_path / "assembler").get(job.key) is None  # no node's store holds the step
    got = substitute(remote, Store(tmp_path / "reader"), job.key, expected_digest=local.digest)
    want = {p.name: p.read_bytes() for p in local.folder.iterdir() if p.name != MANIFEST}
    assert {p.name: p.read_bytes() for p in got.folder.iterdir() if p.name != MANIFEST} == want
    # a second assembler of the key (Ray's retry of a task whose node went after the record)
    again = run_assemble(job, parts, None, *answers)
    assert again.found and again.digest == local.digest


def test_an_assembly_lost_before_its_record_is_retried_to_the_same_artifact(split, tmp_path, monkeypatch):
    job, parts, answers, remote, local = split
    on_node(monkeypatch, tmp_path / "assembler")
    with monkeypatch.context() as m:
        m.setattr(Remote, "_write_record", lambda self, record: (_ for _ in ()).throw(OSError("node lost")))
        with pytest.raises(OSError, match="node lost"):  # Ray retries a task raising OSError
            run_assemble(job, parts, None, *answers)
    assert not remote.has(job.key) and not [f for p in parts for f in Path(staging(remote, p)).glob("*.safetensors")]
    done = run_assemble(job, parts, None, *answers)
    assert done.error is None and done.digest == local.digest and not done.found
    got = substitute(remote, Store(tmp_path / "reader"), job.key, expected_digest=local.digest)
    assert got.digest == local.digest


def test_a_part_stages_nothing_on_a_folder_remote_whose_folder_is_gone(write_recipe, tmp_path, monkeypatch):
    """A node whose shared disk was unmounted while it built its part staged the part's
    shards into a new folder at the mount point (a local write makes the folders it needs),
    which no other node sees: the part fails, as a push there does, and makes no folder."""
    path = write_recipe(BODY)
    folder = tmp_path / "remote"
    folder.mkdir()
    on_node(monkeypatch, tmp_path / "driver")
    job, parts = planned(path, f"file://{folder}")
    real = parts_module.build_part

    def unmounted_meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        shutil.rmtree(folder)
        return result

    monkeypatch.setattr(parts_module, "build_part", unmounted_meanwhile)
    on_node(monkeypatch, tmp_path / "node0")
    done = run_part(job, parts[0], None)
    assert isinstance(done.error, RemoteError) and "the remote's folder is gone" in done.error.message
    assert done.result is None and not folder.exists()
