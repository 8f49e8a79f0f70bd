"""sha256 of files, remembered by (path, size, mtime, ctime, inode), so a large file is
hashed once and an unchanged rebuild re-hashes nothing.

Size and mtime alone, as DVC checks, miss a file edited in place with its mtime set back
(`touch -d`, `os.utime`); the inode change time cannot be set back by any user and
changes with every write (git checks it too), so an edit always means a new hash."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class HashCache:
    """A small sqlite table in MERGEPKG_HOME; safe for several processes at once."""

    def __init__(self, db: Path):
        db.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db, timeout=60, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(  # `file_hashes`: the table before it (`hashes`) had no ctime
                "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER,"
                " mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)"
            )
        self.hashed = 0  # files actually read in this process (tests check no-op rebuilds)

    def sha256(self, path: Path) -> tuple[int, str]:
        """(size, sha256) of `path`, read from disk only when its stat changed."""
        real = os.path.realpath(path)  # HF snapshots are symlinks into blobs/
        st = os.stat(real)
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, inode, sha256 FROM file_hashes WHERE path = ?", (real,)
            ).fetchone()
        if row and row[:4] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return st.st_size, row[4]
        digest = sha256_file(Path(real))
        self.hashed += 1
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)",
                (real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest),
            )
        return st.st_size, digest

    def close(self) -> None:
        self._db.close()
