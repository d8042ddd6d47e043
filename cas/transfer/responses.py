"""HTTP responses as the downloader reads them: whole header blocks only, and what the headers
say about a body (its range, its validator, its length) and about a redirect.

A header block cut by the end of the connection is an error, never a response
(``_WholeHeaders``); the header block as a whole is bounded by one deadline. Whether a body is
complete is decided by the downloader (transfer/http.py): at its declared length, or at its last
chunk; one with neither ends at a clean close, and not right after the headers
(docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

from cas.errors import DownloadError, IntegrityError
from cas.logs import log
from cas.transfer.request import SCHEMES, Expected
from cas.transfer.retry import Budget, Restart
from cas.urls import redact

if TYPE_CHECKING:
    from cas.transfer.partial import Partial


def pool_manager(ca_certs: str | None, connections: int = 8) -> urllib3.PoolManager:
    """A PoolManager whose connections read whole header blocks only (``_WholeHeaders``),
    keeping up to ``connections`` (at least 8) alive per origin."""
    pool = urllib3.PoolManager(num_pools=16, maxsize=max(8, connections),
                               cert_reqs="CERT_REQUIRED",
                               ca_certs=ca_certs)  # fmt: skip
    pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return pool


class _CutHeaders(http.client.HTTPException):
    """The connection ended inside the response headers (no blank line closed them)."""


class _HeaderReader:
    """A response's socket file, read line by line for the status line and headers, which
    remembers the last line (so that the end of the header block can be told from the end of
    the connection) and bounds the whole header block by one deadline: each receive waits at
    most the time left, so a server trickling its headers a byte a second cannot make every
    read succeed for ever."""

    def __init__(self, raw: Any, sock: socket.socket) -> None:
        self.raw = raw
        self.sock = sock
        self.last = b""
        self.timeout = sock.gettimeout()  # the read timeout urllib3 set: download_timeout
        self.deadline = time.monotonic() + self.timeout if self.timeout else None

    def readline(self, limit: int = -1) -> bytes:
        line = bytearray()
        while limit < 0 or len(line) < limit:
            self._shorten()
            data = self.raw.peek(1)  # what is buffered, else at most one receive
            if not data:
                break  # the end of the connection
            want = len(data) if limit < 0 else min(len(data), limit - len(line))
            end = data.find(b"\n", 0, want)
            line += self.raw.read(end + 1 if end >= 0 else want)
            if end >= 0:
                break
        self.last = bytes(line)
        return self.last

    def _shorten(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the response headers took more than {self.timeout:g}s")
        self.sock.settimeout(min(left, self.timeout or left))

    def restore(self) -> None:
        """Give the socket back its own read timeout, for the body."""
        self.sock.settimeout(self.timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _WholeHeaders(http.client.HTTPResponse):
    """http.client's response, except that a header block cut by the end of the connection is
    an error, never a response: http.client takes EOF for the blank line that ends the headers
    (so a server dying after "HTTP/1.1 200 OK" gave an empty body that was stored as content).
    The header block also gets one deadline (``_HeaderReader``). urllib3 turns either error into
    a connection error or a read timeout, retried like any other."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self._socket = sock

    def begin(self) -> None:
        if self.headers is not None:
            return
        reader = self.fp = _HeaderReader(self.fp, self._socket)
        try:
            super().begin()
        finally:
            if self.fp is reader:
                self.fp = reader.raw  # the body is read from the socket file itself
            with contextlib.suppress(OSError):
                reader.restore()
        if reader.last not in (b"\r\n", b"\n"):
            self._close_conn()
            raise _CutHeaders("the connection closed inside the response headers")


class _Connection(HTTPConnection):
    response_class = _WholeHeaders


class _TLSConnection(HTTPSConnection):
    response_class = _WholeHeaders


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


# -- what the headers say --------------------------------------------------------------------------

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*", re.IGNORECASE)


def content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header; None where absent or unknown."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None, None, None

    def number(text: str | None) -> int | None:
        return int(text) if text and text != "*" else None

    first, last, total = match.groups()
    return number(first), number(last), number(total)


def validator(response: BaseHTTPResponse) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may carry (a weak ETag never matches)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def encoding(response: BaseHTTPResponse) -> str:
    return str(response.headers.get("Content-Encoding", "identity")).lower()


