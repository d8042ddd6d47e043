"""Downloads: one HTTP(S) transfer into a staging file, verified, resumable and single-flight.

Pure mechanism: this module knows nothing of the catalog. ``Downloader.download`` streams a URL
into a private staging file under ``tmp/`` while hashing it (BLAKE3 always, SHA-256 when one is
expected), checks the expected digests and size, and hands back a ``Staged`` file for the store
to publish. Nothing here ever writes under ``blobs/`` (guarantee 1).

Resume. A partial download is ``tmp/dl-<key>-<token>.part`` with a JSON sidecar ``….json``
beside it: URL, validator (strong ETag, else Last-Modified), total length and owner; the token
starts with the owner's staging tag (storage/processes.py says if it is alive). A later attempt, in
this process or another, claims the partial of a provably dead owner (gc and verify remove such
partials instead) by renaming it to its own name (atomic, so one claimant wins), re-hashes the bytes
already there, and asks for the rest with ``Range`` + ``If-Range``. A partial is never appended to
by two writers, even where ``flock`` is ignored (huggingface_hub PR #4306 stored corrupted blobs
from one partial shared by several processes); a live owner's partial is left alone.

Retries. Failures before the body (connection errors, timeouts, 408/429/5xx) go through urllib3's
``Retry``; errors while streaming the body are not retried by urllib3 (urllib3 #2751), so
``download`` has its own resume loop. Both draw on one budget: ``retries`` further attempts.

Complete responses only. A header block cut by the end of the connection is an error, never a
response (``_WholeHeaders``); a body is complete at its declared length, or at its last chunk;
one with neither ends at a clean close, and not right after the headers (docs/architecture.md).

Bounds. ``timeout`` (``download_timeout``) bounds every wait without progress: a read, a body
slower than ``MIN_RATE``, the wait for a stalled single-flight holder; ``max_size``
(``max_cache_size``) bounds a body whose size is not expected.

Single flight. ``single_flight(keys)`` holds an in-process lock plus an ``flock`` on
``tmp/locks/dl-<hash>.lock`` per key (the kernel drops it when its holder dies; the holder
unlinks it when done). It only saves work: correctness never rests on it (guarantee 9), so a
waiter whose holder shows no progress goes on without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import http.client
import json
import logging
import os
import queue
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, InvalidHeader, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from cas.errors import DownloadError, IntegrityError, UsageError
from cas.storage.folder import Folder, open_lock
from cas.storage.hashing import CHUNK_SIZE, WRITE_BEHIND, hasher, start_writeback
from cas.storage.processes import (
    forks,
    staging_tag,
    this_process,
    written_by_dead_process,
    written_by_this_process,
)
from cas.storage.staging import BLOB_MODE, Staged
from cas.transfer import USER_AGENT
from cas.urls import split_credentials

log = logging.getLogger("cas")

E = TypeVar("E", bound=BaseException)

#: Called with (bytes done, total bytes or None) as a transfer advances; done may go back to 0.
Progress = Callable[[int, int | None], None]

#: Statuses worth another attempt. 400, 401, 403, 404 and 410 are permanent and never retried.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SCHEMES = ("http", "https")

#: The slowest a body may arrive, in bytes per second, averaged over each ``download_timeout``:
#: slower is a stall (a 1 byte/s trickle would otherwise never time out, as each read succeeds).
MIN_RATE = 1024


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


# -- the download ------------------------------------------------------------------------------


class Downloader:
    """One store's HTTP client: a urllib3 PoolManager plus the resume and retry policy.

    ``timeout`` bounds each connect and each read of one attempt, the time a body may take to
    bring ``MIN_RATE * timeout`` bytes, and the wait for another downloader of the same thing
    that shows no progress (``single_flight``). ``max_size`` bounds a download that has no
    expected size (the store passes ``max_cache_size``). ``retries`` further attempts
    follow a failed one, with exponential backoff (``backoff_factor * 2**(n-1)`` plus jitter, at
    most ``backoff_max``); ``Retry-After`` on 429/503 is obeyed up to ``retry_after_max``
    seconds (urllib3 would wait up to 6 hours). ``ca_bundle`` replaces the system trust store.
    ``lock=False`` disables the single-flight lock (a test seam: correctness must not depend on
    it).
    """

    def __init__(
        self,
        tmp_dir: Path | Folder,
        locks_dir: Path | Folder,
        *,
        timeout: float = 300.0,
        retries: int = 5,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: int = 120,
        max_redirects: int = 10,
        max_size: int | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        lock: bool = True,
        user_agent: str = USER_AGENT,
    ) -> None:
        # Partials, sidecars and locks are made relative to these folders' descriptors, opened
        # without following links (storage/folder.py): a tmp/ swapped for a symlink is not written.
        # The store hands over its own Folders (which make a deleted folder again).
        self._tmp = tmp_dir if isinstance(tmp_dir, Folder) else Folder(tmp_dir, mode=None)
        self._locks = (locks_dir if isinstance(locks_dir, Folder)
                       else Folder(locks_dir, self._tmp, mode=None))
        self.tmp_dir = self._tmp.path
        self.locks_dir = self._locks.path
        self.retries = retries
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.max_redirects = max_redirects
        self.max_size = max_size
        self.timeout = timeout
        self.lock = lock
        # Sent with every request (urlopen's headers= replaces the pool's, so they are merged).
        # Identity: with gzip, Content-Length is the encoded size and Range offsets are
        # ambiguous; a body is stored exactly as sent (like curl -o) and never decoded.
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._ca_certs = os.fspath(ca_bundle) if ca_bundle is not None else None
        self._forks = forks()
        self._pool = self._new_pool()

    def _new_pool(self) -> urllib3.PoolManager:
        pool = urllib3.PoolManager(
            num_pools=16, maxsize=8, cert_reqs="CERT_REQUIRED", ca_certs=self._ca_certs
        )
        pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}  # whole headers only
        return pool

    def _check_fork(self) -> None:
        # A forked child must not talk over its parent's pooled keep-alive sockets.
        if forks() != self._forks:
            self._pool = self._new_pool()
            self._forks = forks()

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.clear()

    # -- single flight ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def single_flight(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the locks of ``keys`` (a URL, an expected digest), taken in sorted order.

        Threads of this process queue on a threading lock, processes on an ``flock`` that the
        kernel releases when its holder dies, so a killed downloader never blocks the others.
        A holder shows progress by touching its lock files as its body arrives; a waiter that
        sees none for ``timeout`` seconds (a stopped or hung holder) stops waiting and goes on
        without the lock, on its own staging file (guarantee 9). The caller re-checks the store
        after getting the locks.
        """
        if not self.lock:
            yield
            return
        names = sorted({"dl-" + hashlib.sha256(key.encode()).hexdigest()[:32] for key in keys})
        with contextlib.ExitStack() as held:
            handles = []
            for name in names:
                handle = held.enter_context(
                    _flight_lock(self.locks_dir / f"{name}.lock", self.timeout, self._locks)
                )
                if handle is None:
                    break  # a stalled holder: download without waiting for the others either
                handles.append(handle)
            outer = getattr(_HELD, "beat", None)
            _HELD.beat = _Heartbeat(handles, min(1.0, self.timeout / 4))
            try:
                yield
            finally:
                _HELD.beat = outer

    # -- one download ----------------------------------------------------------------------------

    def download(
        self,
        url: str,
        expected: Expected | None = None,
        progress: Progress | None = None,
        received: Callable[[int], None] | None = None,
    ) -> Download:
        """Transfer ``url`` into a verified staging file.

        ``received(n)`` is told the body bytes that came over the network, whatever the
        outcome (for metrics). Raises DownloadError when the transfer fails after its retries
        (the partial stays for a later resume), IntegrityError when the content does not match
        ``expected`` (nothing is kept), UsageError for a URL that is not http(s).
        Credentials in ``url`` (``user:password@``) go only into an Authorization header, to
        its origin; every message and file here names the URL without them (cas/urls.py).
        """
        url, credentials = split_credentials(url)
        check_url(url)
        auth = urllib3.util.make_headers(basic_auth=credentials) if credentials else {}
        self._check_fork()
        expected = expected or Expected()
        budget = _Budget(self.retries)
        part = _Partial.claim(self._tmp, url, expected.sha256 is not None)
        if part is None:
            part = _Partial.create(self._tmp, url, expected.sha256 is not None)
        elif part.size:
            log.info("resuming %s at byte %d of a partial download", url, part.size)
        try:
            return self._transfer(part, url, expected, budget, progress, auth)
        except (IntegrityError, _TooLarge):
            part.discard()  # wrong or unwanted content is never kept, not even for a resume
            raise
        except OSError as error:
            if error.errno == errno.ENOSPC:
                part.discard()  # a partial kept on a full disk would only keep it full
            else:
                part.suspend()
            raise
        except BaseException:
            part.suspend()  # interrupted or out of retries: a later attempt may resume
            raise
        finally:
            if received is not None and part.transferred:
                received(part.transferred)

    def _transfer(
        self,
        part: _Partial,
        url: str,
        expected: Expected,
        budget: _Budget,
        progress: Progress | None,
        auth: dict[str, str],
    ) -> Download:
        restarted = False
        while True:
            try:
                self._attempt(part, url, expected, budget, progress, auth)
            except _Interrupted as error:
                if budget.remaining <= 0:
                    raise budget.exhausted(url, error) from error
                budget.used += 1
                delay = _backoff(budget.used, self.backoff_factor, self.backoff_max)
                how = f"resuming at byte {part.size}" if part.resumable else "restarting"
                log.warning(
                    "download of %s interrupted (%s); %s in %.2fs (retry %d of %d)",
                    url, error, how, delay, budget.used, self.retries,
                )  # fmt: skip
                time.sleep(delay)
                continue
            except _Restart as why:
                part.reset()
                if budget.remaining <= 0:
                    raise budget.exhausted(url, why) from None
                budget.used += 1
                log.warning("download of %s restarts from zero: %s", url, why)
                continue
            try:
                part.verify(url, expected)
            except IntegrityError:
                if part.resumed_from == 0 or restarted or budget.remaining <= 0:
                    raise
                # The partial was stale or damaged (a server that changed content under the
                # same validator): it must not reach blobs/; fetch the whole thing once more.
                log.warning("resumed download of %s does not verify; starting from zero", url)
                restarted = True
                part.reset()
                budget.used += 1
                continue
            staged = part.finish()
            log.debug("downloaded %s: %d bytes in %d attempt(s)", url, staged.size, budget.attempts)
            return Download(
                staged=staged,
                sha256=part.sha256_hex(),
                attempts=budget.attempts,
                transferred=part.transferred,
                resumed=part.saved,
            )

    def _attempt(
        self,
        part: _Partial,
        url: str,
        expected: Expected,
        budget: _Budget,
        progress: Progress | None,
        auth: dict[str, str],
    ) -> None:
        """One request: interpret its status and headers, then stream the body into ``part``."""
        _heartbeat()
        headers: dict[str, str] = dict(auth)
        ranged = part.size > 0 and part.resumable
        if ranged:
            assert part.validator is not None
            headers["Range"] = f"bytes={part.size}-"
            headers["If-Range"] = part.validator
        elif part.size:
            part.reset()
        response = self._open(url, headers, budget)
        try:
            status = response.status
            if status == 200:
                if part.size:
                    # A server may ignore Range or If-Range: the whole body comes again.
                    log.info("%s sent the whole file again; restarting from zero", url)
                    part.reset()
                part.begin(response)
            elif status == 206 and ranged:
                _check_partial_response(response, part)
            elif status == 416 and ranged:
                total = _content_range(response.headers.get("Content-Range", ""))[2]
                if total is not None and total == part.size:
                    return  # the partial was complete already
                raise _Restart(f"416 for a Range from byte {part.size}")
            else:
                raise DownloadError(
                    f"{url}: HTTP {status} {response.reason or ''}".rstrip()
                    + (" (not retried)" if status not in RETRY_STATUSES else "")
                    + (f" after {budget.attempts} attempts" if budget.attempts > 1 else ""),
                    url=url,
                    status=status,
                    attempts=budget.attempts,
                )
            _check_size(part, expected, url)
            self._check_bound(part.total, expected, url, budget)
            if progress is not None:
                progress(part.size, part.total)
            self._stream(response, part, expected, url, progress, budget)
            response.release_conn()
        finally:
            # A response abandoned before its end must not go back to the pool half-read.
            if not response.closed:
                response.close()
            response.release_conn()

    def _stream(
        self,
        response: BaseHTTPResponse,
        part: _Partial,
        expected: Expected,
        url: str,
        progress: Progress | None,
        budget: _Budget,
    ) -> None:
        pace = _Pace(self.timeout)
        start = part.size
        while True:
            try:
                chunk = response.read1(CHUNK_SIZE, decode_content=False)
            except (HTTPError, OSError) as error:
                # ProtocolError, IncompleteRead, ReadTimeoutError: urllib3 retries none of them.
                raise _Interrupted(_describe(error)) from error
            if not chunk:
                break
            if expected.size is not None and part.size + len(chunk) > expected.size:
                raise IntegrityError(
                    f"{url} sends more than the expected {expected.size} bytes",
                    expected=expected.size,
                    found=part.size + len(chunk),
                )
            self._check_bound(part.size + len(chunk), expected, url, budget)
            part.append(chunk)
            _heartbeat()
            pace.advance(len(chunk))
            if progress is not None:
                progress(part.size, part.total)
        if part.total is not None and part.size < part.total:
            raise _Interrupted(f"short body: {part.size} of {part.total} bytes")
        if part.size == start and _undeclared(response, part):
            # No length, no chunks, and the connection closed right after the headers: what a
            # server that dies there looks like. Every server sends an empty file with a length.
            raise _Interrupted("the connection closed after the headers: no body, no length")
        if _undeclared(response, part) and expected == Expected():
            log.warning("%s sent no Content-Length: its end is where the connection closed,"
                        " which cas cannot check; give a size or digest to verify it", url)

    def _check_bound(self, size: int | None, expected: Expected, url: str, budget: _Budget) -> None:
        """Refuse a download without an expected size that outgrows the cache (``max_size``):
        a server that never stops sending must not fill the disk."""
        if expected.size is not None or self.max_size is None or size is None:
            return
        if size > self.max_size:
            raise _TooLarge(
                f"{url} is larger than the cache's max_cache_size ({self.max_size} bytes);"
                " not downloaded (give its expected size, or raise max_cache_size)",
                url=url,
                attempts=budget.attempts,
            )

    def _open(self, url: str, headers: dict[str, str], budget: _Budget) -> BaseHTTPResponse:
        """GET ``url``, following http(s) redirects here so other schemes get a clear error.

        (urllib3 would surface a redirect to file:// as "No host specified".)
        """
        current = url
        for _ in range(self.max_redirects + 1):
            response = self._request(current, headers, budget)
            location = response.get_redirect_location()
            if not location:
                return response
            response.drain_conn()
            response.release_conn()
            target = urljoin(current, location)
            if urlsplit(target).scheme.lower() not in SCHEMES:
                raise DownloadError(
                    f"{url} redirects to {target}; only http and https are followed",
                    url=url,
                    status=response.status,
                    attempts=budget.attempts,
                )
            if _downgrade(current, target):
                raise DownloadError(
                    f"{url} redirects from https to plain http ({target}); not followed, since"
                    " the content would come unprotected: use an http URL to allow it",
                    url=url,
                    status=response.status,
                    attempts=budget.attempts,
                )
            log.debug("%s redirects to %s", current, target)
            headers = _for_origin_of(target, current, headers)
            current = target
        raise DownloadError(
            f"{url}: more than {self.max_redirects} redirects (a redirect loop?)",
            url=url,
            status=budget.status,
            attempts=budget.attempts,
        )

    def _request(self, url: str, headers: dict[str, str], budget: _Budget) -> BaseHTTPResponse:
        retry = _Retry(
            total=budget.remaining,
            redirect=False,
            allowed_methods={"GET"},
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max,
            backoff_jitter=self.backoff_factor,
            raise_on_status=False,  # the last response comes back; its status goes in the error
            respect_retry_after_header=True,
            retry_after_max=self.retry_after_max,
        )
        retry.label, retry.before = url, budget.used
        try:
            response = self._pool.urlopen(
                "GET",
                url,
                headers={**self._headers, **headers},
                retries=retry,
                redirect=False,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout,
            )
        except _Refused as error:
            budget.used += error.retried
            raise DownloadError(
                f"{url}: TLS certificate not trusted ({_describe(error.reason)});"
                " not retried; for a private CA, point SSL_CERT_FILE at its certificate",
                url=url,
                attempts=budget.attempts,
            ) from error
        except MaxRetryError as error:
            budget.used = budget.retries
            raise DownloadError(
                f"download of {url} failed after {budget.attempts} attempts:"
                f" {_describe(error.reason)}",
                url=url,
                status=budget.status,
                attempts=budget.attempts,
            ) from error
        except HTTPError as error:
            raise DownloadError(
                f"{url}: {_describe(error)}", url=url, attempts=budget.attempts
            ) from error
        if isinstance(response.retries, Retry):
            budget.used += len(response.retries.history)
        budget.status = response.status
        return response


