"""Bearer tokens for a served registry, kept only as hashes, each with what it may do.

`create` returns a fresh token once; the registry folder keeps its sha256 in
`.mergepkg/tokens.json` (never served). A plain sha256 is enough here, unlike for
passwords: a token is 256 random bits, so there is nothing to guess from its hash.

A token has scopes (`publish`, `yank`, `read`: reads of a private registry), package
patterns it may act on (`team/*`, `name`, `*`; shell patterns over canonical names) and
an optional expiry. Tokens made before scopes existed publish and yank anything.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from mergepkg.errors import PublishError, RegistryError
from mergepkg.files import write_atomic
from mergepkg.recipe.names import is_name

PREFIX = "mpk_"
SCOPES = ("publish", "yank", "read")
DEFAULT_SCOPES = ("publish", "yank")


@dataclass(frozen=True)
class Token:
    """A token's record: never the token itself."""

    label: str  # who holds it
    sha256: str
    created: str  # UTC, ISO 8601
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    packages: tuple[str, ...] = ("*",)  # shell patterns over canonical package names
    expires: str | None = None  # UTC, ISO 8601; None: never

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and _time(self.expires) <= now

    def allows(self, scope: str, package: str | None) -> bool:
        return scope in self.scopes and (package is None or any(fnmatch.fnmatchcase(package, p) for p in self.packages))


def _file(root: Path) -> Path:
    return Path(root) / ".mergepkg" / "tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def load(root: Path) -> list[Token]:
    try:
        records = json.loads(_file(root).read_text())["tokens"]
        return [
            Token(
                r["label"],
                r["sha256"],
                r["created"],
                tuple(r.get("scopes", DEFAULT_SCOPES)),
                tuple(r.get("packages", ("*",))),
                r.get("expires"),
            )
            for r in records
        ]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RegistryError(f"the token file is damaged: {e}", file=str(_file(root))) from None


def _save(root: Path, tokens: list[Token]) -> None:
    records = [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(t).items()} for t in tokens]
    write_atomic(_file(root), json.dumps({"tokens": records}, indent=1), mode=0o600)


def create(
    root: Path,
    label: str,
    *,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    packages: Sequence[str] = ("*",),
    expires: datetime | None = None,
) -> str:
    """A new token for `label` (who holds it); only its hash is stored."""
    if not (Path(root) / "config.json").is_file():
        raise RegistryError(
            "not a registry folder (no config.json)",
            file=str(root),
            hint="create one with `mergepkg registry init DIR --name NAME`",
        )
    if not is_name(label):
        raise RegistryError(f"invalid token label {label!r}", hint="a name: letters, digits, '_', '-' and '.'")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise RegistryError(
            f"unknown scope {unknown[0]!r}" if unknown else "a token needs a scope", hint="scopes: " + ", ".join(SCOPES)
        )
    for p in packages:
        if not p or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789_-/*?" for c in p):
            raise RegistryError(f"invalid package pattern {p!r}", hint="e.g. team/*, team/name or *")
    now = datetime.now(timezone.utc)
    if expires is not None and expires <= now:
        raise RegistryError("the expiry is in the past", hint="e.g. --expires 90d or --expires 2027-06-30")
    token = PREFIX + secrets.token_urlsafe(32)
    path = _file(root)
    path.parent.mkdir(exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        tokens = load(root)
        if any(t.label == label for t in tokens):
            raise RegistryError(
                f"a token labelled {label!r} exists", file=str(path), hint="revoke it first, or choose another --label"
            )
        record = Token(
            label,
            _digest(token),
            _stamp(now),
            tuple(dict.fromkeys(scopes)),
            tuple(p.replace("_", "-") for p in packages),
            _stamp(expires) if expires else None,
        )
        _save(root, [*tokens, record])
    return token


def revoke(root: Path, label: str) -> None:
    path = _file(root)
    with FileLock(path.with_suffix(".lock")):
        tokens = load(root)
        if not any(t.label == label for t in tokens):
            raise RegistryError(f"no token labelled {label!r}", file=str(path))
        _save(root, [t for t in tokens if t.label != label])


def holder(root: Path, token: str) -> Token | None:
    """The record of `token`, or None when it is not one of this registry's."""
    digest = _digest(token)
    for t in load(root):  # read each time: a revoke takes effect without a restart
        if hmac.compare_digest(t.sha256, digest):
            return t
    return None


def authorize(root: Path, token: str, scope: str, package: str | None = None) -> str:
    """The label of a token that may do `scope` (on `package`), else a 401/403 error."""
    record = holder(root, token) if token else None
    if record is None:
        status = 401 if not token else 403
        raise PublishError(
            "a bearer token is required" if not token else "the token is not valid for this registry",
            status=status,
            hint="ask the registry's maintainer for a token",
        )
    if record.expired(datetime.now(timezone.utc)):
        raise PublishError(
            f"the token of {record.label} expired at {record.expires}", status=403, hint="ask for a new token"
        )
    if not record.allows(scope, package):
        what = f"{scope} {package}" if package else scope
        raise PublishError(
            f"the token of {record.label} may not {what}",
            status=403,
            hint=f"it may {', '.join(record.scopes)} on {', '.join(record.packages)}",
        )
    return record.label