def start_from_zero(response: BaseHTTPResponse, part: Partial) -> None:
    """Give ``part`` the validator, length and encoding of a 200 that sends the whole body."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    part.begin(validator(response), encoding(response), total)


def check_continuation(response: BaseHTTPResponse, part: Partial) -> None:
    """Accept a 206 only if it continues ``part`` exactly; else raise Restart (from zero)."""
    first, _, total = content_range(response.headers.get("Content-Range", ""))
    if first != part.size:
        raise Restart(f"asked for bytes from {part.size}, got a 206 starting at {first}")
    fresh = validator(response)
    if fresh is not None and fresh != part.validator:
        raise Restart(f"validator changed from {part.validator} to {fresh}")
    if encoding(response) != part.encoding:
        raise Restart("the Content-Encoding changed")
    if total is not None:
        if part.total is not None and total != part.total:
            raise Restart(f"length changed from {part.total} to {total}")
        part.total = total
    part.resumed_from = part.size
    part.saved += part.size


def undeclared(response: BaseHTTPResponse, part: Partial) -> bool:
    """Whether a 200's body has neither a Content-Length nor chunks: it ends where the
    connection closes (legitimate, as in HTTP/1.0, but its completeness cannot be checked)."""
    return response.status == 200 and part.total is None and not response.chunked


def check_size(part: Partial, expected: Expected, url: str) -> None:
    """Refuse a body whose declared length is not the expected size, before reading it."""
    if expected.size is not None and part.total is not None and part.total != expected.size:
        raise IntegrityError(
            f"{url} is {part.total} bytes long, expected {expected.size}",
            expected=expected.size,
            found=part.total,
        )


# -- redirects -------------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """(scheme, host, port) of ``url``, or None when its port is not a number."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None


def for_origin_of(target: str, current: str, headers: dict[str, str],
                  private: Mapping[str, str]) -> dict[str, str]:  # fmt: skip
    """The headers for a redirect from ``current`` to ``target``: credentials and the extra
    headers (``private``) go to their own origin only (scheme, host and port), as curl and
    requests do with Authorization (a signed CDN URL would even refuse them)."""
    if _origin(target) is not None and _origin(target) == _origin(current):
        return headers
    dropped = {key.lower() for key in private} | {"authorization"}
    return {key: value for key, value in headers.items() if key.lower() not in dropped}


def downgrade(current: str, target: str) -> bool:
    """Whether a redirect leaves https for plain http."""
    return urlsplit(current).scheme.lower() == "https" and urlsplit(target).scheme.lower() == "http"


def follow_redirects(
    request: Callable[[str, dict[str, str], Budget], BaseHTTPResponse], url: str,
    headers: dict[str, str], budget: Budget, private: Mapping[str, str], most: int,
) -> BaseHTTPResponse:  # fmt: skip
    """``request`` ``url``, following at most ``most`` http(s) redirects here, so that other
    schemes get a clear error (urllib3 would surface a redirect to file:// as "No host
    specified"), https is never left for plain http, and the ``private`` headers go to the
    URL's own origin only (``for_origin_of``). Messages name targets without credentials."""
    current = url
    for _ in range(most + 1):
        response = request(current, headers, budget)
        location = response.get_redirect_location()
        if not location:
            return response
        response.drain_conn()
        response.release_conn()
        target = urljoin(current, location)
        if urlsplit(target).scheme.lower() not in SCHEMES:
            raise DownloadError(
                f"{url} redirects to {redact(target)}; only http and https are followed",
                url=url, status=response.status, attempts=budget.attempts,
            )  # fmt: skip
        if downgrade(current, target):
            raise DownloadError(
                f"{url} redirects from https to plain http ({redact(target)}); not followed,"
                " since the content would come unprotected: use an http URL to allow it",
                url=url, status=response.status, attempts=budget.attempts,
            )  # fmt: skip
        log.debug("%s redirects to %s", current, redact(target))
        headers = for_origin_of(target, current, headers, private)
        current = target
    raise DownloadError(
        f"{url}: more than {most} redirects (a redirect loop?)",
        url=url, status=budget.status, attempts=budget.attempts,
    )  # fmt: skip