# -- retries -------------------------------------------------------------------------------------


@dataclass
class _Budget:
    """Retries shared by urllib3's request retries and the body resume loop."""

    retries: int
    used: int = 0
    status: int | None = None

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


class _Interrupted(Exception):
    """The body stopped early: worth resuming."""


class _Restart(Exception):
    """The server's answer cannot continue the partial: start again from zero at once."""


class _TooLarge(DownloadError):
    """A download without an expected size outgrew the cache: not retried, nothing kept."""


class _Pace:
    """The minimum rate of a body: each ``window`` seconds must bring ``MIN_RATE`` bytes a
    second on average. Checked as chunks arrive; a read that brings nothing at all times out
    by itself, so a trickle fails within about two windows however its bytes are spaced."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.start = time.monotonic()
        self.bytes = 0

    def advance(self, amount: int) -> None:
        """Count ``amount`` bytes received; raise _Interrupted when a window was too slow."""
        self.bytes += amount
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.bytes < MIN_RATE * elapsed:
            raise _Interrupted(
                f"too slow: {self.bytes} bytes in {elapsed:.1f}s, under {MIN_RATE} bytes/s"
            )
        self.start, self.bytes = time.monotonic(), 0


class _Refused(MaxRetryError):
    """A permanent error (an untrusted TLS certificate) that must not be retried."""

    retried: int = 0


def _backoff(retry: int, factor: float, ceiling: float) -> float:
    """Seconds before retry number ``retry`` (1-based): exponential with up to ``factor`` jitter."""
    return float(min(ceiling, factor * 2.0 ** (retry - 1) + random.random() * factor))


class _Retry(Retry):
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
        if error is not None and _is_certificate_error(error):
            refused = _Refused(_pool, url or self.label, error)
            refused.retried = len(self.history)
            raise refused from error
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        # urllib3 waits 0s before the first retry; a rate-limited server deserves a pause too.
        return _backoff(max(len(self.history), 1), self.backoff_factor, self.backoff_max)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        after = None
        if response is not None and self.respect_retry_after_header:
            with contextlib.suppress(InvalidHeader):  # a garbled Retry-After: plain backoff
                after = self.get_retry_after(response)  # capped at retry_after_max
        delay = after if after else self.get_backoff_time()
        last = self.history[-1] if self.history else None
        if last is not None and last.error is not None:
            reason = _describe(last.error)
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


def _is_certificate_error(error: BaseException) -> bool:
    return _find(error, ssl.SSLCertVerificationError) is not None


def _describe(error: BaseException | None) -> str:
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


# -- responses -----------------------------------------------------------------------------------

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


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*", re.IGNORECASE)


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """(scheme, host, port) of ``url``, or None when its port is not a number."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None


