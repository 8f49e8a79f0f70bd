"""The hash cache: sha256s remembered by stat, claims taken before reading and confirmed
by a read beside the build, and pinned files that must not change while a build reads them."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
import time
from pathlib import Path

import pytest

import mergepkg.store.hashcache
from mergepkg.errors import SourceError
from mergepkg.store.hashcache import HashCache, Trust, check_files, download_record, sha256_file


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path) -> HashCache:
    return HashCache(tmp_path / "home" / "hashes.sqlite")


def model(folder: Path, data: bytes = b"weights" * 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(data)
    return folder / "model.safetensors"


def later(path: Path) -> int:
    """A time after `path`'s inode last changed: a lock written after it."""
    return os.stat(path).st_ctime_ns + 10**9


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 3 * 4096 + 5, 1 << 20, (1 << 20) + 3])
def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path, monkeypatch, size):
    monkeypatch.setattr(mergepkg.store.hashcache, "WINDOW", 1 << 12)  # several windows, a ragged last one
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == sha(data)


def test_sha256_file_reads_where_files_cannot_be_mapped(tmp_path, monkeypatch):
    data = os.urandom(5 * 4096 + 7)
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(mergepkg.store.hashcache, "WINDOW", 2 * 4096)
    mapped = []

    def refuse_the_second(*args, **kwargs):  # a FUSE mount with direct I/O: ENODEV
        if mapped:
            raise OSError(errno.ENODEV, "No such device")
        mapped.append(args)
        return real(*args, **kwargs)

    real = mmap.mmap
    monkeypatch.setattr(mmap, "mmap", refuse_the_second)
    assert sha256_file(tmp_path / "f") == sha(data) and mapped


def test_a_file_is_hashed_once_and_remembered_across_instances(tmp_path, cache):
    path = model(tmp_path / "m")
    assert cache.sha256(path) == (path.stat().st_size, sha(path.read_bytes()))
    assert cache.sha256(path)[1] == sha(path.read_bytes()) and cache.hashed == 1
    again = HashCache(tmp_path / "home" / "hashes.sqlite")
    assert again.sha256(path)[1] == sha(path.read_bytes()) and again.hashed == 0


def test_a_file_in_a_folder_named_in_latin_1_is_remembered(tmp_path, cache):
    """Its path is not UTF-8 (surrogates in the str), which sqlite refused: a traceback."""
    path = model(tmp_path / os.fsdecode(b"caf\xe9"))
    assert cache.sha256(path)[1] == sha(path.read_bytes())
    again = HashCache(tmp_path / "home" / "hashes.sqlite")
    assert again.sha256(path)[1] == sha(path.read_bytes()) and again.hashed == 0


def test_files_started_together_are_hashed_once_each(tmp_path, cache):
    paths = [model(tmp_path / f"m{i}", bytes([i]) * 5000) for i in range(3)]
    cache.start([(p, None) for p in paths])
    assert [cache.sha256(p)[1] for p in paths] == [sha(p.read_bytes()) for p in paths]
    assert cache.hashed == 3


def test_the_locks_claim_is_taken_and_confirmed_by_a_read(tmp_path, cache):
    path = model(tmp_path / "m")
    true = sha(path.read_bytes())
    trust = Trust(path.stat().st_size, true, later(path))
    assert cache.sha256(path, trust, claims=True)[1] == true
    check_files([tmp_path / "m"])  # waits for the read: it confirms the claim
    assert HashCache(tmp_path / "home" / "hashes.sqlite").sha256(path)[1] == true  # and is remembered


def test_a_false_claim_is_refused_when_checked_and_the_true_sha256_remembered(tmp_path, cache):
    path = model(tmp_path / "m")
    claimed = sha(b"other bytes")
    size, digest = cache.sha256(path, Trust(path.stat().st_size, claimed, later(path)), claims=True)
    assert digest == claimed  # taken: keys are made from it before the read is done
    with pytest.raises(SourceError) as info:
        check_files([tmp_path / "m"], unchanged=False)
    assert "does not hold the sha256 the lock gives it" in info.value.message and "nothing" in info.value.message
    assert "build again" in info.value.hint
    fresh = HashCache(tmp_path / "home" / "hashes.sqlite")
    assert fresh.sha256(path) == (size, sha(path.read_bytes())) and fresh.hashed == 0


