"""The record: what a remote says about one artifact, written last beside its files.

`records/<key>.json` holds the step's key and lock entry, the output digest, each
file's name, size and sha256, who pushed it with which mergepkg, when, and optional
ed25519 signatures over the record's canonical bytes without its signatures. The files
live in `artifacts/<key>/<variant>/`, where the variant is taken over the file list, so
pushers of different files never write into one folder. No record, no artifact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.io.folder import ARTIFACT_FILES, SHARD_FILE
from mergepkg.remote.errors import RemoteError
from mergepkg.store.local import MANIFEST, is_key

FORMAT = 1
MAX_RECORD_BYTES = 16 << 20  # a record is a few kB; a larger one is not read
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = {"format", "key", "entry", "digest", "files", "builder", "mergepkg", "created", "signatures"}


def is_file_name(name: object) -> bool:
    """A file of an artifact: one plain name, never a path, a temp or the local manifest."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and name != MANIFEST
    )


def is_artifact_file(name: str) -> bool:
    """A name a build writes into an artifact (io/folder.ARTIFACT_FILES, or a shard's): what
    a pull takes. The lock's digest covers the tensors alone, so a remote's writer could
    otherwise add files no build makes (`modeling_*.py`, which transformers runs under
    `trust_remote_code`) under a record of its own with matching sha256s."""
    return name in ARTIFACT_FILES or SHARD_FILE.fullmatch(name) is not None


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Signature:
    key_id: str  # the signing key's name, as in `name:base64` (Nix's trusted-public-keys)
    sig: str  # base64 ed25519 signature over `Record.unsigned_bytes()`


@dataclass(frozen=True)
class Record:
    key: str
    entry: Mapping[str, Any]  # the step's lock entry (resolve/keys.py); its sha256 is the key
    digest: str  # sha256:... over tensors (io/digest.py)
    files: tuple[FileEntry, ...]
    builder: str  # user@host that pushed it
    mergepkg: str  # the pusher's mergepkg version
    created: str  # UTC, ISO 8601
    signatures: tuple[Signature, ...] = field(default=())

    @property
    def variant(self) -> str:
        """16 hex digits over the file list: the folder the files live in under the key."""
        return sha256_hex(canonical_json([[f.name, f.size, f.sha256] for f in self.files]))[:16]

    @property
    def folder(self) -> str:
        """Where the files are, relative to the remote's root."""
        return f"artifacts/{self.key}/{self.variant}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def _doc(self, signed: bool) -> dict:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "key": self.key,
            "entry": self.entry,
            "digest": self.digest,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            "builder": self.builder,
            "mergepkg": self.mergepkg,
            "created": self.created,
        }
        if signed:
            doc["signatures"] = [{"key": s.key_id, "sig": s.sig} for s in self.signatures]
        return doc

    def unsigned_bytes(self) -> bytes:
        """The canonical bytes a signature is over: everything but the signatures."""
        return canonical_json(self._doc(signed=False))

    def to_bytes(self) -> bytes:
        """The record file's bytes (canonical JSON)."""
        return canonical_json(self._doc(signed=True))

    def with_signature(self, sig: Signature) -> Record:
        kept = tuple(s for s in self.signatures if s.key_id != sig.key_id)
        return replace(self, signatures=(*kept, sig))


def parse_record(data: bytes, *, where: str, key: str) -> Record:
    """A record read from `where` (the remote) for `key`, every field checked; a
    malformed record is a `RemoteError` naming the remote, the record and the field."""
    file = f"{where.rstrip('/')}/records/{key}.json"

    def bad(message: str, at: str | None = None) -> RemoteError:
        return RemoteError(message, file=file, key=at, hint="push the artifact again, or remove the record")

    if len(data) > MAX_RECORD_BYTES:
        raise bad(f"the record is {len(data)} bytes, more than a record can be")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise bad("expected a JSON object")
    if doc.get("format") != FORMAT:
        raise bad(f"unknown record format {doc.get('format')!r} (this mergepkg reads {FORMAT})", "format")
    if unknown := sorted(set(doc) - _FIELDS):
        raise bad(f"unknown fields: {', '.join(unknown)}")

    def text(name: str, pattern: re.Pattern | None = None) -> str:
        value = doc.get(name)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise bad(f"expected {'a string' if pattern is None else pattern.pattern}, got {value!r:.80}", name)
        return value

    if text("key") != key or not is_key(key):
        raise bad(f"the record is for key {doc['key']!r:.80}, not {key!r}", "key")
    entry = doc.get("entry")
    if not isinstance(entry, dict) or sha256_hex(canonical_json(entry)) != key:
        raise bad("the lock entry does not hash to the key", "entry")
    files_doc = doc.get("files")
    if not isinstance(files_doc, list) or not files_doc:
        raise bad("expected a non-empty list of files", "files")
    files = []
    for i, f in enumerate(files_doc):
        if not isinstance(f, dict) or set(f) != {"name", "size", "sha256"}:
            raise bad("expected {name, size, sha256}", f"files[{i}]")
        if not is_file_name(f["name"]):
            raise bad(f"not a plain file name: {f['name']!r:.80}", f"files[{i}].name")
        if type(f["size"]) is not int or f["size"] < 0:
            raise bad(f"expected a size in bytes, got {f['size']!r:.80}", f"files[{i}].size")
        if not isinstance(f["sha256"], str) or not _SHA256.fullmatch(f["sha256"]):
            raise bad(f"expected 64 hex digits, got {f['sha256']!r:.80}", f"files[{i}].sha256")
        files.append(FileEntry(f["name"], f["size"], f["sha256"]))
    if len({f.name for f in files}) != len(files):
        raise bad("a file is listed twice", "files")
    sigs_doc = doc.get("signatures", [])
    if not isinstance(sigs_doc, list) or not all(
        isinstance(s, dict) and set(s) == {"key", "sig"} and all(isinstance(v, str) for v in s.values())
        for s in sigs_doc
    ):
        raise bad("expected a list of {key, sig} strings", "signatures")
    return Record(
        key=key,
        entry=entry,
        digest=text("digest", _DIGEST),
        files=tuple(files),
        builder=text("builder"),
        mergepkg=text("mergepkg"),
        created=text("created"),
        signatures=tuple(Signature(s["key"], s["sig"]) for s in sigs_doc),
    )
