"""Small files written whole or not at all.

Locks, registry indexes, tokens, caches: a reader (or a process killed mid-write) must
never see half a file. `write_atomic` writes a temp file beside the target, one per
writer (so concurrent writers never share one), and renames it over the target.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

LEFTOVER_SECONDS = 600  # a temp file this old is no writer's: one was killed before its rename


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = False) -> None:
    """Replace `path` with `data`. `mode` 0o600 for files holding secrets; `durable`
    also syncs the bytes to disk before the rename (files other machines read). Temp
    files of `path` that writers killed mid-write left (a lock beside a recipe) go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_leftovers(path: Path) -> None:
    old = time.time() - LEFTOVER_SECONDS
    for tmp in glob.glob(glob.escape(str(path.parent / f".{path.name}.")) + "*.tmp"):
        try:
            if os.stat(tmp).st_mtime < old:
                os.unlink(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