def test_no_claim_for_a_file_changed_since_the_lock_or_of_another_size(tmp_path, cache):
    path = model(tmp_path / "m")
    claimed = sha(b"other bytes")
    size = path.stat().st_size
    changed_since = Trust(size, claimed, os.stat(path).st_ctime_ns)  # its inode changed when the lock was written
    assert cache.sha256(path, changed_since, claims=True)[1] == sha(path.read_bytes())
    cache = HashCache(tmp_path / "other.sqlite")
    assert cache.sha256(path, Trust(size + 1, claimed, later(path)), claims=True)[1] == sha(path.read_bytes())
    cache = HashCache(tmp_path / "third.sqlite")
    assert cache.sha256(path, Trust(size, claimed, later(path)))[1] == sha(path.read_bytes())  # claims off
    check_files([tmp_path / "m"])


def test_a_hub_blob_is_claimed_by_its_name_and_a_damaged_one_refused(tmp_path, cache):
    data = b"lfs weights" * 100
    blobs = tmp_path / "hf" / "models--tiny--m" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / sha(data)).write_bytes(data)
    snapshot = tmp_path / "hf" / "models--tiny--m" / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / sha(data))
    assert cache.sha256(snapshot / "model.safetensors", claims=True)[1] == sha(data)
    check_files([snapshot])

    damaged = bytearray(data)
    damaged[3] ^= 1
    (blobs / sha(data)).write_bytes(bytes(damaged))  # keeps its name: the cache says it is `data`
    cache = HashCache(tmp_path / "other.sqlite")
    assert cache.sha256(snapshot / "model.safetensors", claims=True)[1] == sha(data)
    with pytest.raises(SourceError) as info:
        check_files([snapshot])
    assert "blob's name" in info.value.message and "Hugging Face cache" in info.value.hint
    # a name that is no sha256 (a small file's git blob sha1) is no claim: read at once
    (blobs / git_blob(b"{}")).write_bytes(b"{}")
    assert cache.sha256(blobs / git_blob(b"{}"), claims=True)[1] == sha(b"{}") and cache.hashed == 2


def git_blob(data: bytes) -> str:
    """The name huggingface_hub gives a small (not LFS) file's blob: the Hub's etag for it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def small_blob(tmp_path: Path, data: bytes, stored: bytes) -> Path:
    """`config.json` of a hub snapshot whose blob is named by `data`'s git blob sha1 and holds `stored`."""
    blobs = tmp_path / "hf" / "models--tiny--m" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / git_blob(data)).write_bytes(stored)
    snapshot = tmp_path / "hf" / "models--tiny--m" / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").unlink(missing_ok=True)
    (snapshot / "config.json").symlink_to(blobs / git_blob(data))
    return snapshot / "config.json"


@pytest.mark.parametrize("claims", [True, False])
def test_a_small_hub_blob_is_checked_against_its_git_blob_sha1_every_time_it_is_read(tmp_path, claims):
    """A small file's blob is named by its git blob sha1, which huggingface_hub does not
    check on download: a file damaged in transit was pinned (the lock recorded the damaged
    bytes, and the correct ones were refused later). Read with its git blob sha1 in the
    same pass, it is refused as a damaged LFS blob is, and its read is never remembered."""
    data = b'{"model_type": "llama", "hidden_size": 64}'
    damaged = data.replace(b"64", b"65")
    path = small_blob(tmp_path, data, damaged)
    db = tmp_path / "home" / "hashes.sqlite"
    for _ in range(2):  # every pin, another process's too: nothing was remembered
        cache = HashCache(db)
        with pytest.raises(SourceError) as info:
            cache.start([(path, None)], claims=claims, folder=path.parent)
            cache.sha256(path, claims=claims)
        assert cache.hashed == 1
        assert "does not hold the git blob sha1 its Hugging Face cache blob's name gives it" in info.value.message
        assert git_blob(data)[:12] in info.value.message and git_blob(damaged)[:12] in info.value.message
        assert "delete that repo from the Hugging Face cache" in info.value.hint
        assert info.value.file == os.path.realpath(path)
    # the lock's claim (made from the damaged bytes elsewhere) does not let it through either
    cache = HashCache(db)
    assert cache.sha256(path, Trust(len(damaged), sha(damaged), later(path)), claims=True)[1] == sha(damaged)
    with pytest.raises(SourceError, match="git blob sha1"):
        check_files([path.parent], unchanged=False)

    path.resolve().write_bytes(data)  # downloaded again
    assert HashCache(db).sha256(path, claims=claims) == (len(data), sha(data))
    check_files([path.parent])
    again = HashCache(db)
    assert again.sha256(path, claims=claims)[1] == sha(data) and again.hashed == 0  # a true read is remembered


