"""What a transfer is asked for and what it hands back: light types that other layers import.

The manifest, the pytest plugin and the CLI's quick commands check URLs and name these types
without paying for an HTTP client: this module imports nothing beyond the standard library and
``cas.errors`` (the staged file's type is named for type checkers only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cas.errors import UsageError
from cas.refs import CHECKSUMS

if TYPE_CHECKING:
    from cas.storage.staging import Staged

#: Called with (bytes done, total bytes or None) as a transfer advances; done may go back to 0.
Progress = Callable[[int, int | None], None]

#: The URL schemes an origin may have, and a redirect may lead to.
SCHEMES = ("http", "https")


def check_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL with a host, else raise UsageError."""
    if not isinstance(url, str):
        raise UsageError(f"a URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise UsageError(f"{url!r} is not an http or https URL")
    return url


@dataclass(frozen=True)
class Expected:
    """What the downloaded content must be: any of its BLAKE3, upstream checksums
    (SHA-256, SHA-1, MD5) and size."""

    blake3: str | None = None
    sha256: str | None = None
    size: int | None = None
    sha1: str | None = None
    md5: str | None = None
    #: The BLAKE3 is the content a name fetched without a digest holds, not the caller's: the
    #: name keeps following its URL (a refresh may move it).
    held: bool = False

    def upstream(self) -> dict[str, str]:
        """The expected upstream checksums, algorithm -> lowercase hex (``refs.CHECKSUMS``
        order: the strongest first)."""
        given = {"sha256": self.sha256, "sha1": self.sha1, "md5": self.md5}
        return {key: value for key in CHECKSUMS if (value := given[key]) is not None}

    @property
    def pinned(self) -> bool:
        """Whether the caller's expected digest fixes the content (a size alone, or the
        content a name already holds, does not)."""
        return (self.blake3 is not None and not self.held) or bool(self.upstream())


@dataclass(frozen=True)
class Validators:
    """What a server said identifies the content it sent (ETag, Last-Modified, as sent): a
    later request carrying them is answered 304 Not Modified while that content is current."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validators:
        return cls(headers.get("ETag") or None, headers.get("Last-Modified") or None)

    def conditions(self) -> dict[str, str]:
        """The headers of a conditional GET (If-None-Match wins where a server has both)."""
        found = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {key: value for key, value in found.items() if value}

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


@dataclass
class Download:
    """A finished, verified transfer: its staged file and what it took."""

    staged: Staged
    upstream: dict[str, str]  #: upstream checksums computed (those that were expected)
    attempts: int  #: requests that counted as tries (1 + retries used)
    transferred: int  #: body bytes received over the network
    resumed: int  #: bytes reused from an earlier partial instead of downloaded again
    validators: Validators = Validators()  #: of the response that sent the content

    @property
    def sha256(self) -> str | None:
        return self.upstream.get("sha256")
