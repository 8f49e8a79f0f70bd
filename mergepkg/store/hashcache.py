"""sha256 of files, remembered by (path, size, mtime, ctime, inode), so a large file is
hashed once and an unchanged rebuild re-hashes nothing.

Size and mtime alone, as DVC checks, miss a file edited in place with its mtime set back
(`touch -d`, `os.utime`); the inode change time cannot be set back by any user and
changes with every write (git checks it too), so an edit always means a new hash.

A first build need not wait for its inputs' hashes (docs/performance.md#first-build).
A file's sha256 may be known before it is read: a Hugging Face cache blob is named by
it, a lock records it, and so does huggingface_hub's record of a file it downloaded into
a folder of the user's (`hf download --local-dir`). Such a *claim* is taken at once
(step keys are computed from it) while the file is read and hashed on a background
thread beside the build (all cores but one, which the build keeps); nothing made from
it is stored before the claim is confirmed (`check_files`: the engine calls it before a
step is committed, `Resolution.lock` before a lock is written). A lock's claim is taken
only for a file unchanged since the lock was written: the same size, and an inode
change time older than the lock file; a download record's, for a file unchanged since
the record. Files with no claim are hashed before keys are made, all of them at once
(`start`), one thread per core. A hub blob whose bytes do not give the sha256 it is
named by is refused every time it is pinned, claimed or read (its damaged bytes' sha256,
remembered by the read that refused it, is never taken for it). A small file's blob is
named by its git blob sha1 instead, which no claim can be made from: it is read, its git
blob sha1 computed in the same pass, and bytes that do not give its name are refused just
so, and never remembered (huggingface_hub checks no small file it downloads: a file
damaged in transit would otherwise be pinned, and the correct bytes refused later).

Every file pinned in this process is remembered with the stat it was pinned with, so
the engine can refuse to store a step whose input changed while it was being built.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from mergepkg.errors import SourceError, StoreError
from mergepkg.settings import make_home

# Files are hashed from read-only mappings of WINDOW bytes, each in one `update`: hashlib
# gives the GIL back for a whole window and takes it again once. Read into a buffer, every
# read and update gave it back and took it again, and beside a thread that holds it
# (torch's import, while a claim is checked) each retake waited. 1.08 GB, page cache warm,
# medians of three (docs/performance.md, First build):
#   alone:            0.72 s in 16 MiB reads, 0.61 s mapped (no copy into a buffer)
#   beside a busy     1.41 s in 16 MiB reads, 0.80 s in 64 MiB windows,
#   Python thread:    0.68 s in 256 MiB windows, 0.64 s mapped whole
# A window, not the whole file: mapped pages count in the resident set while mapped, and a
# 5 GB shard would show as 5 GB more; a window is unmapped once hashed.
WINDOW = 256 << 20

Identity = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
HEX = frozenset("0123456789abcdef")
HUB_REPOS = ("models--", "datasets--", "spaces--")
CLAIMS = {  # where a claim comes from
    "hub": "its Hugging Face cache blob's name",
    "lock": "the lock",
    "download": "huggingface_hub's download record",
}
DOWNLOAD_RECORDS = Path(".cache", "huggingface", "download")  # in a folder `hf download --local-dir` wrote


def identity(st: os.stat_result) -> Identity:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file, hashed from read-only mappings of it, a WINDOW at a time (no
    copy, and other threads run meanwhile: hashlib releases the GIL). A file truncated
    while it is mapped stops the process (SIGBUS), as any mmap reader of it would."""
    return _digests(path, git_blob=False)[0]


def sha256_and_git_blob(path: Path | str) -> tuple[str, str]:
    """The sha256 and the git blob sha1 (sha1 of `blob SIZE\\0` and the bytes: what git and
    the Hub name a small file by) of a file, in one read as `sha256_file` reads it."""
    sha256, blob = _digests(path, git_blob=True)
    assert blob is not None
    return sha256, blob


