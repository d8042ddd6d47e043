"""The errors cas raises, one small hierarchy.

    CasError                      exit status 1: anything cas reports
     ├── UsageError (ValueError)  2: bad input, such as an invalid name or a malformed digest
     ├── NotFound (KeyError)      3: no such name, digest or source file
     ├── IntegrityError           4: content does not match its expected digest or size, or damage
     ├── InUse                    5: a leased blob was asked to go
     ├── ConfigError (UsageError) 2: a bad setting, naming where it came from
     ├── CatalogError             1: catalog.db cannot be used (not SQLite, newer schema, unsafe fs)
     ├── StoreError               1: the store's folders cannot be used (not a folder, not writable)
     └── DownloadError            1: a transfer failed; carries url, status and attempts
          └── RemoteError         1: the remote tier (S3) failed; says whether it was permanent

Foreign exceptions (OSError, sqlite3, urllib3 and botocore errors) are translated where they
first reach cas code, with the original chained as ``__cause__``. Every message is one line that
names the problem.
"""

from __future__ import annotations

import errno


class CasError(Exception):
    """Base of every error cas raises on purpose."""

    exit_status = 1


class UsageError(CasError, ValueError):
    """The caller gave a value cas cannot accept."""

    exit_status = 2


class NotFound(CasError, KeyError):
    """A name, digest, or source that does not exist."""

    exit_status = 3

    def __str__(self) -> str:
        # KeyError quotes its argument; a message should read as a sentence.
        return str(self.args[0]) if self.args else ""


class IntegrityError(CasError):
    """Content does not match the digest or size it should have."""

    exit_status = 4

    def __init__(
        self,
        message: str,
        *,
        expected: str | int | None = None,
        found: str | int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found
        self.path = path


class InUse(CasError):
    """The blob is leased by a live holder."""

    exit_status = 5


class ConfigError(UsageError):
    """A setting is unknown or has a bad value; the message names its source, key and value."""


class CatalogError(CasError):
    """The catalog cannot be opened or used safely."""


class StoreError(CasError):
    """The store's root or folders cannot be used."""


class DownloadError(CasError):
    """A download failed after its retries."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class RemoteError(DownloadError):
    """The remote tier could not be used: unreachable, refused, or misconfigured.

    ``permanent`` is True for what no retry can fix (403, NoSuchBucket, missing credentials);
    transient errors (connection failures, throttling, 5xx) were retried before this was raised.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        attempts: int = 0,
        permanent: bool = False,
    ) -> None:
        super().__init__(message, url=url, status=status, attempts=attempts)
        self.permanent = permanent


def os_error(error: OSError, doing: str) -> StoreError:
    """The one translation of an OSError met on this machine's disk into a one-line error:
    ``doing`` says what failed ("cannot store x"), the rest why. Every layer that touches the
    disk raises through this, so the wording is the same wherever a disk fills up.
    """
    if error.errno == errno.ENOSPC:
        return StoreError(f"{doing}: no space left on the device; nothing was changed")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" ({error.filename})" if error.filename else ""
        return StoreError(f"{doing}: {error.strerror}{where}; nothing was changed")
    return StoreError(f"{doing}: {error.strerror or error}")


def offline_message(what: str) -> str:
    """The one wording of whatever would need the network while the ``offline`` setting is on:
    ``what`` names the fixture or the command ("fixture 'x' (https://...) is not stored")."""
    return f"{what} (cas is offline: no network is used while offline = true)"


def offline_error(what: str) -> NotFound:
    """The error of ``what`` needing the network while cas is offline (``offline_message``)."""
    return NotFound(offline_message(what))