def _for_origin_of(target: str, current: str, headers: dict[str, str]) -> dict[str, str]:
    """The headers for a redirect from ``current`` to ``target``: credentials go to their
    own origin only (scheme, host and port), as curl and requests do."""
    if _origin(target) is not None and _origin(target) == _origin(current):
        return headers
    return {key: value for key, value in headers.items() if key.lower() != "authorization"}


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header; None where absent or unknown."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None, None, None

    def number(text: str | None) -> int | None:
        return int(text) if text and text != "*" else None

    first, last, total = match.groups()
    return number(first), number(last), number(total)


def _validator(response: BaseHTTPResponse) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may carry (a weak ETag never matches)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _check_partial_response(response: BaseHTTPResponse, part: _Partial) -> None:
    """Accept a 206 only if it continues ``part`` exactly; else restart from zero."""
    first, _, total = _content_range(response.headers.get("Content-Range", ""))
    if first != part.size:
        raise _Restart(f"asked for bytes from {part.size}, got a 206 starting at {first}")
    fresh = _validator(response)
    if fresh is not None and fresh != part.validator:
        raise _Restart(f"validator changed from {part.validator} to {fresh}")
    if response.headers.get("Content-Encoding", "identity").lower() != part.encoding:
        raise _Restart("the Content-Encoding changed")
    if total is not None:
        if part.total is not None and total != part.total:
            raise _Restart(f"length changed from {part.total} to {total}")
        part.total = total
    part.resumed_from = part.size
    part.saved += part.size