@pytest.mark.parametrize("size", [0, 1, 4095, 3 * 4096 + 5])
def test_the_git_blob_sha1_is_gits(tmp_path, monkeypatch, size):
    """Computed in the same pass as the sha256, window by window and where files cannot be mapped."""
    from mergepkg.store.hashcache import sha256_and_git_blob

    monkeypatch.setattr(mergepkg.store.hashcache, "WINDOW", 1 << 12)
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert sha256_and_git_blob(tmp_path / "f") == (sha(data), git_blob(data))
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENODEV, "No such device")))
    assert sha256_and_git_blob(tmp_path / "f") == (sha(data), git_blob(data))


@pytest.mark.parametrize("claims", [True, False])
def test_a_damaged_hub_blob_is_refused_again_once_its_read_is_remembered(tmp_path, claims):
    """The read that refused a damaged blob's claim remembers the damaged bytes' sha256: the
    next pin (another process, another build, `mergepkg lock`) must not take that for the
    blob, with claims or without (a truncated download too)."""
    data = b"lfs weights" * 100
    blobs = tmp_path / "hf" / "models--tiny--m" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / sha(data)).write_bytes(data[:-7])  # truncated, under the full file's name
    snapshot = tmp_path / "hf" / "models--tiny--m" / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / sha(data))
    db = tmp_path / "home" / "hashes.sqlite"
    HashCache(db).sha256(snapshot / "model.safetensors", claims=True)
    with pytest.raises(SourceError):
        check_files([snapshot])  # the first build: refused, and the read remembered
    for _ in range(2):  # every build after it
        again = HashCache(db)
        with pytest.raises(SourceError) as info:
            again.start([(snapshot / "model.safetensors", None)], claims=claims, folder=snapshot)
            again.sha256(snapshot / "model.safetensors", claims=claims)
        assert again.hashed == 0  # refused from the remembered read
        assert "blob's name" in info.value.message and sha(data)[:12] in info.value.message
        assert "delete that repo from the Hugging Face cache" in info.value.hint
    fresh = HashCache(tmp_path / "other.sqlite")  # nothing remembered, claims off: read and refused
    with pytest.raises(SourceError, match="blob's name"):
        fresh.sha256(snapshot / "model.safetensors")
    (blobs / sha(data)).write_bytes(data)  # downloaded again
    assert HashCache(db).sha256(snapshot / "model.safetensors", claims=claims)[1] == sha(data)


def downloaded(folder: Path, data: bytes, etag: str) -> Path:
    """`folder/model.safetensors` as `hf download --local-dir` leaves it: the file, then
    huggingface_hub's record of it (.cache/huggingface/download/NAME.metadata: the commit,
    the etag, a time), written after it (tests/resolve has one that huggingface_hub wrote)."""
    path = model(folder, data)
    record = folder / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{'c0ffee' * 6}abcd\n{etag}\n{time.time()}\n")
    return path


