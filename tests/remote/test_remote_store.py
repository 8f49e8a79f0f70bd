"""A remote on memory:// and file://: push, pull into a fresh home, every refusal, gc,
concurrent pushers (issue 16). Artifacts are made without torch (tests/remotes.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from remotes import make_artifact, push_together, scratch_remote, tree

from mergepkg.remote.errors import NotOnRemote, Refused, RemoteError
from mergepkg.remote.sign import generate_key
from mergepkg.remote.store import GcReport, Remote
from mergepkg.remote.sync import open_remote, push_artifact, record_for, substitute
from mergepkg.settings import Settings
from mergepkg.store.local import Store


@pytest.fixture(params=["memory", "file"])
def remote(request, tmp_path) -> Remote:
    yield from scratch_remote(request.param, tmp_path)


def homes(tmp_path: Path) -> tuple[Store, Store]:
    return Store(tmp_path / "home-a"), Store(tmp_path / "home-b")


def remote_file(remote: Remote, key: str, name: str) -> str:
    record = remote.record(key)
    assert record is not None
    return remote.path(record.folder, name)


def assert_not_taken(store: Store, key: str) -> None:
    """Nothing of a refused artifact entered the local store, or stayed in its tmp/."""
    assert store.get(key) is None
    assert not store.tmp.exists() or not any(store.tmp.iterdir())


def test_an_artifact_pushed_from_one_home_is_pulled_into_a_fresh_one_with_its_digest(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 1)
    calls = []
    report = push_artifact(remote, art, progress=lambda name, done, total: calls.append((name, done, total)))
    assert not report.present and sorted(report.uploaded) == sorted(
        p.name for p in art.folder.iterdir() if p.name != "mergepkg-manifest.json"
    )
    assert report.nbytes == art.size and calls[-1][1:] == (art.size, art.size)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)  # one call at a time, growing
    assert remote.has(art.key) and remote.keys() == [art.key]

    got = substitute(remote, b, art.key, expected_digest=art.digest)
    assert got.digest == art.digest and got.intact() and got.holds()
    assert got.manifest["entry"] == art.manifest["entry"] and got.manifest["tensors"] == art.manifest["tensors"]
    for p in art.folder.iterdir():
        if p.name != "mergepkg-manifest.json":
            assert (got.folder / p.name).read_bytes() == p.read_bytes()
    assert substitute(remote, b, art.key, expected_digest=art.digest) == got  # there already: nothing pulled


def test_push_moves_only_what_the_remote_lacks(remote, tmp_path):
    a, _ = homes(tmp_path)
    art = make_artifact(a, 2, shards=3)
    push_artifact(remote, art)
    again = push_artifact(remote, art)
    assert again.present and again.nbytes == 0 and not again.uploaded
    # a killed push's leftovers: some files, no record
    remote.fs.rm_file(remote.path("records", f"{art.key}.json"))
    remote.fs.rm_file(remote_file_path(remote, art, "model-00002-of-00003.safetensors"))
    assert not remote.has(art.key)
    third = push_artifact(remote, art)
    assert third.uploaded == ("model-00002-of-00003.safetensors",) and len(third.skipped) == 3
    assert remote.has(art.key)


def remote_file_path(remote: Remote, art, name: str) -> str:
    return remote.path(record_for(art).folder, name)


def flip_byte(remote: Remote, path: str) -> None:
    data = bytearray(remote.fs.cat_file(path))
    data[-5] ^= 1
    remote.fs.pipe_file(path, bytes(data))


def test_a_tampered_file_is_refused_and_never_enters_the_store(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 3)
    push_artifact(remote, art)
    flip_byte(remote, remote_file(remote, art.key, "model-00001-of-00002.safetensors"))
    said = r"differs from its record: it has sha256 [0-9a-f]{16}…, the record says [0-9a-f]{16}…"
    with pytest.raises(Refused, match=said) as e:
        substitute(remote, b, art.key, expected_digest=art.digest)
    assert e.value.file.endswith("model-00001-of-00002.safetensors")
    assert f"mergepkg cache push --rehash {art.key[:12]}" in e.value.hint  # the command that repairs it
    assert_not_taken(b, art.key)
    # a push with rehash reads the remote's files back and replaces the altered one
    report = remote.push(art.folder, record_for(art), rehash=True)
    assert report.uploaded == ("model-00001-of-00002.safetensors",)
    assert substitute(remote, b, art.key, expected_digest=art.digest).digest == art.digest


def test_a_rehash_push_replaces_a_record_of_another_build_and_the_refusals_name_it(remote, tmp_path):
    """A remote whose record says another digest than the lock's refuses every pull; a plain
    push finds its files whole and writes nothing, so the hint named no working repair."""
    a, b = homes(tmp_path)
    art = make_artifact(a, 5)
    other = record_for(art)
    other = type(other)(**{**other.__dict__, "digest": "sha256:" + "ab" * 32})
    remote.push(art.folder, other)
    with pytest.raises(Refused, match="the lock pins") as e:
        substitute(remote, b, art.key, expected_digest=art.digest)
    assert f"mergepkg cache push --rehash {art.key[:12]}" in e.value.hint
    assert push_artifact(remote, art).present  # a plain push: the files are whole
    report = push_artifact(remote, art, rehash=True)
    assert not report.present and report.repaired and report.uploaded == ()
    assert substitute(remote, b, art.key, expected_digest=art.digest).digest == art.digest
    assert push_artifact(remote, art, rehash=True).present  # whole now: nothing to repair


def test_a_record_without_its_files_is_refused(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 4)
    push_artifact(remote, art)
    remote.fs.rm_file(remote_file(remote, art.key, "model-00002-of-00002.safetensors"))
    with pytest.raises(Refused, match="a file the record lists is missing"):
        substitute(remote, b, art.key, expected_digest=art.digest)
    assert_not_taken(b, art.key)


def test_files_without_a_record_are_no_artifact(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 5)
    push_artifact(remote, art)
    remote.fs.rm_file(remote.path("records", f"{art.key}.json"))
    assert not remote.has(art.key) and remote.keys() == []
    with pytest.raises(NotOnRemote, match=f"no artifact for key {art.key}"):
        substitute(remote, b, art.key, expected_digest=art.digest)
    assert_not_taken(b, art.key)


def test_a_record_that_is_not_one_makes_no_artifact(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 6)
    push_artifact(remote, art)
    remote.fs.pipe_file(remote.path("records", f"{art.key}.json"), b'{"format": 1}')
    assert not remote.has(art.key)
    with pytest.raises(Exception, match="records/" + art.key):
        substitute(remote, b, art.key, expected_digest=art.digest)
    assert push_artifact(remote, art).nbytes == 0 and remote.has(art.key)  # replaced, files kept


def test_a_digest_other_than_the_locks_is_refused_before_any_download(remote, tmp_path):
    a, b = homes(tmp_path)
    art = make_artifact(a, 7)
    push_artifact(remote, art)
    with pytest.raises(Refused, match="the lock pins sha256:00"):
        substitute(remote, b, art.key, expected_digest="sha256:" + "0" * 64)
    assert_not_taken(b, art.key)


def test_an_unpinned_step_needs_a_trusted_signature(remote, tmp_path, mergepkg_home):
    settings = Settings()
    team, mallory = generate_key(settings, "team"), generate_key(settings, "mallory")
    a, b = homes(tmp_path)
    art = make_artifact(a, 8)
    push_artifact(remote, art)  # unsigned
    with pytest.raises(Refused, match="no trusted key signed"):
        substitute(remote, b, art.key, trusted=[team.public])
    push_artifact(remote, art)  # already there: a push changes nothing
    remote.fs.rm_file(remote.path("records", f"{art.key}.json"))
    push_artifact(remote, art, signing_key=mallory)
    with pytest.raises(Refused, match="no trusted key signed"):
        substitute(remote, b, art.key, trusted=[team.public])
    remote.fs.rm_file(remote.path("records", f"{art.key}.json"))
    push_artifact(remote, art, signing_key=team)
    got = remote.pull(art.key, b.new_folder(art.key), trusted=[team.public])
    assert got.signer == "team"
    shutil.rmtree(got.folder)
    # the signed record altered on the remote (a digest that still matches the files is not enough)
    path = remote.path("records", f"{art.key}.json")
    doc = json.loads(remote.fs.cat_file(path))
    doc["builder"] = "mallory@evil"
    remote.fs.pipe_file(path, json.dumps(doc).encode())
    with pytest.raises(Refused, match="forged or altered"):
        substitute(remote, b, art.key, trusted=[team.public])
    assert_not_taken(b, art.key)


def test_a_record_whose_digest_the_files_do_not_give_is_refused(remote, tmp_path, mergepkg_home):
    """Files matching their record, a signed record, and still not the tensors it claims."""
    team = generate_key(Settings(), "team")
    a, b = homes(tmp_path)
    art, other = make_artifact(a, 9), make_artifact(a, 10)
    lie = record_for(art)
    from dataclasses import replace

    from mergepkg.remote.sign import sign_record

    lie = sign_record(replace(lie, digest=other.digest), team)
    remote.push(art.folder, lie)
    with pytest.raises(Refused, match="the pulled tensors give digest"):
        substitute(remote, b, art.key, trusted=[team.public])
    assert_not_taken(b, art.key)


def test_gc_removes_records_then_files_of_unkept_keys_and_old_leftovers(remote, tmp_path):
    a, b = homes(tmp_path)
    kept, gone, killed = make_artifact(a, 11), make_artifact(a, 12), make_artifact(a, 13)
    for art in (kept, gone, killed):
        push_artifact(remote, art)
    remote.fs.rm_file(remote.path("records", f"{killed.key}.json"))  # a push killed before its record
    young = remote.gc({kept.key, killed.key})
    assert young.removed == (gone.key,) and len(young.files) == 3  # the killed push may be in flight: kept
    assert remote.keys() == [kept.key]
    remote.grace_seconds = 0
    assert remote.gc({kept.key, killed.key}, dry_run=True).files == remote.gc({kept.key, killed.key}).files
    assert not remote.fs.exists(remote.path("artifacts", killed.key)) or not remote.fs.find(
        remote.path("artifacts", killed.key)
    )
    assert remote.gc({kept.key}) == type(young)((), ())  # nothing left to remove
    assert substitute(remote, b, kept.key, expected_digest=kept.digest).digest == kept.digest


def test_gc_keeps_the_files_of_a_kept_key_whose_record_it_cannot_read(remote, tmp_path):
    """A record of a newer format (or a damaged one) was read as no record: the kept
    build's files were removed once old, the record left pointing at nothing."""
    a, _ = homes(tmp_path)
    art = make_artifact(a, 15)
    push_artifact(remote, art)
    record = remote.path("records", f"{art.key}.json")
    data = json.loads(remote.fs.cat_file(record))
    remote.fs.pipe_file(record, json.dumps({**data, "format": 99}).encode())
    with pytest.raises(RemoteError):
        remote.record(art.key)
    remote.grace_seconds = 0
    files = sorted(remote.fs.find(remote.path("artifacts", art.key)))
    assert files and remote.gc({art.key}) == GcReport((), ())
    assert sorted(remote.fs.find(remote.path("artifacts", art.key))) == files