def _downgrade(current: str, target: str) -> bool:
    """Whether a redirect leaves https for plain http."""
    return urlsplit(current).scheme.lower() == "https" and urlsplit(target).scheme.lower() == "http"


def _undeclared(response: BaseHTTPResponse, part: _Partial) -> bool:
    """Whether a 200's body has neither a Content-Length nor chunks: it ends where the
    connection closes (legitimate, as in HTTP/1.0, but its completeness cannot be checked)."""
    return response.status == 200 and part.total is None and not response.chunked


def _check_size(part: _Partial, expected: Expected, url: str) -> None:
    if expected.size is not None and part.total is not None and part.total != expected.size:
        raise IntegrityError(
            f"{url} is {part.total} bytes long, expected {expected.size}",
            expected=expected.size,
            found=part.total,
        )


# -- partial files ---------------------------------------------------------------------------------

_ACTIVE: set[str] = set()  # tokens of partials being written by this process
_ACTIVE_LOCK = threading.Lock()


def _new_token() -> str:
    """A partial's token: its writer's ``staging_tag`` (storage/processes.py) and 64 random bits, so
    that cleanup and other downloads tell from the name alone whether its writer is gone."""
    return f"{staging_tag()}{uuid.uuid4().hex[:16]}"


def _owner_gone(name: str, meta: dict[str, Any]) -> bool:
    """Whether the partial named ``name`` has no live writer (so it may be claimed): its writer
    is provably dead (cas/storage/processes.py), or is this process and no longer writing it."""
    if written_by_this_process(name):
        with _ACTIVE_LOCK:
            return meta.get("token") not in _ACTIVE
    return written_by_dead_process(name)


