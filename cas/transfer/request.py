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
    """What the downloaded content must be: any of its BLAKE3, SHA-256 and size."""

    blake3: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass
class Download:
    """A finished, verified transfer: its staged file and what it took."""

    staged: Staged
    sha256: str | None  #: computed when one was expected
    attempts: int  #: requests that counted as tries (1 + retries used)
    transferred: int  #: body bytes received over the network
    resumed: int  #: bytes reused from an earlier partial instead of downloaded again