def test_a_local_dir_download_is_claimed_by_its_record_and_a_false_one_refused(tmp_path, cache):
    data = b"lfs weights" * 100
    path = downloaded(tmp_path / "m", data, sha(data))
    assert cache.sha256(path, claims=True, folder=tmp_path / "m")[1] == sha(data)
    check_files([tmp_path / "m"])

    wrong = downloaded(tmp_path / "n", data, sha(b"other bytes"))  # a record that is not the file's
    cache = HashCache(tmp_path / "other.sqlite")
    assert cache.sha256(wrong, claims=True, folder=tmp_path / "n")[1] == sha(b"other bytes")  # taken unread
    with pytest.raises(SourceError) as info:
        check_files([tmp_path / "n"], unchanged=False)
    assert "huggingface_hub's download record" in info.value.message and "nothing" in info.value.message
    assert "huggingface_hub recorded" in info.value.hint and "build again" in info.value.hint
    again = HashCache(tmp_path / "other.sqlite")  # the read's sha256 was remembered: pinned anew
    assert again.sha256(wrong, claims=True, folder=tmp_path / "n") == (len(data), sha(data)) and again.hashed == 0


def record_of(folder: Path) -> Path:
    return folder / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"


def claimed(path: Path, home: Path, trust: Trust | None = None) -> str:
    """The sha256 a fresh hash cache gives `path` with claims on (a claim shows as the
    false sha256 the tests record)."""
    return HashCache(home / f"{os.urandom(4).hex()}.sqlite").sha256(path, trust, claims=True, folder=path.parent)[1]


def test_a_record_holds_for_a_file_no_newer_than_it(tmp_path):
    """huggingface_hub writes its record within the kernel's file-clock tick that moved the
    file in: a file whose inode changed at the record's own time is claimed, one
    nanosecond later it is not."""
    data = b"lfs weights" * 100
    path = downloaded(tmp_path / "m", data, sha(b"recorded"))
    changed = os.stat(path).st_ctime_ns
    os.utime(record_of(tmp_path / "m"), ns=(changed, changed))
    assert claimed(path, tmp_path) == sha(b"recorded")
    os.utime(record_of(tmp_path / "m"), ns=(changed - 1, changed - 1))
    assert claimed(path, tmp_path) == sha(data)


def test_a_record_is_taken_where_the_locks_claim_no_longer_holds(tmp_path):
    data = b"lfs weights" * 100
    path = downloaded(tmp_path / "m", data, sha(b"recorded"))  # downloaded again after the lock
    changed = os.stat(path).st_ctime_ns
    os.utime(record_of(tmp_path / "m"), ns=(changed, changed))
    stale = Trust(len(data), sha(b"locked"), changed)  # a lock written before the file changed
    assert claimed(path, tmp_path, stale) == sha(b"recorded")
    assert claimed(path, tmp_path, Trust(len(data), sha(b"locked"), changed + 1)) == sha(b"locked")  # it comes first


def test_a_symlink_made_since_the_record_is_no_claim(tmp_path):
    """The file swapped, after its download, for a link to an older file: the link is newer
    than the record even though its target is not."""
    data = b"lfs weights" * 100
    target = model(tmp_path / "elsewhere", data)
    path = downloaded(tmp_path / "m", data, sha(b"recorded"))
    time.sleep(0.02)  # past the file clock's tick, checked below
    path.unlink()
    path.symlink_to(target)
    older = os.stat(target).st_ctime_ns
    assert os.lstat(path).st_ctime_ns > older
    os.utime(record_of(tmp_path / "m"), ns=(older, older))  # the record is newer than the target
    assert claimed(path, tmp_path) == sha(data)


def test_a_claim_found_by_start_is_kept_for_the_pin(tmp_path, cache):
    """`start` reads the record once; the pin takes the claim it found, reading nothing again."""
    data = b"lfs weights" * 100
    path = downloaded(tmp_path / "m", data, sha(b"recorded"))
    cache.start([(path, None)], claims=True, folder=tmp_path / "m")
    record_of(tmp_path / "m").unlink()
    assert cache.sha256(path, claims=True, folder=tmp_path / "m")[1] == sha(b"recorded")