def _key(url: str) -> str:
    return "dl-" + hashlib.sha256(url.encode()).hexdigest()[:32]


class _Hashers:
    """BLAKE3 (and SHA-256 when one is expected) of a download, computed in a thread of their
    own: hashing then overlaps receiving and writing instead of following each chunk."""

    def __init__(self, want_sha256: bool) -> None:
        self._blake3 = hasher()
        self._sha256 = hashlib.sha256() if want_sha256 else None
        self._chunks: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None

    def update(self, chunk: bytes) -> None:
        if self._thread is None:
            self._chunks = queue.Queue(maxsize=16)  # bounded: at most 16 chunks wait
            self._thread = threading.Thread(target=self._run, name="cas-hash", daemon=True)
            self._thread.start()
        assert self._chunks is not None
        self._chunks.put(chunk)

    def _run(self) -> None:
        assert self._chunks is not None
        while (chunk := self._chunks.get()) is not None:
            self._blake3.update(chunk)
            if self._sha256 is not None:
                self._sha256.update(chunk)

    def wait(self) -> None:
        """Hash what was handed over so far, and end the thread."""
        if self._thread is not None and self._chunks is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = self._chunks = None

    def blake3(self) -> str:
        self.wait()
        return str(self._blake3.hexdigest())

    def sha256(self) -> str | None:
        self.wait()
        return self._sha256.hexdigest() if self._sha256 is not None else None


