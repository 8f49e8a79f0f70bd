"""Staged files made an artifact's on the remote itself: the in-place assembly of a split step.

The workers of a step split by tensors (`engine/split.py`, `cluster/parts.py`) put its
shards on the remote, each under a staging folder. `adopt(remote, record, staged,
side)` makes them the files of the record's variant folder without their bytes passing
through the machine that assembles, puts the small side files it is given (index,
config, tokenizer), and writes the record last:

- disk (`file://`): a rename (`os.replace`) within the remote's root, its mtime set to now;
- S3: a server-side copy (s3fs: CopyObject, or above 150 MB a multipart UploadPartCopy
  in 50 MB parts, one after another), then the staged object deleted;
- `memory://`: the filesystem's move;
- the Hub (`hf://`): refused (`RemoteError`): nothing is staged there.

Up to `MOVE_THREADS` files move at once: each only waits on the store.

The invariant is push's: no record, no artifact. Every staged file's size is checked
against the record before any is moved (a refused adoption moves nothing); the record
is written only once every file it lists is in its folder with its size, so a crash
at any point leaves at most files without a record, which no reader trusts; running it
again finishes (a file already in the folder with its size is not moved again, so the
staged copy may be gone). Two adopters of one key both succeed: they move the same
bytes to the same names (a file the other moved first is taken as there), and a
remote that has the whole artifact already is left as it is (`Adopted.present`).

What is not checked here is the staged bytes' sha256: re-reading them is the cost this
avoids. The record's sha256s are the ones each worker computed over the bytes it wrote
(as a push's are the pusher's), and every reader checks each file's sha256 and the
tensors' digest against the record and the lock before it takes anything, so a shard
damaged on its way to the remote is refused at pull, never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergepkg.canonical import sha256_hex
from mergepkg.remote.errors import RemoteError
from mergepkg.remote.hub import HubRemote
from mergepkg.remote.record import FileEntry, Record, parse_record
from mergepkg.remote.store import Remote
from mergepkg.remote.transfer import in_parallel, listing, move_file, put_bytes

MOVE_THREADS = 32  # moves at once: each waits on the store (a rename, a server-side copy), none reads here


@dataclass(frozen=True)
class Adopted:
    record: Record  # the remote's record of the key now: the one written, or the one found
    moved: tuple[str, ...]  # staged files made the artifact's
    put: tuple[str, ...]  # side files written
    present: bool  # the remote had the whole artifact already: nothing was written


def check_adoptable(remote: Remote) -> None:
    """Raise `RemoteError` for a remote that cannot adopt staged files (the Hub)."""
    if isinstance(remote, HubRemote):
        raise RemoteError(
            "a step split by tensors needs a remote that can stage and move files; the Hub cannot",
            file=remote.url,
            hint="use a file:// or s3:// remote for --split, or build without --split",
        )


def adopt(remote: Remote, record: Record, staged: Mapping[str, str], side: Mapping[str, bytes]) -> Adopted:
    """Make `record`'s artifact on `remote` from `staged` {file name: its path on the
    remote's filesystem} and `side` {file name: bytes}, together exactly the record's
    files, then write the record (see the module's docstring)."""
    check_adoptable(remote)
    record = parse_record(record.to_bytes(), where=remote.url, key=record.key)  # the same checks as a reader's
    where = f"{remote.url}/{record.folder}"
    listed = {f.name: f for f in record.files}
    if set(staged) & set(side) or set(staged) | set(side) != set(listed):
        raise RemoteError("the files staged and given are not the files the record lists", file=where)
    for name, data in side.items():
        if (len(data), sha256_hex(data)) != (listed[name].size, listed[name].sha256):
            raise RemoteError(f"{name}: the bytes given are not the file the record lists", file=where)
    fs, folder = remote.fs, remote.path(record.folder)
    fs.invalidate_cache()
    current = _whole(remote, record.key)
    if current is not None:
        return Adopted(current, (), (), present=True)
    found = listing(fs, folder)
    moves = [n for n in sorted(staged) if not _holds(found, listed[n])]
    for name in moves:  # every size first: a refused adoption moves nothing
        size = _size(fs, staged[name])
        if size != listed[name].size and not _holds(listing(fs, folder), listed[name]):
            what = "is missing" if size is None else f"has {size} bytes"
            raise RemoteError(
                f"the staged {name} {what}; its worker wrote {listed[name].size}",
                file=f"{remote.url}/{staged[name]}",
                hint="build the step again: its parts are staged anew",
            )
    threads = 1 if remote.threads <= 1 else max(remote.threads, MOVE_THREADS)
    in_parallel(lambda n: _move(fs, staged[n], f"{folder}/{n}", listed[n]), moves, threads)
    puts = [n for n in sorted(side) if not _holds(found, listed[n])]
    in_parallel(lambda n: put_bytes(fs, side[n], f"{folder}/{n}"), puts, remote.threads)
    fs.invalidate_cache()
    found = listing(fs, folder)
    if lacking := [f.name for f in record.files if not _holds(found, f)]:  # a gc meanwhile
        raise RemoteError(f"{len(lacking)} files went missing while adopting: {', '.join(lacking)}", file=where)
    remote._write_record(record)
    return Adopted(record, tuple(moves), tuple(puts), present=False)


def _whole(remote: Remote, key: str) -> Record | None:
    """The remote's record of `key` when every file it lists is in place."""
    try:
        record = remote.record(key)
    except RemoteError:
        return None  # a malformed record is replaced
    if record is None:
        return None
    found = listing(remote.fs, remote.path(record.folder))
    return record if all(_holds(found, f) for f in record.files) else None


def _holds(found: dict[str, dict], f: FileEntry) -> bool:
    return found.get(f.name, {}).get("size") == f.size


def _size(fs: Any, path: str) -> int | None:
    try:
        return fs.info(path)["size"]
    except FileNotFoundError:
        return None


def _move(fs: Any, src: str, dst: str, f: FileEntry) -> None:
    """One staged file moved; one another adopter moved first is taken as there."""
    try:
        move_file(fs, src, dst)
    except FileNotFoundError:
        fs.invalidate_cache()
        if not _holds(listing(fs, dst.rpartition("/")[0]), f):
            raise RemoteError(f"the staged {f.name} went missing before it was moved", file=src) from None
