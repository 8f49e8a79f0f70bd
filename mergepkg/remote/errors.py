"""The errors of remotes: a remote is a store, so each is a `StoreError`, located at the
remote (its URL, and the record or file) with a hint where one helps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

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


def remote_errors() -> tuple[type[BaseException], ...]:
    """What a backend raises when it cannot reach or use a remote (unreachable, denied, no
    such bucket, no credentials): an OSError, or the S3 client's own errors, which are not
    OSErrors (aiobotocore's subclass botocore's). One list for `reaching` and for the
    cluster's retries (`cluster/connect.retryable`); botocore is there wherever s3fs is."""
    kinds: tuple[type[BaseException], ...] = (OSError,)
    with suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        kinds += (BotoCoreError, ClientError)
    return kinds


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """A backend's failure to reach or use the remote at `url` (`remote_errors`) as a
    `RemoteError` naming it. Any other error passes as it is."""
    try:
        yield
    except remote_errors() as e:
        raise RemoteError(f"cannot reach the remote: {e}", file=url) from None
