"""Staged files adopted as an artifact's on the remote (`remote/adopt.py`), on memory://,
file:// and moto's S3 server: the files move without being read, a crash before the
record leaves nothing readable and a rerun finishes, adopters of one key agree, a
wrong staged file is refused with nothing moved, the Hub refuses."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from remotes import make_artifact, make_bucket, moto_server, s3_options, scratch_remote

from mergepkg.remote import adopt as adopting
from mergepkg.remote.adopt import adopt
from mergepkg.remote.errors import NotOnRemote, RemoteError
from mergepkg.remote.hub import HubRemote
from mergepkg.remote.record import Record
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, record_for, substitute
from mergepkg.remote.transfer import put_file
from mergepkg.store.local import MANIFEST, Artifact, Store

Staged = tuple[Record, dict[str, str], dict[str, bytes]]


@pytest.fixture(params=["memory", "file"])
def remote(request, tmp_path) -> Remote:
    yield from scratch_remote(request.param, tmp_path)


def stage(remote: Remote, art: Artifact, prefix: str = "plan") -> Staged:
    """The artifact as a split build leaves it before assembly: its shards staged on the
    remote (one part's folder each), its other files as bytes, and its record."""
    staged, side = {}, {}
    for i, p in enumerate(sorted(art.folder.iterdir())):
        if p.name == MANIFEST:
            continue
        if p.suffix == ".safetensors":
            staged[p.name] = remote.path("staging", art.key, prefix, f"part-{i}", p.name)
            put_file(remote.fs, p, staged[p.name])
        else:
            side[p.name] = p.read_bytes()
    return record_for(art), staged, side


def pulled_equal(remote: Remote, art: Artifact, home: Path) -> None:
    """A fresh home pulls the artifact, every check passing, byte for byte."""
    got = substitute(remote, Store(home), art.key, expected_digest=art.digest)
    assert got.digest == art.digest
    for p in art.folder.iterdir():
        if p.name != MANIFEST:
            assert (got.folder / p.name).read_bytes() == p.read_bytes(), p.name


def exists(remote: Remote, path: str) -> bool:
    remote.fs.invalidate_cache()
    return remote.fs.exists(path)


def test_staged_files_become_the_artifact_without_being_read(remote, tmp_path, monkeypatch):
    art = make_artifact(Store(tmp_path / "a"), 1, shards=3)
    record, staged, side = stage(remote, art)
    inodes = {n: Path(p).stat().st_ino for n, p in staged.items()} if remote.url.startswith("file") else {}
    opened: list[str] = []
    real_open = remote.fs.open
    monkeypatch.setattr(
        remote.fs, "open", lambda path, mode="rb", **kw: opened.append(path) or real_open(path, mode, **kw)
    )
    done = adopt(remote, record, staged, side)
    assert not done.present and sorted(done.moved) == sorted(staged) and done.put == ("config.json",)
    assert not [p for p in opened if p in staged.values()]  # no staged byte read here
    assert remote.record(art.key) == record and record.folder.endswith(record_for(art).variant)
    assert not any(exists(remote, p) for p in staged.values())  # moved, not copied
    for name, inode in inodes.items():  # file://: renamed, the same inode
        assert Path(remote.path(record.folder, name)).stat().st_ino == inode
    pulled_equal(remote, art, tmp_path / "b")


def test_a_crash_before_the_record_leaves_nothing_readable_and_a_rerun_finishes(remote, tmp_path, monkeypatch):
    art = make_artifact(Store(tmp_path / "a"), 2, shards=3)
    record, staged, side = stage(remote, art)
    moves = []
    real_move = adopting.move_file

    def killed_after_one(fs, src, dst):
        if moves:
            raise KeyboardInterrupt  # the process dies between two moves
        moves.append(src)
        real_move(fs, src, dst)

    monkeypatch.setattr(adopting, "move_file", killed_after_one)
    remote.threads = 1
    with pytest.raises(KeyboardInterrupt):
        adopt(remote, record, staged, side)
    monkeypatch.setattr(adopting, "move_file", real_move)
    monkeypatch.setattr(type(remote), "_write_record", lambda self, record: (_ for _ in ()).throw(OSError("lost")))
    with pytest.raises(OSError, match="lost"):  # every file in place, then lost before the record
        adopt(remote, record, staged, side)
    assert all(not exists(remote, p) for p in staged.values())
    assert not remote.has(art.key) and remote.keys() == []
    with pytest.raises(NotOnRemote):
        substitute(remote, Store(tmp_path / "b"), art.key, expected_digest=art.digest)
    monkeypatch.undo()
    done = adopt(remote, record, staged, side)  # the staged files are gone: those in place are taken
    assert not done.present and done.moved == () and done.put == ()
    pulled_equal(remote, art, tmp_path / "c")


def test_adopters_of_one_key_agree(remote, tmp_path):
    art = make_artifact(Store(tmp_path / "a"), 3, shards=4)
    record, staged, side = stage(remote, art)
    errors: list[BaseException] = []

    def one():
        try:
            adopt(remote, record, staged, side)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert remote.keys() == [art.key]
    pulled_equal(remote, art, tmp_path / "b")
    # another build's staged copy of the same files: the remote has them already
    _, again, _ = stage(remote, art, "other-plan")
    later = adopt(remote, record, again, side)
    assert later.present and later.record.digest == art.digest and all(exists(remote, p) for p in again.values())


def test_a_wrong_staged_file_is_refused_and_nothing_moves(remote, tmp_path):
    art = make_artifact(Store(tmp_path / "a"), 4, shards=3)
    record, staged, side = stage(remote, art)
    last = sorted(staged)[-1]
    remote.fs.pipe_file(staged[last], b"short")
    with pytest.raises(RemoteError, match=f"the staged {last} has 5 bytes"):
        adopt(remote, record, staged, side)
    remote.fs.rm_file(staged[last])
    with pytest.raises(RemoteError, match=f"the staged {last} is missing"):
        adopt(remote, record, staged, side)
    assert all(exists(remote, p) for n, p in staged.items() if n != last)  # nothing moved
    assert not exists(remote, remote.path("artifacts")) or not remote.fs.find(remote.path("artifacts"))
    with pytest.raises(RemoteError, match="not the file the record lists"):
        adopt(remote, record, staged, {"config.json": b"{}"})
    with pytest.raises(RemoteError, match="not the files the record lists"):
        adopt(remote, record, {n: p for n, p in staged.items() if n != last}, side)
    assert not remote.has(art.key)


def test_the_hub_refuses_to_adopt(tmp_path):
    import fsspec

    hub = HubRemote(None, fsspec.filesystem("memory"), "datasets/org/name")
    art = make_artifact(Store(tmp_path / "a"), 5)
    with pytest.raises(RemoteError, match="the Hub cannot"):
        adopt(hub, record_for(art), {}, {})


@pytest.mark.slow  # a server
def test_s3_adopts_by_server_side_copy_single_and_multipart(tmp_path, monkeypatch):
    import s3fs.core

    monkeypatch.setattr(s3fs.core, "MANAGED_COPY_THRESHOLD", 6 << 20)  # the 11 MB shards: multipart copies
    multipart: list[int] = []
    real = s3fs.core.S3FileSystem._copy_managed

    async def managed(self, path1, path2, size, **kw):
        multipart.append(size)
        return await real(self, path1, path2, size, **kw)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_copy_managed", managed)
    with moto_server() as endpoint:
        bucket = f"b-{uuid.uuid4().hex[:12]}"
        make_bucket(endpoint, bucket)
        remote = open_remote(f"s3://{bucket}/cache", **s3_options(endpoint))
        for seed, rows in ((6, 64), (7, 5500)):
            art = make_artifact(Store(tmp_path / f"a{seed}"), seed, rows=rows, shards=2)
            record, staged, side = stage(remote, art)
            done = adopt(remote, record, staged, side)
            assert not done.present and sorted(done.moved) == sorted(staged)
            assert not any(exists(remote, p) for p in staged.values())
            pulled_equal(remote, art, tmp_path / f"b{seed}")
    assert len(multipart) == 2 and min(multipart) > 6 << 20  # only the large shards, as UploadPartCopy
