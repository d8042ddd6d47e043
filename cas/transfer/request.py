"""What a transfer is asked for and what it hands back: light types that other layers import.

The manifest, the pytest plugin and the CLI's quick commands check URLs and name these types
without paying for an HTTP client: this module imports nothing beyond the standard library and
``cas.errors`` (the staged file's type is named for type checkers only).
"""

from __future__ import annotations

from collections.abc import Callable
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

    def upstream(self) -> dict[str, str]:
        """The expected upstream checksums, algorithm -> lowercase hex (``refs.CHECKSUMS``
        order: the strongest first)."""
        given = {"sha256": self.sha256, "sha1": self.sha1, "md5": self.md5}
        return {key: value for key in CHECKSUMS if (value := given[key]) is not None}


@dataclass
class Download:
    """A finished, verified transfer: its staged file and what it took."""

    staged: Staged
    upstream: dict[str, str]  #: upstream checksums computed (those that were expected)
    attempts: int  #: requests that counted as tries (1 + retries used)
    transferred: int  #: body bytes received over the network
    resumed: int  #: bytes reused from an earlier partial instead of downloaded again

    @property
    def sha256(self) -> str | None:
        return self.upstream.get("sha256")
