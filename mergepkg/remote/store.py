"""A remote store over an fsspec filesystem: the local store's layout and invariant.

```
<root>/records/<key>.json            the record (record.py), written last
<root>/artifacts/<key>/<variant>/    the artifact: a Hugging Face model folder
```

A record is written only after every file it names is in place, so an interrupted
push leaves no record and nothing a reader trusts. Two pushers of one key both
succeed: files of one variant are the same bytes, put whole, and the record written
last names a complete folder. A pull checks every file's size and sha256 against the
record and the tensors' digest against the lock's, or a trusted signature where the
lock pins no digest; what fails is deleted, never committed to the local store. A
record naming a file no build writes (`record.is_artifact_file`) is refused before any
download: the lock's digest covers tensors only, not the config or tokenizer files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergepkg.errors import MergepkgError
from mergepkg.io.digest import combine_digests, tensor_digests
from mergepkg.remote.errors import NotOnRemote, Refused, RemoteError
from mergepkg.remote.record import MAX_RECORD_BYTES, FileEntry, Record, is_artifact_file, parse_record
from mergepkg.remote.sign import trusted_signer
from mergepkg.remote.transfer import (
    Meter,
    ProgressFn,
    get_file,
    hash_file,
    in_parallel,
    is_local,
    is_temp,
    listing,
    mtime,
    put_bytes,
    put_file,
)
from mergepkg.store.local import is_key


@dataclass(frozen=True)
class PushReport:
    key: str
    uploaded: tuple[str, ...]  # files moved
    skipped: tuple[str, ...]  # files the remote had already
    nbytes: int  # bytes moved
    present: bool  # the remote had the whole artifact: no file was written
    signed: bool = False  # a signature was added to the record the remote had (sync.push_artifact)
    repaired: bool = False  # the remote had a record for the key, and files or the record were replaced


@dataclass(frozen=True)
class Pulled:
    record: Record
    folder: Path  # every file checked, ready for the local store's commit
    tensors: dict[str, str]  # each tensor's digest, as recomputed from the files
    signer: str | None  # the trusted key that admitted it, where the lock pinned no digest


@dataclass(frozen=True)
class GcReport:
    removed: tuple[str, ...]  # keys whose records (then files) were removed
    files: tuple[str, ...]  # files removed (of those keys, failed pushes, replaced variants)


class Remote:
    """A remote at `root` on fsspec filesystem `fs`; `url` names it in errors."""

    def __init__(self, fs: Any, root: str, *, url: str | None = None, threads: int = 4, grace_seconds: float = 3600):
        self.fs, self.root = fs, root.rstrip("/")
        self.url = url or root
        self.threads = threads
        self.grace_seconds = grace_seconds  # files younger than this without a record may be a push in flight
        self.atomic_commits = False  # True where files and record land in one commit (hub.py)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- reading ------------------------------------------------------------------------
    def record(self, key: str) -> Record | None:
        """The record for `key`, or None; a malformed one is a `RemoteError`."""
        if not is_key(key):
            raise RemoteError(f"not a key: {key!r}", file=self.url)
        try:
            with self.fs.open(self.path("records", f"{key}.json"), "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RemoteError(f"cannot read the record of {key}: {e}", file=self.url) from None
        return parse_record(data, where=self.url, key=key)

    def has(self, key: str) -> bool:
        """Whether the remote holds `key`: its record is present and well formed."""
        try:
            return self.record(key) is not None
        except RemoteError:
            return False

    def keys(self) -> list[str]:
        """The keys the remote has records for."""
        names = listing(self.fs, self.path("records"))
        return sorted(n[:-5] for n in names if n.endswith(".json") and is_key(n[:-5]))

    def _missing(self, record: Record, rehash: bool = False) -> list[FileEntry]:
        """The record's files its folder lacks (or holds with another size; with `rehash`,
        another sha256 too: files are read through)."""
        found = listing(self.fs, self.path(record.folder))
        missing = []
        for f in record.files:
            info = found.get(f.name)
            absent = info is None or info.get("size") != f.size
            if absent or (rehash and hash_file(self.fs, self.path(record.folder, f.name)) != (f.size, f.sha256)):
                missing.append(f)
        return missing

    # -- pushing ------------------------------------------------------------------------
    def check_root(self) -> None:
        """Refuse to write to a folder remote whose folder is gone (an unmounted shared
        disk): a local write makes the folders it needs, so a push, or a part staged
        (`cluster/parts.py`), would land in a new, empty folder at the mount point, which
        no one else sees. Other backends have no folder to lose (a missing bucket is the
        S3 client's error)."""
        if is_local(self.fs) and not self.fs.isdir(self.root):
            raise RemoteError(
                "the remote's folder is gone (an unmounted shared disk?)",
                file=self.url,
                hint="mount or create it again; a push never makes a remote's folder",
            )

    def push(
        self, folder: Path, record: Record, *, progress: ProgressFn | None = None, rehash: bool = False
    ) -> PushReport:
        """Put the artifact in `folder` (its files as `record` lists them) on the remote:
        only the files it lacks, in parallel, then the record. `rehash` also reads back
        the files the remote has, to replace any that were altered."""
        record = parse_record(record.to_bytes(), where=self.url, key=record.key)  # the same checks as a reader's
        for f in record.files:
            p = folder / f.name
            if not p.is_file() or p.stat().st_size != f.size:
                raise RemoteError(f"{p} is not the file the record lists ({f.size} bytes)", file=self.url)
        self.fs.invalidate_cache()
        self.check_root()
        try:
            existing = self.record(record.key)
        except RemoteError:
            existing = None  # a malformed record is replaced
        if existing is not None and self._whole(existing, record, rehash):
            return PushReport(record.key, (), tuple(f.name for f in record.files), 0, present=True)
        missing = self._missing(record, rehash)
        meter = Meter(sum(f.size for f in missing), progress)
        self._upload(folder, record, missing, meter)
        self.fs.invalidate_cache()
        if lost := self._missing(record):  # a gc removed old files meanwhile: put them back
            self._upload(folder, record, lost, meter)
        names = {f.name for f in missing}
        skipped = tuple(f.name for f in record.files if f.name not in names)
        repaired = rehash and existing is not None
        return PushReport(record.key, tuple(sorted(names)), skipped, meter.done, present=False, repaired=repaired)

    def _whole(self, existing: Record, pushed: Record, rehash: bool) -> bool:
        """Whether the remote's artifact (`existing`'s record) leaves a push nothing to do:
        its files all there (with `rehash`, read back: each sha256 as recorded). A rehash,
        the repair of a remote whose pulls are refused, also wants the record to say the
        pushed build (digest and files): another build's record is replaced."""
        if rehash and (existing.digest, existing.files) != (pushed.digest, pushed.files):
            return False
        return not self._missing(existing, rehash)

    def _upload(self, folder: Path, record: Record, files: list[FileEntry], meter: Meter) -> None:
        """Put `files`, in parallel, then the record: last, and only once all are in place."""
        in_parallel(
            lambda f: put_file(self.fs, folder / f.name, self.path(record.folder, f.name), meter), files, self.threads
        )
        self._write_record(record)

    def _write_record(self, record: Record) -> None:
        put_bytes(self.fs, record.to_bytes(), self.path("records", f"{record.key}.json"))

    def add_signatures(self, signed: Record) -> Record:
        """Rewrite the record of `signed.key` with `signed`'s signatures added to those it
        has (one per key name): only the record, whole, and only when the remote's record is
        `signed` but for signatures and its files are all in place. Returns what was written."""
        self.fs.invalidate_cache()
        where = f"{self.url}/records/{signed.key}.json"
        current = self.record(signed.key)
        if current is None:
            raise NotOnRemote(f"no artifact for key {signed.key}", file=self.url, hint="push it first")
        if current.unsigned_bytes() != signed.unsigned_bytes():
            raise RemoteError("the record changed since it was read", file=where, hint="sign it again")
        if missing := self._missing(current):
            raise RemoteError(
                f"{len(missing)} files the record lists are missing", file=where, hint="push the artifact again"
            )
        for sig in signed.signatures:
            current = current.with_signature(sig)
        self._write_record(current)
        return current

    # -- pulling ------------------------------------------------------------------------
    def pull(
        self,
        key: str,
        dest: Path,
        *,
        expected_digest: str | None = None,
        trusted: Iterable[str] = (),
        progress: ProgressFn | None = None,
    ) -> Pulled:
        """Download `key` into `dest` (a new folder in the local store's tmp/) and check
        it: every file a name a build writes (`check_names`, before any download), its
        size and sha256 against the record, and the tensors' digest
        against `expected_digest` (the lock's) or, where that is None, a signature by
        one of the `trusted` public keys. On any failure `dest` is removed."""
        try:
            return self._pull(key, dest, expected_digest, trusted, progress)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise

    def _pull(
        self, key: str, dest: Path, expected_digest: str | None, trusted: Iterable[str], progress: ProgressFn | None
    ) -> Pulled:
        self.fs.invalidate_cache()
        record = self.record(key)
        where = f"{self.url}/records/{key}.json"
        if record is None:
            raise NotOnRemote(f"no artifact for key {key}", file=self.url)
        check_names(record, where)
        signer = None
        if expected_digest is not None and record.digest != expected_digest:
            raise Refused(
                f"the remote's artifact has digest {record.digest}, the lock pins {expected_digest}",
                file=where,
                hint="nothing was pulled: build the step here, or repair the remote from a home that holds the"
                f" lock's build: mergepkg cache push --rehash {key[:12]}",
            )
        if expected_digest is None:
            signer = trusted_signer(record, trusted, where=where)
            if signer is None:
                raise Refused(
                    "the lock pins no digest for this step and no trusted key signed the record",
                    file=where,
                    hint="lock the recipe from a build you trust, or trust the pusher's public key",
                )
        dest.mkdir(parents=True, exist_ok=True)
        meter = Meter(record.size, progress)
        in_parallel(lambda f: self._get(record, f, dest, meter), record.files, self.threads)
        try:
            tensors = tensor_digests(dest)
        except (MergepkgError, OSError, ValueError) as e:
            raise Refused(f"the pulled files are no readable model: {e}", file=where) from None
        digest = combine_digests(tensors)
        if digest != record.digest:
            raise Refused(f"the pulled tensors give digest {digest}, the record says {record.digest}", file=where)
        return Pulled(record, dest, tensors, signer)

    def _get(self, record: Record, f: FileEntry, dest: Path, meter: Meter) -> None:
        path, where = self.path(record.folder, f.name), f"{self.url}/{record.folder}/{f.name}"
        try:
            size, sha = get_file(self.fs, path, dest / f.name, f.size, meter)
        except FileNotFoundError:
            raise Refused("a file the record lists is missing", file=where, hint="push the artifact again") from None
        except OSError as e:
            raise RemoteError(f"cannot read: {e}", file=where) from None
        if size != f.size or sha != f.sha256:
            if size != f.size:
                got, want = f"{size} bytes", f"{f.size}"
            else:
                got, want = f"sha256 {sha[:16]}…", f"{f.sha256[:16]}…"
            raise Refused(
                f"the file differs from its record: it has {got}, the record says {want}",
                file=where,
                hint="repair the remote from a home that holds this build:"
                f" mergepkg cache push --rehash {record.key[:12]}",
            )

    # -- gc -----------------------------------------------------------------------------
    def gc(self, keep: set[str], *, dry_run: bool = False) -> GcReport:
        """Remove the records of keys not in `keep`, then their files; and files no record
        names (failed pushes, variants replaced, split parts staged and never assembled)
        once older than `grace_seconds`; a kept key's files stay whole where its record
        cannot be read. A reader never accepts a half-removed artifact: it checks every file."""
        self.fs.invalidate_cache()
        removed = [k for k in self.keys() if k not in keep]
        if not dry_run:
            self._delete([self.path("records", f"{k}.json") for k in removed])
        files = []
        now = time.time()
        for key_dir in sorted(listing_dirs(self.fs, self.path("artifacts"))):
            key = key_dir.rpartition("/")[2]
            try:
                record = self.record(key) if is_key(key) else None
            except RemoteError:  # a newer format, a damaged record, a hiccup
                if key in keep:
                    continue  # its files may be all that is left of a kept build: they stay
                record = None
            current = self.path(record.folder) if record is not None else None
            for path, info in sorted(self.fs.find(key_dir, detail=True).items()):
                name = path.rpartition("/")[2]
                in_current = current is not None and path.startswith(current + "/")
                if in_current and not is_temp(name):
                    continue
                gone_key = record is None and key in removed  # removed now: no grace
                age = now - (mtime(info) or now)
                if gone_key or self.atomic_commits or age > self.grace_seconds:
                    files.append(path)
        try:
            staged = self.fs.find(self.path("staging"), detail=True)
        except FileNotFoundError:
            staged = {}
        files += [p for p, info in sorted(staged.items()) if now - (mtime(info) or now) > self.grace_seconds]
        if not dry_run:
            self._delete(files)
        return GcReport(tuple(removed), tuple(files))

    def _delete(self, paths: list[str]) -> None:
        folders = set()
        for p in paths:
            try:
                self.fs.rm_file(p)
            except FileNotFoundError:
                continue
            folders.add(p.rpartition("/")[0])
        for folder in sorted(folders | {f.rpartition("/")[0] for f in folders}, key=len, reverse=True):
            if folder.startswith((self.path("artifacts") + "/", self.path("staging") + "/")):
                try:
                    self.fs.rmdir(folder)  # empty folders on a disk; object stores have none
                except OSError:
                    continue


def check_names(record: Record, where: str) -> None:
    """Refuse, before any download, a record listing a file no build writes into an
    artifact (`is_artifact_file`): the lock pins the tensors' digest alone, and a file's
    sha256 is only the record's word, so a remote's writer could add code
    (`modeling_evil.py`, named by an `auto_map` in config.json) that would pass every
    other check."""
    odd = [i for i, f in enumerate(record.files) if not is_artifact_file(f.name)]
    if odd:
        names = ", ".join(repr(record.files[i].name) for i in odd[:5]) + (f" and {len(odd) - 5} more" * (len(odd) > 5))
        raise Refused(
            f"the record lists {'a file' if len(odd) == 1 else 'files'} no build writes into an artifact: {names}",
            file=where,
            key=f"files[{odd[0]}].name",
            hint="nothing was pulled: a build writes weights, their index, config, generation config, tokenizer"
            " and chat template files only; someone who can write the remote added it. Repair it from a home"
            f" that holds this build: mergepkg cache push --rehash {record.key[:12]}",
        )


def listing_dirs(fs: Any, folder: str) -> list[str]:
    """The folders directly in `folder` (full paths); [] when there is none."""
    try:
        entries = fs.ls(folder, detail=True, refresh=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e["name"].rstrip("/") for e in entries if e.get("type") == "directory"]
