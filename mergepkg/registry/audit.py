"""The audit log of a registry's writes: who published or yanked what, when, from where.

`.mergepkg/audit.jsonl` in the registry folder (never served), one JSON object a line,
appended under the folder's write lock and synced before the write is answered; the
log is never rewritten. `mergepkg registry log DIR` shows it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from mergepkg.errors import RegistryError

FILE = "audit.jsonl"


def record(private: Path, *, who: str, action: str, name: str, version: str, sha256: str, source: str) -> None:
    """Append one write to the log in the registry's private folder `private`."""
    line = {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "who": who,
        "action": action,  # "publish", "yank" or "unyank"
        "name": name,
        "version": version,
        "sha256": sha256,
        "from": source,  # a client address, or "local" for a write to the folder itself
    }
    private.mkdir(exist_ok=True)
    fd = os.open(private / FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(private: Path) -> list[dict]:
    """Every write the log records, oldest first."""
    try:
        text = (private / FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise RegistryError("the audit log is damaged", file=str(private / FILE), line=i) from None
    return rows
