"""Small files written whole or not at all.

Locks, registry indexes, tokens, caches: a reader (or a process killed mid-write) must
never see half a file. `write_atomic` writes a temp file beside the target, one per
writer (so concurrent writers never share one), and renames it over the target.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import os
import tempfile
import time
from pathlib import Path

from mergepkg.errors import disk_error

LEFTOVER_SECONDS = 600  # a temp file this old is no writer's: one was killed before its rename
NAME_MAX = 255  # bytes in one file name (Linux's file systems, macOS's)
TEMP_RANDOM = 8  # the characters tempfile puts between a temp name's prefix and suffix


def temp_prefix(start: str, name: str, end: str, *, suffix: str = "") -> str:
    """`start + name + end`, the prefix of a temp file or folder named after `name`: `name`
    cut short where the whole temp name (tempfile's random part and `suffix` added) would
    pass NAME_MAX bytes, so any name the system allows can have a temp beside it. A cut
    name keeps its start (recognisable) and gains `~` and 8 hex digits of its sha256, so
    two long names that start alike never share a prefix (nor each other's leftovers)."""
    room = NAME_MAX - TEMP_RANDOM - len(os.fsencode(start + end + suffix))
    if len(os.fsencode(name)) <= room:
        return start + name + end
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    while len(os.fsencode(name + tag)) > room:
        name = name[:-1]
    return start + name + tag + end


def lock_file_of(recipe: Path) -> Path:
    """The lock beside a recipe file, named after it: `NAME.toml` -> `NAME.lock`; any other
    name gets `.lock` added (`soup.v1` -> `soup.v1.lock`), so recipes that differ only
    after their last dot (`soup.v1`, `soup.v2`, `soup.toml`) never share a lock. Here,
    low in the layers, so that every module naming a recipe's lock (the parser's too)
    can share this one rule."""
    if recipe.suffix.lower() == ".toml":
        return recipe.with_suffix(".lock")
    return recipe.with_name(recipe.name + ".lock")


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = False) -> None:
    """Replace `path` with `data`. `mode` 0o600 for files holding secrets; `durable`
    also syncs the bytes to disk before the rename (files other machines read). Temp
    files of `path` that writers killed mid-write left (a lock beside a recipe) go. A
    full or read-only disk is a DiskError naming `path` and its folder (the error of a
    write that fails at close names no file)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        fd, tmp = tempfile.mkstemp(
            prefix=temp_prefix(".", path.name, ".", suffix=".tmp"), suffix=".tmp", dir=path.parent
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and (disk := disk_error(_named(e), f"writing {path}")) is not None:
            disk.hint = _FOLDER_HINTS.get(e.errno or 0, "").format(folder=path.parent) or disk.hint
            raise disk from e
        raise


# the disk the file's folder is on, which need not be the store's or --out's (a lock beside its recipe)
_FOLDER_HINTS = {
    errno.ENOSPC: "free some space on the disk that holds {folder}",
    errno.EROFS: "{folder} is on a read-only file system: work on a copy on a writable one",
}


def _named(e: OSError) -> OSError:
    """`e` without the temp file's name: the message names the file it was to become."""
    return OSError(e.errno, e.strerror) if e.errno is not None else e


def _remove_leftovers(path: Path) -> None:
    old = time.time() - LEFTOVER_SECONDS
    prefix = temp_prefix(".", path.name, ".", suffix=".tmp")
    for tmp in glob.glob(glob.escape(str(path.parent / prefix)) + "*.tmp"):
        try:
            if os.stat(tmp).st_mtime < old:
                os.unlink(tmp)
        except OSError:  # gone already, or not ours to remove
            continue


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux's renameat2 with RENAME_EXCHANGE): a
    process killed at any moment leaves both in place, where two renames leave a moment
    with one missing. False where the system or the file system has no such swap."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not glibc 2.28+ (macOS, musl before 1.2.?): the caller renames twice
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # an old kernel, a file system without it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
