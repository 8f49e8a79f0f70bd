"""Bearer tokens for a served registry's writes, kept only as hashes.

`create` returns a fresh token once; the registry folder keeps its sha256 in
`.mergepkg/tokens.json` (never served). A plain sha256 is enough here, unlike for
passwords: a token is 256 random bits, so there is nothing to guess from its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from mergepkg.errors import RegistryError
from mergepkg.files import write_atomic

PREFIX = "mpk_"


def _file(root: Path) -> Path:
    return Path(root) / ".mergepkg" / "tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load(root: Path) -> list[dict]:
    try:
        return json.loads(_file(root).read_text())["tokens"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RegistryError(f"the token file is damaged: {e}", file=str(_file(root))) from None


def _save(root: Path, tokens: list[dict]) -> None:
    write_atomic(_file(root), json.dumps({"tokens": tokens}, indent=1), mode=0o600)


def create(root: Path, label: str) -> str:
    """A new token for `label` (who holds it); only its hash is stored."""
    if not (Path(root) / "config.json").is_file():
        raise RegistryError(
            "not a registry folder (no config.json)",
            file=str(root),
            hint="create one with `mergepkg registry init DIR --name NAME`",
        )
    token = PREFIX + secrets.token_urlsafe(32)
    path = _file(root)
    path.parent.mkdir(exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        tokens = load(root)
        if any(t["label"] == label for t in tokens):
            raise RegistryError(
                f"a token labelled {label!r} exists", file=str(path), hint="revoke it first, or choose another --label"
            )
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _save(root, [*tokens, {"label": label, "sha256": _digest(token), "created": stamp}])
    return token


def revoke(root: Path, label: str) -> None:
    path = _file(root)
    with FileLock(path.with_suffix(".lock")):
        tokens = load(root)
        if not any(t["label"] == label for t in tokens):
            raise RegistryError(f"no token labelled {label!r}", file=str(path))
        _save(root, [t for t in tokens if t["label"] != label])


def holder(root: Path, token: str) -> str | None:
    """The label of the token, or None when it is not one of this registry's."""
    digest = _digest(token)
    for t in load(root):  # read each time: a revoke takes effect without a restart
        if hmac.compare_digest(t["sha256"], digest):
            return t["label"]
    return None