def test_no_claim_from_a_record_that_names_no_sha256_or_is_no_file(tmp_path):
    data = b"lfs weights" * 100
    record = record_of(tmp_path / "n")
    for text in (f"c0ffee\n{'ab' * 20}\n1.0\n", "c0ffee\n", "", "\xff\xfe"):  # a git sha1, cut short, garbled
        path = downloaded(tmp_path / "n", data, sha(b"other bytes"))
        record.write_bytes(text.encode("latin-1"))
        assert claimed(path, tmp_path) == sha(data)  # read, not claimed
    record.unlink()
    os.mkfifo(record)  # opened for reading, a FIFO would wait for a writer forever
    assert download_record(tmp_path / "n", "model.safetensors") is None
    assert claimed(path, tmp_path) == sha(data)


def test_a_file_written_after_it_was_pinned_fails_the_unchanged_check(tmp_path, cache):
    path = model(tmp_path / "m")
    st = os.stat(path)
    cache.sha256(path)
    check_files([tmp_path / "m"])
    time.sleep(0.01)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))  # other bytes, the size and mtime put back: only the ctime moved
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    check_files([tmp_path / "m"], unchanged=False)  # what was pinned was read: still true
    with pytest.raises(SourceError) as info:
        check_files([tmp_path / "m"])
    assert "changed while the build read it" in info.value.message


def test_a_hard_link_or_chmod_meanwhile_is_no_change(tmp_path, cache):
    """Both move the ctime and leave the bytes: the file is hashed again and passes."""
    path = model(tmp_path / "m")
    cache.sha256(path)
    time.sleep(0.01)
    os.link(path, tmp_path / "linked")
    os.chmod(path, 0o600)
    check_files([tmp_path / "m"])
    check_files([tmp_path / "m"])  # remembered with its new stat


def test_folders_with_nothing_pinned_pass(tmp_path):
    model(tmp_path / "never")
    check_files([tmp_path / "never", tmp_path / "absent"])


def test_a_claim_is_checked_even_when_its_cache_is_closed_meanwhile(tmp_path, monkeypatch):
    path = model(tmp_path / "m")
    gate = threading.Event()
    real = mergepkg.store.hashcache.sha256_file
    monkeypatch.setattr(mergepkg.store.hashcache, "sha256_file", lambda p: gate.wait(60) and real(p))
    cache = HashCache(tmp_path / "h.sqlite")
    cache.sha256(path, Trust(path.stat().st_size, sha(b"false"), later(path)), claims=True)
    cache.close()  # before the read is done: it cannot be remembered, and is still checked
    gate.set()
    with pytest.raises(SourceError, match="does not hold"):
        check_files([tmp_path / "m"])


def test_a_home_that_is_a_file_or_a_damaged_cache_is_one_located_error(tmp_path):
    """Every command died in a traceback: FileExistsError, sqlite3.DatabaseError."""
    from mergepkg.errors import StoreError

    home = tmp_path / "home"
    home.write_text("not a folder")
    with pytest.raises(StoreError, match="MERGEPKG_HOME is not a folder") as e:
        HashCache(home / "hashes.sqlite")
    assert e.value.file == str(home)
    home.unlink()
    home.mkdir()
    (home / "hashes.sqlite").write_bytes(b"garbage, not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the file hash cache: file is not a database") as e:
        HashCache(home / "hashes.sqlite")
    assert "delete it" in (e.value.hint or "")


def test_a_home_that_cannot_be_written_says_so_not_to_delete_the_cache(tmp_path, monkeypatch):
    """An empty home on a read-only disk said "unable to open database file" and to delete
    the cache if it is damaged: there was no file to delete."""
    import sqlite3

    from mergepkg.errors import StoreError

    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    if os.geteuid() == 0:  # root writes into any folder but one on a read-only mount: as sqlite answers there
        monkeypatch.setattr(mergepkg.store.hashcache.os, "access", lambda path, mode: False)

        def connect(*args, **kw):
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(mergepkg.store.hashcache.sqlite3, "connect", connect)
    try:
        with pytest.raises(StoreError, match=f"cannot make the file hash cache: {home} is not writable") as e:
            HashCache(home / "hashes.sqlite")
    finally:
        home.chmod(0o755)
    assert e.value.file == str(home / "hashes.sqlite")
    assert "delete" not in (e.value.hint or "") and "MERGEPKG_HOME" in (e.value.hint or "")