def test_gc_removes_staged_parts_never_assembled_once_old(remote, tmp_path):
    """A split step's parts staged by workers whose assembly never came (docs/cluster.md)."""
    a, _ = homes(tmp_path)
    art = make_artifact(a, 14)
    push_artifact(remote, art)
    staged = remote.path("staging", art.key, "plan", "part-0", "model-00001-of-00002.safetensors")
    remote.fs.makedirs(staged.rpartition("/")[0], exist_ok=True)
    remote.fs.pipe_file(staged, b"part bytes")
    assert remote.gc({art.key}).files == ()  # young: an assembly may be on its way
    remote.grace_seconds = 0
    assert remote.gc({art.key}).files == (staged,)
    assert not remote.fs.exists(staged) and remote.keys() == [art.key]


def other_variant(store: Store, art) -> object:
    """The same key and tensors in other files: the safetensors headers carry metadata."""
    from safetensors.numpy import load_file, save_file

    with store.lock(art.key):
        folder = store.new_folder(art.key)
        for p in art.folder.iterdir():
            if p.suffix == ".safetensors":
                save_file(load_file(p), folder / p.name, metadata={"pusher": "other"})
            elif p.name != "mergepkg-manifest.json":
                shutil.copy(p, folder / p.name)
        return store.commit(art.key, folder, art.manifest["entry"], art.manifest["tensors"], seconds=0.0)


