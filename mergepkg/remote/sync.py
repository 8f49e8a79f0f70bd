"""Remotes and the local store together: open a remote, push a stored artifact,
substitute a step from a remote (pull, check, commit under the key's lock)."""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from mergepkg._version import __version__
from mergepkg.remote.config import check_backend, configured_url, folder_of, normalize_url, trusted_keys
from mergepkg.remote.errors import EXTRA_HINT, NotOnRemote, Refused, RemoteConfigError, RemoteError
from mergepkg.remote.hub import HubRemote
from mergepkg.remote.record import FileEntry, Record, is_artifact_file, is_file_name
from mergepkg.remote.sign import SigningKey, sign_record, trusted_signer
from mergepkg.remote.store import PushReport, Remote
from mergepkg.remote.transfer import ProgressFn
from mergepkg.settings import Settings
from mergepkg.store.hashcache import HashCache, sha256_file
from mergepkg.store.local import MANIFEST, Artifact, Store


def open_remote(url: str, *, threads: int = 4, **storage_options: Any) -> Remote:
    """The remote at `url` (`file://`, `s3://`, `hf://`, `memory://`); `storage_options`
    go to the fsspec filesystem (an S3 endpoint, say). Nothing is read yet."""
    url = normalize_url(url)
    check_backend(url)
    scheme, _, path = url.partition("://")
    if scheme == "hf":
        from huggingface_hub import HfApi, HfFileSystem

        return HubRemote(HfApi(), HfFileSystem(**storage_options), path, url=url, threads=threads)
    import fsspec

    try:
        if scheme == "file":  # the decoded folder: fsspec would take `%25` literally
            fs, root = fsspec.filesystem("file", **storage_options), str(folder_of(url))
        else:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        raise RemoteConfigError(f"cannot open {url}: {e}", hint=EXTRA_HINT) from None
    return Remote(fs, root, url=url, threads=threads)


def open_configured(settings: Settings, name: str, **storage_options: Any) -> Remote:
    """The configured remote `name` (remotes.toml)."""
    return open_remote(configured_url(settings, name), **storage_options)


def whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def new_record(key: str, entry: Mapping[str, Any], digest: str, files: Iterable[FileEntry]) -> Record:
    """A record of this machine's, now: `files` in name order (so two pushers of the same
    files name the same variant), pushed by `whoami()` with this mergepkg."""
    return Record(
        key=key,
        entry=entry,
        digest=digest,
        files=tuple(sorted(files, key=lambda f: f.name)),
        builder=whoami(),
        mergepkg=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def record_for(artifact: Artifact, *, hashes: HashCache | None = None, signing_key: SigningKey | None = None) -> Record:
    """The record of a stored artifact: its files (without the local manifest) hashed,
    through `hashes` where given (a file hashed before is not read again), and signed
    with `signing_key` where given. A file no build writes is refused: no pull takes it."""
    files = []
    for p in sorted(artifact.folder.iterdir()):
        if p.name == MANIFEST:
            continue
        if not is_file_name(p.name) or not p.is_file():
            raise RemoteConfigError(f"cannot push {p.name!r}: not a plain file", file=artifact.folder)
        if not is_artifact_file(p.name):  # every pull would refuse it (store.check_names)
            raise RemoteConfigError(
                f"cannot push {p.name!r}: no build writes such a file into an artifact",
                file=artifact.folder,
                hint="it was added to the stored artifact after its build (or pulled by an older mergepkg):"
                " build the step again in a home without it",
            )
        size, sha = hashes.sha256(p) if hashes is not None else (p.stat().st_size, sha256_file(p))
        files.append(FileEntry(p.name, size, sha))
    record = new_record(artifact.key, artifact.manifest["entry"], artifact.digest, files)
    return sign_record(record, signing_key) if signing_key is not None else record


def push_artifact(
    remote: Remote,
    artifact: Artifact,
    *,
    hashes: HashCache | None = None,
    signing_key: SigningKey | None = None,
    progress: ProgressFn | None = None,
    rehash: bool = False,
) -> PushReport:
    """Push a stored artifact (see `Remote.push`; `rehash` reads the remote's files back
    and replaces what differs). With `signing_key`, an artifact the remote has already
    gets the key's signature added to its record (`sign_artifact`)."""
    record = record_for(artifact, hashes=hashes, signing_key=signing_key)
    report = remote.push(artifact.folder, record, progress=progress, rehash=rehash)
    if report.present and signing_key is not None:
        report = replace(report, signed=sign_artifact(remote, artifact, signing_key, hashes=hashes) is not None)
    return report


def signed_by(record: Record, key: SigningKey) -> bool:
    """Whether `record` carries a signature by `key` that verifies."""
    try:
        return trusted_signer(record, [key.public]) is not None
    except Refused:  # a signature by that name that does not verify (an older key): not signed
        return False


def sign_artifact(
    remote: Remote, artifact: Artifact, key: SigningKey, *, hashes: HashCache | None = None
) -> Record | None:
    """Add `key`'s signature to the remote's record of a stored artifact, keeping the
    others; None when it is signed by `key` already. The record must say what the local
    artifact is (digest and every file's name, size and sha256), so a signer vouches only
    for bytes it holds; only the record is rewritten (`Remote.add_signatures`)."""
    current = remote.record(artifact.key)
    where = f"{remote.url}/records/{artifact.key}.json"
    if current is None:
        raise NotOnRemote(f"no artifact for key {artifact.key}", file=remote.url, hint="push it first")
    if signed_by(current, key):
        return None
    local = record_for(artifact, hashes=hashes)
    if (current.digest, current.files) != (local.digest, local.files):
        raise RemoteError(
            "the remote's record lists other files than the stored artifact (another build of the step)",
            file=where,
            hint="sign from the home that pushed it, or pull it here first",
        )
    return remote.add_signatures(sign_record(current, key))


def substitute(
    remote: Remote,
    store: Store,
    key: str,
    *,
    expected_digest: str | None = None,
    trusted: Iterable[str] = (),
    progress: ProgressFn | None = None,
) -> Artifact:
    """Put `key` into the local store from `remote`, checked (see `Remote.pull`), under
    the key's lock as a build would, holding the store as a build does (`cache gc` waits
    for it); an intact artifact already there is returned as is."""
    with store.in_use(), store.lock(key):
        found = store.get(key)
        if found is not None and found.intact():
            return found
        started = time.monotonic()
        folder = store.new_folder(key)
        pulled = remote.pull(key, folder, expected_digest=expected_digest, trusted=trusted, progress=progress)
        return store.commit(key, folder, dict(pulled.record.entry), pulled.tensors, seconds=time.monotonic() - started)


def substitute_configured(
    settings: Settings, store: Store, name: str, key: str, *, expected_digest: str | None
) -> Artifact:
    """`substitute` from the configured remote `name`, trusting the configured keys."""
    remote = open_configured(settings, name)
    return substitute(remote, store, key, expected_digest=expected_digest, trusted=trusted_keys(settings))
