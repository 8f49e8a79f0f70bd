"""Canonical JSON and sha256: the bytes every key, pin and recipe hash is taken over.

Canonical JSON sorts keys, has no spaces and refuses NaN, so equal values give equal
bytes on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
