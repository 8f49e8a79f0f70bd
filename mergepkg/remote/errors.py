"""The errors of remotes: a remote is a store, so each is a `StoreError`, located at the
remote (its URL, and the record or file) with a hint where one helps."""

from __future__ import annotations

from mergepkg.errors import StoreError

EXTRA_HINT = "install the remote extra: pip install 'mergepkg[remote]'"


class RemoteError(StoreError):
    """A remote cannot answer: unknown, unreachable, or holding a malformed record."""


class RemoteConfigError(RemoteError, ValueError):
    """A remote's name, URL or a trusted key cannot be configured as given."""


class NotOnRemote(RemoteError):
    """The remote has no artifact (no readable record) for the key asked for."""


class Refused(RemoteError, ValueError):
    """A pulled artifact failed a check (digest, file size or sha256, signature); nothing
    of it entered the local store."""