def test_four_concurrent_pushers_of_one_key_all_succeed_and_leave_one_intact_artifact(remote, tmp_path):
    stores = [Store(tmp_path / f"home-{i}") for i in range(4)]
    first = make_artifact(stores[0], 14)
    arts = [first, make_artifact(stores[1], 14), other_variant(stores[2], first), other_variant(stores[3], first)]
    assert len({a.key for a in arts}) == 1 and len({record_for(a).variant for a in arts}) == 2
    push_together(lambda: remote, arts)
    assert remote.keys() == [first.key]
    fresh = Store(tmp_path / "fresh")
    assert substitute(remote, fresh, first.key, expected_digest=first.digest).digest == first.digest
    remote.grace_seconds = 0
    remote.gc({first.key})  # the variant no record names goes
    record = remote.record(first.key)
    assert record is not None
    assert sorted(remote.fs.find(remote.path("artifacts"))) == sorted(
        remote.path(record.folder, f.name) for f in record.files
    )


def test_a_file_remote_is_a_plain_folder_tree(tmp_path):
    (tmp_path / "shared").mkdir()
    remote = open_remote(f"file://{tmp_path / 'shared'}")
    art = make_artifact(Store(tmp_path / "a"), 15)
    push_artifact(remote, art)
    files = tree(tmp_path / "shared")
    record = record_for(art)
    assert set(files) == {f"records/{art.key}.json"} | {f"{record.folder}/{f.name}" for f in record.files}
    assert json.loads(files[f"records/{art.key}.json"])["digest"] == art.digest


