"""The errors of remotes: a remote is a store, so each is a `StoreError`, located at the
remote (its URL, and the record or file) with a hint where one helps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """A backend's failure to reach or use the remote at `url` (unreachable, denied, no such
    bucket, no credentials) as a `RemoteError` naming it: an OS error, or the S3 client's
    own errors (botocore's are not OSErrors). Any other error passes as it is."""
    try:
        yield
    except Exception as e:
        if not (isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("botocore", "aiobotocore")):
            raise
        raise RemoteError(f"cannot reach the remote: {e}", file=url) from None
