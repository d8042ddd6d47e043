"""The HTTP(S) downloader: one transfer of a URL into a verified staging file.

Pure mechanism: this module knows nothing of the catalog. ``Downloader.download`` streams a URL into
a private staging file under ``tmp/`` (a ``Partial``, transfer/partial.py) while hashing it in one
pass (BLAKE3 always, SHA-256, SHA-1 or MD5 when one is expected), checks the expected digests and
size, and hands back a ``Staged`` file for the store to publish. Nothing here ever writes under
``blobs/`` (guarantee 1). A broken body resumes where it stopped; the retries of requests and of
bodies draw on one budget (transfer/retry.py); responses are whole (transfer/responses.py).
Given the validators of stored content (a refresh), the request is conditional, and a 304
hands back nothing; extra headers are made at request time and go to the URL's origin only
(transfer/headers.py).

Bounds. ``timeout`` (``download_timeout``) bounds every wait without progress: a read, a body
slower than ``MIN_RATE`` (transfer/retry.py), the wait for a stalled single-flight holder
(transfer/flight.py); ``max_size`` (``max_cache_size``) bounds a body whose size is not expected.

Large files (``parallel_min_size``) from origins that answer ranges come over ``connections``
connections at once (transfer/ranges.py), with the same verification and resume.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from cas.errors import DownloadError, IntegrityError
from cas.logs import log
from cas.storage.folder import Folder
from cas.storage.hashing import CHUNK_SIZE
from cas.storage.processes import forks
from cas.transfer import USER_AGENT
from cas.transfer.flight import heartbeat, single_flight
from cas.transfer.headers import private_headers
from cas.transfer.partial import Partial
from cas.transfer.proxies import Proxies, configured
from cas.transfer.ranges import NoRanges, RangedDownload, worth_it
from cas.transfer.request import Download, Expected, Progress, Validators, check_url
from cas.transfer.responses import (
    check_continuation,
    check_size,
    content_range,
    follow_redirects,
    pool_manager,
    start_from_zero,
    undeclared,
)
from cas.transfer.retry import (
    RETRY_STATUSES,
    Budget,
    Interrupted,
    Pace,
    PolicyRetry,
    Refused,
    Restart,
    TooLarge,
    Unchanged,
    backoff,
    check_bound,
    describe,
    status_error,
)
from cas.urls import split_credentials
from cas.values import Headers


class Downloader:
    """One store's HTTP client: a urllib3 PoolManager plus the resume and retry policy.

    ``timeout`` bounds each connect and each read of one attempt, the time a body may take to
    bring ``MIN_RATE * timeout`` bytes, and the wait for another downloader of the same thing
    that shows no progress (``single_flight``). ``max_size`` bounds a download that has no
    expected size (the store passes ``max_cache_size``). ``retries`` further attempts
    follow a failed one, with exponential backoff (``backoff_factor * 2**(n-1)`` plus jitter, at
    most ``backoff_max``); ``Retry-After`` on 429/503 is obeyed up to ``retry_after_max``
    seconds (urllib3 would wait up to 6 hours). ``ca_bundle`` replaces the system trust store.
    Bodies of ``parallel_min_size`` bytes or more come over ``connections`` connections at once.
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
        connections: int = 8,
        parallel_min_size: int = 32 << 20,
    ) -> None:
        # Partials, sidecars and locks are made relative to these folders' descriptors, opened
        # without following links (storage/blobs.py): a tmp/ swapped for a symlink is not written.
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
        self.connections = connections
        self.parallel_min_size = parallel_min_size
        # Sent with every request (urlopen's headers= replaces the pool's, so they are merged).
        # Identity: with gzip, Content-Length is the encoded size and Range offsets are
        # ambiguous; a body is stored exactly as sent (like curl -o) and never decoded.
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._ca_certs = os.fspath(ca_bundle) if ca_bundle is not None else None
        self._forks = forks()
        self._pool = pool_manager(self._ca_certs, connections)
        # Proxies from HTTP_PROXY, HTTPS_PROXY, NO_PROXY (transfer/proxies.py); None when unset.
        environment = configured()
        self._proxies = Proxies(environment, self._pool) if environment else None

    def _check_fork(self) -> None:
        # A forked child must not talk over its parent's pooled keep-alive sockets.
        if forks() != self._forks:
            self._pool = pool_manager(self._ca_certs, self.connections)
            if self._proxies is not None:
                self._proxies.clear(self._pool)
            self._forks = forks()

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.clear()
        if self._proxies is not None:
            self._proxies.clear()

    # -- single flight ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def single_flight(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the single-flight locks of ``keys`` (transfer/flight.py), waiting at most
        ``timeout`` seconds for a holder that shows no progress; no-op when ``lock`` is off."""
        if not self.lock:
            yield
            return
        with single_flight(keys, self._locks, self.timeout):
            yield

    # -- one download ----------------------------------------------------------------------------

    def download(
        self,
        url: str,
        expected: Expected | None = None,
        progress: Progress | None = None,
        received: Callable[[int], None] | None = None,
        *,
        headers: Headers = (),
        validators: Validators | None = None,
    ) -> Download | None:
        """Transfer ``url`` into a verified staging file.

        ``received(n)`` is told the body bytes that came over the network, whatever the
        outcome (for metrics). With ``validators`` (of content stored already) the request is
        conditional (If-None-Match, If-Modified-Since): None means the server answered 304 Not
        Modified, with no body. Raises DownloadError when the transfer fails after its retries
        (the partial stays for a later resume), IntegrityError when the content does not match
        ``expected`` (nothing is kept), UsageError for a URL that is not http(s) or a header
        whose ``${VAR}`` is not set (transfer/headers.py).
        Credentials in ``url`` (``user:password@``) and the extra ``headers`` go only to its
        origin; every message and file here names the URL without them (cas/urls.py).
        """
        url, credentials = split_credentials(url)
        check_url(url)
        # Made anew for every request (${VAR} read then); made here once so that an unset
        # variable fails before anything is staged.
        private = functools.partial(private_headers, url, credentials, headers)
        private()
        self._check_fork()
        expected = expected or Expected()
        budget = Budget(self.retries)
        want = tuple(expected.upstream())
        part = Partial.claim(self._tmp, url, want)
        if part is None:
            part = Partial.create(self._tmp, url, want)
        elif part.kept:
            log.info("resuming %s with %d bytes of a partial download", url, part.kept)
        try:
            return self._transfer(part, url, expected, budget, progress, private, validators)
        except Unchanged:
            part.discard()
            log.debug("%s is unchanged (304 Not Modified)", url)
            return None
        except (IntegrityError, TooLarge):
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
        part: Partial,
        url: str,
        expected: Expected,
        budget: Budget,
        progress: Progress | None,
        private: Callable[[], dict[str, str]],
        validators: Validators | None,
    ) -> Download:
        restarted = False
        sent = Validators()
        while True:
            try:
                sent = self._attempt(part, url, expected, budget, progress, private,
                                     validators) or sent
            except Interrupted as error:
                if budget.remaining <= 0:
                    raise budget.exhausted(url, error) from error
                budget.used += 1
                delay = backoff(budget.used, self.backoff_factor, self.backoff_max)
                how = f"resuming at byte {part.size}" if part.resumable else "restarting"
                log.warning(
                    "download of %s interrupted (%s); %s in %.2fs (retry %d of %d)",
                    url, error, how, delay, budget.used, self.retries,
                )  # fmt: skip
                time.sleep(delay)
                continue
            except Restart as why:
                part.reset()
                budget.ranges = budget.ranges and not isinstance(why, NoRanges)
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
                upstream=part.upstream(),
                attempts=budget.attempts,
                transferred=part.transferred,
                resumed=part.saved,
                validators=sent,
            )

    def _attempt(
        self,
        part: Partial,
        url: str,
        expected: Expected,
        budget: Budget,
        progress: Progress | None,
        private: Callable[[], dict[str, str]],
        validators: Validators | None,
    ) -> Validators | None:
        """One request: interpret its status and headers, then stream the body into ``part``
        (or hand it to a ``RangedDownload``); the validators of a response that sent content.
        Raises Unchanged for a 304. A refresh's conditional request is a plain GET; a 200 to
        it may go on in parallel ranges like any other."""
        heartbeat()
        if part.done is not None and part.resumable and budget.ranges:  # a parallel partial
            check_size(part, expected, url)  # (resumed: never conditional)
            return RangedDownload(self, part, url, private, None).run(progress)
        own = private()  # ${VAR} read for this request
        headers: dict[str, str] = dict(own)
        ranged = part.size > 0 and part.resumable
        if ranged:
            assert part.validator is not None
            headers["Range"] = f"bytes={part.size}-"
            headers["If-Range"] = part.validator
        elif part.size:
            part.reset()
        if validators is not None and not ranged:  # a resumed partial is the new content's
            headers.update(validators.conditions())
        response = self.open(url, headers, budget, own)
        try:
            status = response.status
            if status == 304 and validators is not None and not ranged:
                raise Unchanged
            if status == 200:
                if part.size:
                    # A server may ignore Range or If-Range: the whole body comes again.
                    log.info("%s sent the whole file again; restarting from zero", url)
                    part.reset()
                start_from_zero(response, part)
            elif status == 206 and ranged:
                check_continuation(response, part)
            elif status == 416 and ranged:
                total = content_range(response.headers.get("Content-Range", ""))[2]
                if total is not None and total == part.size:
                    return None  # the partial was complete already
                raise Restart(f"416 for a Range from byte {part.size}")
            else:
                raise status_error(url, response, budget)
            check_size(part, expected, url)
            check_bound(part.total, expected, self.max_size, url, budget)
            if status == 200 and budget.ranges and worth_it(self, part, response):
                return RangedDownload(self, part, url, private, response).run(progress)
            if progress is not None:
                progress(part.size, part.total)
            self._stream(response, part, expected, url, progress, budget)
            response.release_conn()
            return Validators.of(response.headers)
        finally:
            # A response abandoned before its end must not go back to the pool half-read.
            if not response.closed:
                response.close()
            response.release_conn()

    def _stream(
        self,
        response: BaseHTTPResponse,
        part: Partial,
        expected: Expected,
        url: str,
        progress: Progress | None,
        budget: Budget,
    ) -> None:
        pace = Pace(self.timeout)
        start = part.size
        while True:
            try:
                chunk = response.read1(CHUNK_SIZE, decode_content=False)
            except (HTTPError, OSError) as error:
                # ProtocolError, IncompleteRead, ReadTimeoutError: urllib3 retries none of them.
                raise Interrupted(describe(error)) from error
            if not chunk:
                break
            if expected.size is not None and part.size + len(chunk) > expected.size:
                raise IntegrityError(
                    f"{url} sends more than the expected {expected.size} bytes",
                    expected=expected.size,
                    found=part.size + len(chunk),
                )
            check_bound(part.size + len(chunk), expected, self.max_size, url, budget)
            part.append(chunk)
            heartbeat()
            pace.advance(len(chunk))
            if progress is not None:
                progress(part.size, part.total)
        if part.total is not None and part.size < part.total:
            raise Interrupted(f"short body: {part.size} of {part.total} bytes")
        if part.size == start and undeclared(response, part):
            # No length, no chunks, and the connection closed right after the headers: what a
            # server that dies there looks like. Every server sends an empty file with a length.
            raise Interrupted("the connection closed after the headers: no body, no length")
        if undeclared(response, part) and expected == Expected():
            log.warning("%s sent no Content-Length: its end is where the connection closed,"
                        " which cas cannot check; give a size or digest to verify it", url)

    def open(self, url: str, headers: dict[str, str], budget: Budget,
             private: Mapping[str, str]) -> BaseHTTPResponse:
        """GET ``url``, following its redirects (``follow_redirects``)."""
        return follow_redirects(self._request, url, headers, budget, private,
                                self.max_redirects)  # fmt: skip

    def _request(self, url: str, headers: dict[str, str], budget: Budget) -> BaseHTTPResponse:
        retry = PolicyRetry(
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
        pool, via = (self._pool, "") if self._proxies is None else self._proxies.route(url)
        try:
            response = pool.urlopen(
                "GET",
                url,
                headers={**self._headers, **headers},
                retries=retry,
                redirect=False,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout,
            )
        except Refused as error:
            budget.used += error.retried
            raise DownloadError(
                f"{url}: TLS certificate not trusted ({describe(error.reason)});"
                " not retried; for a private CA, point SSL_CERT_FILE at its certificate",
                url=url,
                attempts=budget.attempts,
            ) from error
        except MaxRetryError as error:
            budget.used = budget.retries
            raise DownloadError(
                f"download of {url}{via} failed after {budget.attempts} attempts:"
                f" {describe(error.reason)}",
                url=url,
                status=budget.status,
                attempts=budget.attempts,
            ) from error
        except HTTPError as error:
            raise DownloadError(
                f"{url}{via}: {describe(error)}", url=url, attempts=budget.attempts
            ) from error
        if isinstance(response.retries, Retry):
            budget.used += len(response.retries.history)
        budget.status = response.status
        return response