def _digests(path: Path | str, *, git_blob: bool) -> tuple[str, str | None]:
    """The file's sha256 and, with `git_blob`, its git blob sha1, from one pass over its bytes."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        hashes = [hashlib.sha256()] + ([hashlib.sha1(b"blob %d\0" % size)] if git_blob else [])
        for offset in range(0, size, WINDOW):  # none for an empty file, which cannot be mapped
            length = min(WINDOW, size - offset)
            try:
                window = mmap.mmap(f.fileno(), length, offset=offset, access=mmap.ACCESS_READ)
            except OSError:  # a file system that cannot map files (FUSE with direct I/O): read it
                f.seek(offset)
                _update_rest(f, hashes)
                break
            with window:
                for h in hashes:
                    h.update(window)
    return hashes[0].hexdigest(), hashes[1].hexdigest() if git_blob else None


def _update_rest(f: io.FileIO, hashes: list[hashlib._Hash]) -> None:
    """`hashes` updated with the rest of the file `f`, read into one reused buffer."""
    buffer = bytearray(WINDOW >> 4)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        for h in hashes:
            h.update(view[:n])


def _row_key(real: str) -> str | bytes:
    """A path as the table keys it: its text, or its bytes where its name is not UTF-8
    (a folder named in Latin-1 comes as surrogates, which sqlite cannot bind)."""
    try:
        real.encode()
    except UnicodeEncodeError:
        return os.fsencode(real)
    return real


def _hub_blob_name(real: str, digits: int) -> str | None:
    """The name of a Hugging Face cache blob (`REPO_DIR/blobs/NAME`) of `digits` hex digits, or None."""
    p = Path(real)
    if p.parent.name != "blobs" or not p.parent.parent.name.startswith(HUB_REPOS):
        return None
    return p.name if len(p.name) == digits and set(p.name) <= HEX else None


def hub_blob_sha256(real: str) -> str | None:
    """The sha256 a Hugging Face cache blob is named by, or None: LFS files (weights) are
    stored under their sha256, other files under a 40-digit git blob sha1."""
    return _hub_blob_name(real, 64)


def hub_blob_sha1(real: str) -> str | None:
    """The git blob sha1 a Hugging Face cache blob of a small (not LFS) file is named by, or None."""
    return _hub_blob_name(real, 40)


@dataclass(frozen=True)
class Trust:
    """A record of a file's sha256 and when the record was written: the lock's (its mtime;
    taken for a file of the recorded size) or huggingface_hub's (`download_record`). Taken
    for a file whose inode last changed before `before_ns`."""

    size: int | None  # None: the record holds none
    sha256: str
    before_ns: int
    source: str = "lock"  # whose record: a key of CLAIMS

    def holds(self, st: os.stat_result, changed_ns: int) -> bool:
        """Whether the record stands for a file of stat `st` whose inode last changed at `changed_ns`."""
        return self.size in (None, st.st_size) and changed_ns < self.before_ns


def download_record(folder: Path, name: str) -> Trust | None:
    """huggingface_hub's record of `folder/name`, downloaded there by `hf download
    --local-dir` (`.cache/huggingface/download/NAME.metadata`: the commit, the file's etag,
    a time). An LFS file's etag is its sha256; a small file's is a git blob sha1, no claim.
    The record is written just after the file is moved into place, often within the same
    tick of the kernel's file clock, so a file whose inode changed in the record's own tick
    counts as before it. None: no record, or one that cannot be read."""
    try:  # non-blocking: a FIFO in its place must not hang the build
        fd = os.open(folder / DOWNLOAD_RECORDS / f"{name}.metadata", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        written = os.fstat(fd).st_mtime_ns
        lines = os.read(fd, 256).decode("ascii", errors="replace").splitlines()  # commit, etag, time
    except OSError:
        return None
    finally:
        os.close(fd)
    etag = lines[1].strip() if len(lines) > 1 else ""
    if len(etag) != 64 or not set(etag) <= HEX:
        return None
    return Trust(None, etag, written + 1, "download")


@dataclass(frozen=True)
class _Pinned:
    """A file as a pin in this process holds it."""

    path: str  # its real path
    identity: Identity  # its stat when pinned
    sha256: str
    claim: str | None = None  # where a sha256 taken before reading came from; None: read
    actual: Future[str] | None = None  # a claim's file, being hashed


# what to do about a false claim, by where it came from
_FALSE_CLAIM_HINTS = {
    CLAIMS["hub"]: "delete that repo from the Hugging Face cache and build again",
    CLAIMS["lock"]: "the file differs from the lock's (changed before the lock was written, or a lock made "
    "elsewhere); its sha256 is now remembered: build again to pin it anew (--locked refuses it)",
    CLAIMS["download"]: "the file differs from what huggingface_hub recorded (edited or replaced after the "
    "download?); its sha256 is now remembered: build again to pin it anew",
}

_pinned: dict[str, _Pinned] = {}  # real path -> how it was pinned last
_folders: dict[str, set[str]] = {}  # a folder as pinned (before symlinks) -> the real paths pinned in it
_registry = threading.Lock()
_pools: dict[bool, ThreadPoolExecutor] = {}


def _hashing(now: bool) -> ThreadPoolExecutor:
    """The threads files are hashed on (hashing releases the GIL): a hash a pin waits for
    (`now`) on every core; a claim's check on all cores but one, which the build has to itself."""
    with _registry:
        if now not in _pools:
            cores = os.cpu_count() or 1
            _pools[now] = ThreadPoolExecutor(
                max_workers=cores if now else max(1, cores - 1), thread_name_prefix="mergepkg-hash"
            )
        return _pools[now]


def _remember(folder: Path, pinned: _Pinned) -> None:
    with _registry:
        _pinned[pinned.path] = pinned
        _folders.setdefault(str(folder), set()).add(pinned.path)


def check_files(folders: Iterable[Path | str], *, unchanged: bool = True) -> None:
    """Raise a SourceError unless every file pinned in this process in `folders` holds the
    sha256 it was pinned with: a claim confirmed by reading the file (waited for), and,
    with `unchanged`, the file's stat still the one it was pinned with (a write since,
    even one that put the mtime back, changed its ctime). Folders with no pinned files
    (a built step's, in the store) pass."""
    with _registry:
        entries = sorted({_pinned[r] for f in folders for r in _folders.get(str(f), ())}, key=lambda e: e.path)
    for e in entries:
        if e.claim is not None and e.actual is not None:  # set together
            try:
                actual = e.actual.result()
            except OSError as err:
                raise SourceError(f"cannot read {e.path} to check its sha256: {err}", file=e.path) from err
            if actual != e.sha256:
                raise _false_claim(e.path, e.claim, e.sha256, actual)
        if unchanged:
            _check_unchanged(e)


def _false_claim(path: str, claim: str, claimed: str, actual: str, digest: str = "sha256") -> SourceError:
    """The error for a file whose bytes do not give the `digest` (sha256, or a small hub
    blob's git blob sha1) `claim` (one of CLAIMS' values) says."""
    return SourceError(
        f"{path} does not hold the {digest} {claim} gives it ({claimed[:12]}…; read: {actual[:12]}…); "
        "nothing made from it was stored",
        file=path,
        hint=_FALSE_CLAIM_HINTS[claim],
    )


def _check_unchanged(e: _Pinned) -> None:
    """The file still as pinned. Only its inode changed (a hard link made, a chmod): hashed
    again, since a write with the mtime set back changes that too, and then remembered so."""
    try:
        now = identity(os.stat(e.path))
    except FileNotFoundError:
        now = None
    if now == e.identity:
        return
    if (
        now is None
        or (now[0], now[1], now[3]) != (e.identity[0], e.identity[1], e.identity[3])
        or (sha256_file(e.path) != e.sha256)
    ):
        raise SourceError(
            f"{e.path} changed while the build read it; nothing made from it was stored",
            file=e.path,
            hint="build again once nothing writes to it",
        )
    with _registry:
        if _pinned.get(e.path) == e:
            _pinned[e.path] = replace(e, identity=now)


def _unopenable(db: Path, e: sqlite3.DatabaseError) -> StoreError:
    """Why the hash cache `db` cannot be opened, as the user can act on it: with no file
    there, its folder cannot be written (sqlite only says "unable to open database file"),
    and deleting a damaged file is no help; otherwise the file itself is at fault."""
    if not db.exists() and not os.access(db.parent, os.W_OK):
        return StoreError(
            f"cannot make the file hash cache: {db.parent} is not writable",
            file=str(db),
            hint="set MERGEPKG_HOME to a folder you can write to (on a disk that is not read-only)",
        )
    return StoreError(
        f"cannot open the file hash cache: {e}",
        file=str(db),
        hint="it only remembers the sha256 of files read before: delete it if it is damaged",
    )


class HashCache:
    """A small sqlite table in MERGEPKG_HOME; safe for several processes at once."""

    def __init__(self, db: Path):
        make_home(db.parent)  # a file there, or a place no folder can be made: one located error
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(db, timeout=60, check_same_thread=False)
            with self._lock, self._db:
                self._db.execute(  # `file_hashes`: the table before it (`hashes`) had no ctime
                    "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER,"
                    " mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)"
                )
        except sqlite3.DatabaseError as e:  # not a database, a folder, locked past the timeout
            raise _unopenable(db, e) from None
        self.hashed = 0  # files actually read in this process (tests check no-op rebuilds)
        self._started: dict[tuple[str, Identity], Future[str]] = {}  # hashes begun by `start`
        self._claimed: dict[tuple[str, Identity], tuple[str, str]] = {}  # claims `start` found

    def _remembered(self, real: str, ident: Identity) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, inode, sha256 FROM file_hashes WHERE path = ?", (_row_key(real),)
            ).fetchone()
        return row[4] if row and tuple(row[:4]) == ident else None

    def _hash(self, real: str, ident: Identity) -> str:
        """Read and hash the file; remembered only when its stat did not change meanwhile. A
        small hub blob whose bytes do not give the git blob sha1 it is named by is refused
        and not remembered, so every read of it refuses it again."""
        named = hub_blob_sha1(real)
        digest, blob = (sha256_file(real), None) if named is None else sha256_and_git_blob(real)
        with self._lock:
            self.hashed += 1
        if blob != named:
            assert named is not None and blob is not None  # both or neither
            raise _false_claim(real, CLAIMS["hub"], named, blob, "git blob sha1")
        try:
            same = identity(os.stat(real)) == ident
        except FileNotFoundError:
            same = False
        if same:
            try:
                with self._lock, self._db:
                    self._db.execute(
                        "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)", (_row_key(real), *ident, digest)
                    )
            except sqlite3.Error:  # remembering is a saving, never the answer: a closed cache keeps the check
                pass
        return digest

    @staticmethod
    def _claim(path: Path, real: str, st: os.stat_result, trust: Trust | None, folder: Path) -> tuple[str, str] | None:
        """(where it comes from, sha256) of a file whose sha256 is known without reading it:
        a hub blob's name, else `trust`, else a download record in `folder`. A record holds
        for a file (and a symlink to it: a link made since is a change too) whose inode has
        not changed since the record was written."""
        blob = hub_blob_sha256(real)
        if blob is not None:
            return CLAIMS["hub"], blob
        try:
            changed = max(st.st_ctime_ns, os.lstat(path).st_ctime_ns)
        except OSError:
            return None  # gone meanwhile: `sha256` says so
        if trust is not None and trust.holds(st, changed):
            return CLAIMS[trust.source], trust.sha256
        record = download_record(folder, path.relative_to(folder).as_posix()) if path.is_relative_to(folder) else None
        if record is not None and record.holds(st, changed):  # read only when the lock's does not hold
            return CLAIMS[record.source], record.sha256
        return None

    def start(
        self, paths: Iterable[tuple[Path, Trust | None]], *, claims: bool = False, folder: Path | None = None
    ) -> None:
        """Begin hashing, on background threads, the files `sha256` will have to read (not
        remembered, no claim taken), so that several files are hashed at once. `folder`: the
        model folder they are pinned in (each one's parent)."""
        for path, trust in paths:
            try:
                real = os.path.realpath(path)
                st = os.stat(real)
            except OSError:
                continue  # `sha256` says what is wrong
            ident = identity(st)
            if (real, ident) in self._started or self._remembered(real, ident) is not None:
                continue
            claim = self._claim(path, real, st, trust, folder or path.parent) if claims else None
            if claim is not None:  # kept for `sha256`, which then reads no record again
                self._claimed[(real, ident)] = claim
                continue
            self._started[(real, ident)] = _hashing(now=True).submit(self._hash, real, ident)

    def sha256(
        self, path: Path, trust: Trust | None = None, *, claims: bool = False, folder: Path | None = None
    ) -> tuple[int, str]:
        """(size, sha256) of `path`, read from disk only when its stat changed. With
        `claims`, a sha256 known without reading (a hub blob's name, `trust`'s, a download
        record's) is taken and checked on a background thread: the caller must
        `check_files` before storing anything made from the file. `folder`: the model
        folder it is pinned in (its parent)."""
        folder = folder or path.parent
        real = os.path.realpath(path)  # HF snapshots are symlinks into blobs/
        st = os.stat(real)
        ident = identity(st)
        started = self._started.pop((real, ident), None)
        digest = self._remembered(real, ident)
        claimed = self._claimed.pop((real, ident), None)  # found by `start`
        claim = None
        if digest is None and claims:
            claim = claimed or self._claim(path, real, st, trust, folder)
        if claim is not None:
            actual = started or _hashing(now=False).submit(self._hash, real, ident)
            _remember(folder, _Pinned(real, ident, claim[1], claim[0], actual))
            return st.st_size, claim[1]
        if digest is None:
            digest = started.result() if started is not None else self._hash(real, ident)
        # A hub blob is named by the sha256 huggingface_hub checked it against when it was
        # downloaded: bytes that give another one are damaged, however often they are read
        # (the read that refused a claim remembered the damaged bytes' sha256)
        blob = hub_blob_sha256(real)
        if blob is not None and digest != blob:
            raise _false_claim(real, CLAIMS["hub"], blob, digest)
        _remember(folder, _Pinned(real, ident, digest))
        return st.st_size, digest

    def close(self) -> None:
        self._db.close()
