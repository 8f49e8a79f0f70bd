"""Signing records with ed25519, as Nix signs store paths.

A key has a name; its public half is written `name:base64(32 bytes)` (the form Nix's
`trusted-public-keys` takes) and a signature names the key it was made with. Keys live
in `$MERGEPKG_HOME/keys/`: `<name>.secret` (0600) and `<name>.public`. A record is
accepted on a signature only when the signature's key is trusted and the signature
verifies over the record's canonical bytes without signatures.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.files import write_atomic
from mergepkg.recipe.names import NAME_HINT, is_name
from mergepkg.remote.errors import EXTRA_HINT, Refused, RemoteConfigError, RemoteError
from mergepkg.remote.record import Record, Signature
from mergepkg.settings import Settings, home_not_a_folder, make_home


def _ed25519() -> Any:  # the module; `cryptography` is in the remote extra
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise RemoteError("signing needs the `cryptography` package", hint=EXTRA_HINT) from None
    return ed25519


@dataclass(frozen=True)
class SigningKey:
    name: str
    secret: bytes = field(repr=False)  # the 32-byte ed25519 private key

    @property
    def public(self) -> str:
        """`name:base64`, to give to those who should trust this key."""
        raw = _ed25519().Ed25519PrivateKey.from_private_bytes(self.secret).public_key().public_bytes_raw()
        return f"{self.name}:{base64.b64encode(raw).decode()}"


def keys_dir(settings: Settings) -> Path:
    return settings.home / "keys"


def _decode(text: str, what: str, where: str | None) -> tuple[str, bytes]:
    name, sep, data = text.strip().partition(":")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not sep or not is_name(name) or len(raw) != 32:
        raise RemoteConfigError(
            f"not an ed25519 {what}: {text.strip()!r:.60}",
            file=where,
            hint=f"expected NAME:BASE64 of 32 bytes, the NAME as a remote's ({NAME_HINT})",
        )
    return name, raw


def parse_public_key(text: str, *, where: str | None = None) -> tuple[str, bytes]:
    """(name, 32 raw bytes) of a public key written `name:base64`."""
    return _decode(text, "public key", where)


def generate_key(settings: Settings, name: str) -> SigningKey:
    """A new key named `name`, saved under keys/ (the secret 0600); never overwrites one."""
    if not is_name(name):
        raise RemoteConfigError(f"invalid key name {name!r}", hint=NAME_HINT)
    folder = _keys_folder(settings)
    secret_file = folder / f"{name}.secret"
    if secret_file.exists():
        raise RemoteConfigError(
            f"a key named {name!r} exists", file=secret_file, hint="pick another name, or use the one there"
        )
    secret = _ed25519().Ed25519PrivateKey.generate().private_bytes_raw()
    key = SigningKey(name, secret)
    write_atomic(secret_file, f"{name}:{base64.b64encode(secret).decode()}\n", mode=0o600)
    write_atomic(folder / f"{name}.public", key.public + "\n")
    return key


def _keys_folder(settings: Settings) -> Path:
    """keys/, checked before a key is made: a home or a keys/ that is a file is one
    located error, not a NotADirectoryError from deep in a write."""
    folder = keys_dir(settings)
    make_home(settings.home)
    if folder.exists() and not folder.is_dir():
        raise RemoteConfigError(
            "expected the folder of signing keys, found a file", file=folder, hint="move the file away"
        )
    return folder


def key_file(settings: Settings, name: str) -> Path:
    """Where the signing key `name` is: the key of that name under keys/ when there is one,
    else the file `name` (`alice.secret` in the current folder is a name too, and was read
    as keys/alice.secret.secret); a name that is neither is looked for under keys/. keys/
    comes first, so a stray file in the current folder never replaces a saved key."""
    saved = keys_dir(settings) / f"{name}.secret"
    if is_name(name) and (saved.is_file() or not Path(name).is_file()):
        return saved
    return Path(name)


def load_signing_key(settings: Settings, name: str) -> SigningKey:
    """The key `name` saved by `generate_key`, or a secret key file (`key_file`)."""
    path = key_file(settings, name)
    try:
        text = path.read_text()
    except OSError as e:
        if isinstance(e, NotADirectoryError) and settings.home.exists() and not settings.home.is_dir():
            raise home_not_a_folder(settings.home) from None
        raise RemoteConfigError(
            f"cannot read the signing key: {e.strerror}", file=path, hint="make one: mergepkg remote keygen NAME"
        ) from None
    key_name, secret = _decode(text, "secret key", str(path))
    return SigningKey(key_name, secret)


def sign_record(record: Record, key: SigningKey) -> Record:
    """The record with `key`'s signature added (replacing an older one by that key)."""
    private = _ed25519().Ed25519PrivateKey.from_private_bytes(key.secret)
    sig = base64.b64encode(private.sign(record.unsigned_bytes())).decode()
    return record.with_signature(Signature(key.name, sig))


def trusted_signer(record: Record, trusted: Iterable[str], *, where: str | None = None) -> str | None:
    """The name of a trusted key whose signature on `record` verifies, or None when no
    trusted key signed it. A signature that names a trusted key and does not verify is
    forged or the record altered: `Refused`."""
    ed25519 = _ed25519()
    keys = dict(parse_public_key(t) for t in trusted)
    for sig in record.signatures:
        if sig.key_id not in keys:
            continue
        try:
            raw = base64.b64decode(sig.sig, validate=True)
            ed25519.Ed25519PublicKey.from_public_bytes(keys[sig.key_id]).verify(raw, record.unsigned_bytes())
        except Exception:  # InvalidSignature, or bytes that are no signature at all
            raise Refused(
                f"the signature by trusted key {sig.key_id!r} does not verify: the record was forged or altered",
                file=where,
                hint="nothing was pulled; tell whoever runs the remote",
            ) from None
        return sig.key_id
    return None