class _Partial:
    """A staging file being downloaded, with its hashers and its sidecar record."""

    def __init__(
        self, tmp: Folder, url: str, token: str, file: BinaryIO, want_sha256: bool
    ) -> None:
        self.url = url
        self.token = token
        self.path = tmp.path / f"{_key(url)}-{token}.part"
        self.tmp = tmp  # keeps dir_fd open
        self.dir_fd = tmp.fd()  # its folder, where its sidecar is written and it is staged
        self.meta_path = self.path.with_suffix(".json")
        self.file = file
        self.want_sha256 = want_sha256
        self.hashes = _Hashers(want_sha256)
        self.size = 0
        self.flushed = 0  #: bytes whose writeback was started
        self.transferred = 0
        self.resumed_from = 0  #: where the current body continues the file (0: from scratch)
        self.saved = 0  #: bytes not downloaded again thanks to resumes
        self.validator: str | None = None
        self.total: int | None = None
        self.encoding = "identity"
        with _ACTIVE_LOCK:
            _ACTIVE.add(token)

    @classmethod
    def create(cls, tmp: Folder, url: str, want_sha256: bool) -> _Partial:
        token = _new_token()
        fd = os.open(f"{_key(url)}-{token}.part", os.O_RDWR | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp.fd())
        part = cls(tmp, url, token, os.fdopen(fd, "r+b", buffering=0), want_sha256)
        try:
            part.save()
        except BaseException:  # e.g. a full disk: leave nothing behind
            part.discard()
            raise
        return part

    @classmethod
    def claim(cls, tmp: Folder, url: str, want_sha256: bool) -> _Partial | None:
        """Take over the largest resumable partial of ``url`` left by a dead owner, if any."""
        candidates = []
        tmp_dir = tmp.path
        for meta_path in tmp_dir.glob(f"{_key(url)}-*.json"):
            meta = _read_json(meta_path)
            if meta is None or meta.get("url") != url or not _owner_gone(meta_path.name, meta):
                continue
            data_path = meta_path.with_suffix(".part")
            if not meta.get("validator"):  # (a dead owner's is of this boot: storage/processes.py)
                _remove(data_path, meta_path)  # not resumable: debris of a dead download
                continue
            try:
                candidates.append((data_path.stat().st_size, data_path, meta_path, meta))
            except FileNotFoundError:
                _remove(meta_path)  # its data was claimed already: the record is stale
        for _, data_path, meta_path, meta in sorted(candidates, key=lambda c: -c[0]):
            token = _new_token()
            mine = tmp_dir / f"{_key(url)}-{token}.part"
            try:
                os.rename(data_path, mine)  # atomic: of several claimants exactly one wins
            except FileNotFoundError:
                continue
            try:  # the claimed name may have been a planted symlink: never follow one
                fd = os.open(mine, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                _remove(mine, meta_path)
                continue
            file = os.fdopen(fd, "r+b", buffering=0)
            part = cls(tmp, url, token, file, want_sha256)
            part.validator = meta.get("validator")
            part.total = meta.get("total") if isinstance(meta.get("total"), int) else None
            part.save()
            _remove(meta_path)
            part.rehash()
            return part
        return None

    def rehash(self) -> None:
        """Hash the bytes already in the file: the digest covers the whole content."""
        self.file.seek(0)
        self.size = 0
        while chunk := self.file.read(CHUNK_SIZE):
            self.hashes.update(chunk)
            self.size += len(chunk)
        if self.total is not None and self.size > self.total:
            self.reset()

    @property
    def resumable(self) -> bool:
        return self.validator is not None and self.encoding == "identity"

    def begin(self, response: BaseHTTPResponse) -> None:
        """Take validator, length and encoding from a 200 that starts the body from zero."""
        self.validator = _validator(response)
        self.encoding = response.headers.get("Content-Encoding", "identity").lower()
        length = response.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self.save()

    def append(self, chunk: bytes) -> None:
        self.hashes.update(chunk)
        view = memoryview(chunk)
        while view:
            written = self.file.write(view)
            view = view[written or 0 :]
        self.size += len(chunk)
        self.transferred += len(chunk)
        if self.size - self.flushed >= WRITE_BEHIND:  # so that finish's fsync waits for little
            start_writeback(self.file.fileno(), self.flushed, self.size - self.flushed)
            self.flushed = self.size

    def reset(self) -> None:
        """Back to zero bytes: the partial cannot be continued."""
        self.file.seek(0)
        self.file.truncate()
        self.flushed = 0
        self.hashes.wait()
        self.hashes = _Hashers(self.want_sha256)
        self.size = 0
        self.resumed_from = 0
        self.saved = 0
        self.validator = None
        self.total = None
        self.encoding = "identity"

    def save(self) -> None:
        """Write the sidecar atomically (a reader sees the old or the new record, never half)."""
        record = {
            "url": self.url,
            "token": self.token,
            "validator": self.validator if self.resumable else None,
            "total": self.total,
            "owner": asdict(this_process()),
        }
        scratch = self.meta_path.with_suffix(".json-new").name
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)  # never through a symlink
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record))
        os.replace(scratch, self.meta_path.name, src_dir_fd=self.dir_fd,
                   dst_dir_fd=self.dir_fd)

    def sha256_hex(self) -> str | None:
        return self.hashes.sha256()

    def verify(self, url: str, expected: Expected) -> None:
        """Raise IntegrityError unless the content matches every expected value."""
        note = ""
        if self.encoding != "identity":
            note = f" (sent with Content-Encoding: {self.encoding}; cas keeps the bytes as sent)"
        if expected.size is not None and self.size != expected.size:
            raise IntegrityError(
                f"{url} gave {self.size} bytes, expected {expected.size}{note}",
                expected=expected.size,
                found=self.size,
            )
        digest = self.hashes.blake3()
        if expected.blake3 is not None and digest != expected.blake3:
            raise IntegrityError(
                f"{url} has BLAKE3 {digest}, expected {expected.blake3}{note}",
                expected=expected.blake3,
                found=digest,
            )
        sha = self.sha256_hex()
        if expected.sha256 is not None and sha != expected.sha256:
            raise IntegrityError(
                f"{url} has SHA-256 {sha}, expected {expected.sha256}{note}",
                expected=expected.sha256,
                found=sha,
            )

    def finish(self) -> Staged:
        """Make read-only, fsync and close; the file becomes a plain staged file with no
        sidecar."""
        os.fchmod(self.file.fileno(), BLOB_MODE)
        os.fsync(self.file.fileno())
        self.file.close()
        _remove(self.meta_path)
        self._release()
        return Staged(os.fspath(self.path), self.hashes.blake3(), self.size,
                      dir_fd=self.dir_fd, folder=self.tmp)

    def suspend(self) -> None:
        """Keep a resumable partial for a later attempt; remove one that cannot be resumed."""
        self.hashes.wait()
        self.file.close()
        self._release()
        if not (self.size and self.resumable):
            _remove(self.path, self.meta_path)

    def discard(self) -> None:
        self.hashes.wait()
        if not self.file.closed:
            self.file.close()
        self._release()
        _remove(self.path, self.meta_path)

    def _release(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.token)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# -- locks ---------------------------------------------------------------------------------------