@pytest.mark.parametrize("named", [False, True])
def test_a_push_to_a_folder_remote_whose_folder_is_gone_makes_none(tmp_path, named):
    """fsspec's writes make missing folders: a node whose shared disk was unmounted pushed
    into a new, empty folder at the mount point, which the driver's pull then refused.
    Whatever the remote is called: its URL only names it (the check once read it)."""
    import fsspec

    folder = tmp_path / "shared"
    folder.mkdir()
    remote = Remote(fsspec.filesystem("file"), str(folder), url="team-cache") if named else open_remote(str(folder))
    art = make_artifact(Store(tmp_path / "home"), 1)
    folder.rmdir()
    with pytest.raises(RemoteError, match="the remote's folder is gone"):
        push_artifact(remote, art)
    assert not folder.exists()
    folder.mkdir()  # mounted again: the same push lands
    assert push_artifact(remote, art).uploaded and remote.has(art.key)


def tamper_side_files(remote: Remote, key: str) -> None:
    """Another writer of the remote: config.json given an `auto_map` to code it adds
    (`modeling_evil.py`), a new record of its own (unsigned, sha256s that match, the same
    digest: the tensors are the build's)."""
    from dataclasses import replace

    from mergepkg.canonical import sha256_hex
    from mergepkg.remote.record import FileEntry

    record = remote.record(key)
    assert record is not None
    files = {f.name: remote.fs.cat_file(remote.path(record.folder, f.name)) for f in record.files}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}).encode()
    files["modeling_evil.py"] = b"open('/tmp/PWNED', 'w').write('ran')\n"
    entries = tuple(FileEntry(n, len(b), sha256_hex(b)) for n, b in sorted(files.items()))
    forged = replace(record, files=entries, signatures=())
    remote.fs.makedirs(remote.path(forged.folder), exist_ok=True)
    for name, data in files.items():
        remote.fs.pipe_file(remote.path(forged.folder, name), data)
    remote.fs.pipe_file(remote.path("records", f"{key}.json"), forged.to_bytes())


def test_a_record_naming_a_file_no_build_writes_is_refused_before_any_download(remote, tmp_path):
    """The lock's digest covers the tensors only: a writer of the remote added code and an
    `auto_map` under a record of its own, and a --locked build took it with every check
    passed. A name no build writes is refused now, before a byte moves; a rehash push
    from the home that built it repairs the remote."""
    a, b = homes(tmp_path)
    art = make_artifact(a, 16)
    push_artifact(remote, art)
    tamper_side_files(remote, art.key)
    moved = []
    with pytest.raises(Refused, match=r"no build writes into an artifact: 'modeling_evil\.py'") as e:
        substitute(remote, b, art.key, expected_digest=art.digest, progress=lambda *a: moved.append(a))
    assert e.value.file.endswith(f"records/{art.key}.json") and e.value.key == "files[3].name"
    assert f"mergepkg cache push --rehash {art.key[:12]}" in e.value.hint
    assert moved == [] and not (tmp_path / "PWNED").exists()
    assert_not_taken(b, art.key)
    assert push_artifact(remote, art, rehash=True).repaired
    got = substitute(remote, b, art.key, expected_digest=art.digest)
    assert sorted(p.name for p in got.folder.iterdir()) == sorted(p.name for p in art.folder.iterdir())
    assert (got.folder / "config.json").read_bytes() == (art.folder / "config.json").read_bytes()


def test_a_stored_artifact_holding_a_file_no_build_writes_is_not_pushed(remote, tmp_path):
    """Every pull would refuse it: the push says so, naming the file, and writes nothing."""
    a, _ = homes(tmp_path)
    art = make_artifact(a, 17)
    (art.folder / "modeling_evil.py").write_text("print('hi')\n")
    with pytest.raises(RemoteError, match=r"cannot push 'modeling_evil\.py': no build writes such a file"):
        push_artifact(remote, art)
    assert remote.keys() == [] and not remote.fs.exists(remote.path("artifacts"))
    (art.folder / "modeling_evil.py").unlink()
    assert push_artifact(remote, art).uploaded and remote.has(art.key)
