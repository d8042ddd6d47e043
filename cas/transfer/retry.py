"""Retries of an HTTP download: which failures are worth another attempt (a body slower than
``MIN_RATE`` is one), how long to wait, how many attempts are left, and how a failure reads in
one line.

Failures before the body (connection errors, timeouts, 408/429/5xx) go through urllib3's
``Retry`` (``PolicyRetry`` here); errors while streaming the body are not retried by urllib3
(urllib3 #2751), so the downloader (transfer/http.py) has its own resume loop. Both draw on one
``Budget``: ``retries`` further attempts. An untrusted TLS certificate is permanent and never
retried, nor are 400, 401, 403, 404 and 410.
"""

from __future__ import annotations

import contextlib
import random
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from urllib3.exceptions import InvalidHeader, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from cas.errors import DownloadError
from cas.logs import log
from cas.transfer.request import Expected

E = TypeVar("E", bound=BaseException)

#: Statuses worth another attempt. 400, 401, 403, 404 and 410 are permanent and never retried.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: The slowest a body may arrive, in bytes per second, averaged over each ``download_timeout``:
#: slower is a stall (a 1 byte/s trickle would otherwise never time out, as each read succeeds).
MIN_RATE = 1024


@dataclass
class Budget:
    """Retries shared by urllib3's request retries and the body resume loop."""

    retries: int
    used: int = 0
    status: int | None = None
    ranges: bool = True  #: whether parallel ranges may be tried (False once refused)

    @property
    def remaining(self) -> int:
        return max(self.retries - self.used, 0)

    @property
    def attempts(self) -> int:
        return self.used + 1

    def exhausted(self, url: str, why: BaseException) -> DownloadError:
        """The error for a download whose retries are spent."""
        return DownloadError(
            f"download of {url} failed after {self.attempts} attempts: {why}",
            url=url, status=self.status, attempts=self.attempts,
        )  # fmt: skip


def status_error(url: str, response: BaseHTTPResponse, budget: Budget) -> DownloadError:
    """The error for a response whose status ends the download (after any retries)."""
    status = response.status
    return DownloadError(
        f"{url}: HTTP {status} {response.reason or ''}".rstrip()
        + (" (not retried)" if status not in RETRY_STATUSES else "")
        + (f" after {budget.attempts} attempts" if budget.attempts > 1 else ""),
        url=url,
        status=status,
        attempts=budget.attempts,
    )


class Interrupted(Exception):
    """The body stopped early: worth resuming."""


class Unchanged(Exception):
    """A conditional request was answered 304 Not Modified: the stored content is current."""


class Restart(Exception):
    """The server's answer cannot continue the partial: start again from zero at once."""


class TooLarge(DownloadError):
    """A download without an expected size outgrew the cache: not retried, nothing kept."""


def check_bound(size: int | None, expected: Expected, max_size: int | None, url: str,
                budget: Budget) -> None:
    """Refuse a download without an expected size that outgrows the cache (``max_size``):
    a server that never stops sending must not fill the disk."""
    if expected.size is not None or max_size is None or size is None:
        return
    if size > max_size:
        raise TooLarge(
            f"{url} is larger than the cache's max_cache_size ({max_size} bytes);"
            " not downloaded (give its expected size, or raise max_cache_size)",
            url=url,
            attempts=budget.attempts,
        )


class Pace:
    """The minimum rate of a body: each ``window`` seconds must bring ``MIN_RATE`` bytes a
    second on average. Checked as chunks arrive; a read that brings nothing at all times out
    by itself, so a trickle fails within about two windows however its bytes are spaced."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.start = time.monotonic()
        self.bytes = 0

    def advance(self, amount: int) -> None:
        """Count ``amount`` bytes received; raise Interrupted when a window was too slow."""
        self.bytes += amount
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.bytes < MIN_RATE * elapsed:
            raise Interrupted(
                f"too slow: {self.bytes} bytes in {elapsed:.1f}s, under {MIN_RATE} bytes/s"
            )
        self.start, self.bytes = time.monotonic(), 0


class Refused(MaxRetryError):
    """A permanent error (an untrusted TLS certificate) that must not be retried."""

    retried: int = 0


def backoff(retry: int, factor: float, ceiling: float) -> float:
    """Seconds before retry number ``retry`` (1-based): exponential with up to ``factor`` jitter."""
    return float(min(ceiling, factor * 2.0 ** (retry - 1) + random.random() * factor))


class PolicyRetry(Retry):
    """urllib3's Retry with cas's policy: log each retry, refuse bad certificates, own backoff."""

    label: str = ""  #: the URL, for messages (urllib3 passes only the path)
    before: int = 0  #: retries the download had used before this request

    def new(self, **kw: Any) -> Self:
        fresh = super().new(**kw)
        fresh.label, fresh.before = self.label, self.before
        return fresh

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        # urllib3 retries TLS certificate failures like transient ones; they are permanent.
        if error is not None and _find(error, ssl.SSLCertVerificationError) is not None:
            refused = Refused(_pool, url or self.label, error)
            refused.retried = len(self.history)
            raise refused from error
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        # urllib3 waits 0s before the first retry; a rate-limited server deserves a pause too.
        return backoff(max(len(self.history), 1), self.backoff_factor, self.backoff_max)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        after = None
        if response is not None and self.respect_retry_after_header:
            with contextlib.suppress(InvalidHeader):  # a garbled Retry-After: plain backoff
                after = self.get_retry_after(response)  # capped at retry_after_max
        delay = after if after else self.get_backoff_time()
        last = self.history[-1] if self.history else None
        if last is not None and last.error is not None:
            reason = describe(last.error)
        elif last is not None:
            reason = f"HTTP {last.status}" + (f", Retry-After {after:g}s" if after else "")
        else:
            reason = "unknown"
        log.warning(
            "retrying %s after %s in %.2fs (retry %d)",
            self.label, reason, delay, self.before + len(self.history),
        )  # fmt: skip
        if delay > 0:
            time.sleep(delay)


def _find(error: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``error``'s causes, contexts and arguments."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        if isinstance(item, kind):
            return item
        seen.add(id(item))
        pending.extend([item.__cause__, item.__context__, *item.args])
    return None


def describe(error: BaseException | None) -> str:
    """A one-line reason for a network error, without urllib3's object reprs."""
    if error is None:
        return "unknown error"
    certificate = _find(error, ssl.SSLCertVerificationError)
    if certificate is not None:
        return f"certificate verify failed: {certificate.verify_message or certificate}"
    while isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    # urllib3 puts its message first and the wrapped exception after it: keep the message.
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    inner = error.args[1] if len(error.args) > 1 else None
    if isinstance(inner, BaseException) and str(inner) and str(inner) not in text:
        text = f"{text.rstrip('.')}: {inner}"  # ("Connection aborted.", why): say why
    text = re.sub(r"<urllib3\.[^>]*>:?\s*", "", " ".join(text.split()))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