_THREAD_LOCKS: dict[str, tuple[threading.Lock, int]] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # the lock files this thread holds, for their heartbeat
_POLL = 0.1  #: the longest pause between two looks at a busy lock


class _Watch:
    """Progress of whoever holds a lock, as seen by a waiter: the lock file's inode and mtime,
    which the holder refreshes as its download advances. No change for ``stall`` seconds means
    the holder is stopped (SIGSTOP, a debugger) or hung, and the waiter stops waiting."""

    def __init__(self, path: Path, stall: float) -> None:
        self.path = path
        self.stall = stall
        self.seen = self._stamp()
        self.since = time.monotonic()
        self.told = False

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns

    def stalled(self) -> bool:
        """Whether the holder has shown no progress for ``stall`` seconds."""
        stamp = self._stamp()
        if stamp != self.seen:
            self.seen, self.since = stamp, time.monotonic()
        if not self.told:
            log.info("waiting for another process downloading the same thing")
            self.told = True
        return time.monotonic() - self.since > self.stall


class _Heartbeat:
    """The holder's side of ``_Watch``: touch the held lock files at most every ``interval``
    seconds while the download advances."""

    def __init__(self, handles: list[BinaryIO], interval: float) -> None:
        self.handles = handles
        self.interval = interval
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        for handle in self.handles:
            with contextlib.suppress(OSError):
                os.utime(handle.fileno())


def _heartbeat() -> None:
    """Show the waiters of this thread's single flight that its download advances."""
    beat: _Heartbeat | None = getattr(_HELD, "beat", None)
    if beat is not None:
        beat()


@contextlib.contextmanager
def _flight_lock(path: Path, stall: float, folder: Folder | None = None,
                 ) -> Iterator[BinaryIO | None]:
    """Hold the thread lock and the ``flock`` of ``path``; yield the lock file, or None when
    the holder made no progress for ``stall`` seconds and the caller goes on without it."""
    watch = _Watch(path, stall)
    with _thread_lock(str(path), watch) as held:
        if not held:
            yield None
            return
        handle = _file_lock(path, watch, folder)
        if handle is None:
            yield None
            return
        try:
            yield handle
        finally:
            _remove(path)  # still ours (checked when taken): waiters on it will see it gone
            handle.close()


@contextlib.contextmanager
def _thread_lock(key: str, watch: _Watch) -> Iterator[bool]:
    """A per-key lock shared by every thread of this process, dropped when nobody uses it;
    yields whether it was taken (False: its holder stalled, see ``_Watch``)."""
    with _THREAD_LOCKS_GUARD:
        lock, users = _THREAD_LOCKS.get(key, (threading.Lock(), 0))
        _THREAD_LOCKS[key] = (lock, users + 1)
    try:
        held = _wait(lambda pause: lock.acquire(timeout=pause), watch)
        try:
            yield held
        finally:
            if held:
                lock.release()
    finally:
        with _THREAD_LOCKS_GUARD:
            lock, users = _THREAD_LOCKS[key]
            if users == 1:
                del _THREAD_LOCKS[key]
            else:
                _THREAD_LOCKS[key] = (lock, users - 1)


def _file_lock(path: Path, watch: _Watch, folder: Folder | None = None) -> BinaryIO | None:
    """An exclusive flock on ``path``, or None when its holder stalled (see ``_Watch``).

    Each holder unlinks the lock file when it is done, so lock files do not pile up (one per
    URL and digest ever fetched). The classic race that follows, a waiter locking the unlinked
    inode while a newcomer locks a new file at the same path, is closed by checking after each
    ``flock`` that the path still names the locked inode, and starting over when it does not.
    """

    def attempt(handle: BinaryIO, pause: float) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(pause)
            return False
        return True

    while True:
        handle = open_lock(path, folder)
        try:
            if not _wait(functools.partial(attempt, handle), watch):
                handle.close()
                return None
            if _names(path, handle):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # unlinked by its holder meanwhile: lock the file now at that path


def _names(path: Path, handle: BinaryIO) -> bool:
    """Whether ``path`` still names the open file ``handle`` (not a newer file there)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _wait(attempt: Callable[[float], bool], watch: _Watch) -> bool:
    """Call ``attempt(pause)`` (which waits up to ``pause`` seconds when it fails) until it
    succeeds: True; or until ``watch`` sees the holder stalled: False."""
    pause = 0.0  # the first try does not wait
    while not attempt(pause):
        if watch.stalled():
            log.warning(
                "the download of the same thing has shown no progress for %gs (its process"
                " stopped or hung?); downloading separately", watch.stall,
            )  # fmt: skip
            return False
        pause = min(max(pause * 2, 0.005), _POLL)
    return True


def _after_fork_in_child() -> None:
    # Locks held by the parent's other threads at fork time would stay held in the child.
    global _ACTIVE_LOCK, _THREAD_LOCKS_GUARD
    _ACTIVE_LOCK = threading.Lock()
    _ACTIVE.clear()
    _THREAD_LOCKS_GUARD = threading.Lock()
    _THREAD_LOCKS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
