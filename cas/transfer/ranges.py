"""Parallel ranged downloads: one large file over several connections at once.

The downloader (transfer/http.py) hands a download over here when its first response says the
file is large (``parallel_min_size``), names a validator for ``If-Range`` (a strong ETag, else
Last-Modified) and does not refuse ranges (``Accept-Ranges: none``); and when it claims a
partial that a parallel download left. The staging file is given its final size at once; the
file is cut into pieces that ``connections`` threads take in order, each asking for its piece
with ``Range: bytes=a-b`` and ``If-Range`` over its own keep-alive connection and writing it with
``os.pwrite`` at its offset. The first response's own body is the first piece. Every ranged
request carries the private headers made anew for it (``${VAR}`` read then, transfer/headers.py)
and follows redirects through ``responses.follow_redirects``, like the first request: the
private headers go to the URL's own origin only, and https is never left for plain http.

Every answer is checked. A 206 must start where asked and carry the validator, total length and
encoding of the first response: otherwise the file changed between ranges, and the download
starts again from zero (``Restart``). A 200 to a ranged request with If-Range is either a file
that changed (another validator: Restart) or an origin that ignores ranges: then the first
response's body, still open, goes on alone to the end (or, when it is gone, ``NoRanges`` starts
again as one stream). A 416 is a file that shrank: Restart. A body cut short is asked again from
where it stopped, with backoff, on the piece's own retry budget; 401, 403 and 404 are final.

Resume: the spans written are recorded in the partial's sidecar (``done``, transfer/partial.py)
each time another 1/1024 of the file has arrived (and when the download stops), always after the
bytes were written. No fsync is needed for that record to be true: a partial is claimed only
when its writer died during this boot (storage/processes.py), so the page cache still holds
every byte written, and one left by an earlier boot is never resumed. A killed download loses
at most that 1/1024 plus the bytes in flight (what the sockets' buffers held: on a fast link,
some MiB per connection); the next one asks only for the missing spans.

Hashing follows the written prefix of the file in a thread of its own (BLAKE3, and every
upstream checksum expected: SHA-256, SHA-1, MD5; transfer/spans.py), through read-only memory
maps of one window at a time: file pages, not anonymous memory. Each connection reads ``READ``
bytes at a time, so memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from urllib3.exceptions import HTTPError
from urllib3.response import BaseHTTPResponse

from cas.logs import log
from cas.storage.hashing import WRITE_BEHIND, start_writeback
from cas.transfer.flight import heartbeat
from cas.transfer.partial import Hashers, Partial
from cas.transfer.request import Progress, Validators
from cas.transfer.responses import content_range, encoding, validator
from cas.transfer.retry import (
    Budget,
    Interrupted,
    Pace,
    Restart,
    backoff,
    describe,
    status_error,
)
from cas.transfer.spans import Follower, Spans

#: Bytes one connection reads at a time (its memory), and the most it may lose when killed.
READ = 512 << 10
#: Pieces per connection: more pieces even out connections of unequal speed at the end.
PIECES_PER_CONNECTION = 8
MIN_PIECE, MAX_PIECE = 2 << 20, 64 << 20
#: The sidecar records the spans written each time this fraction of the file has arrived.
CHECKPOINTS = 1024
MIN_CHECKPOINT = 256 << 10


class NoRanges(Restart):
    """The origin answers Range requests with the whole file: download it as one stream."""


class Client(Protocol):
    """What a parallel download needs of the downloader (transfer/http.py)."""

    retries: int
    backoff_factor: float
    backoff_max: float
    timeout: float
    connections: int
    parallel_min_size: int

    def open(self, url: str, headers: dict[str, str], budget: Budget,
             private: Mapping[str, str]) -> BaseHTTPResponse: ...


def worth_it(client: Client, part: Partial, response: BaseHTTPResponse) -> bool:
    """Whether the download whose first response (a 200 from byte 0) is ``response`` goes on
    in parallel ranges."""
    return (
        client.connections > 1
        and part.total is not None
        and part.total >= max(client.parallel_min_size, 2 * MIN_PIECE)
        and part.resumable
        and str(response.headers.get("Accept-Ranges", "")).strip().lower() != "none"
    )


class _Piece:
    """A span one connection fetches; ``pos`` is where its next byte goes."""

    def __init__(self, start: int, end: int) -> None:
        self.pos = start
        self.end = end


class RangedDownload:
    """One parallel download of ``url`` into ``part`` (whose ``total`` and ``validator`` are
    known), started by the open 200 ``first`` or, for a claimed partial, by nothing.
    ``private()`` makes the private headers of one request (credentials, extra headers)."""

    def __init__(self, client: Client, part: Partial, url: str,
                 private: Callable[[], dict[str, str]], first: BaseHTTPResponse | None) -> None:
        assert part.total is not None and part.validator is not None
        self.client, self.part, self.url, self.private = client, part, url, private
        self.total = part.total
        self.fd = part.file.fileno()
        self.cond = threading.Condition()
        self.done = Spans(part.done)
        self.saved = self.done.size
        self.step = max(self.total // CHECKPOINTS, MIN_CHECKPOINT)
        size = -(-self.total // (client.connections * PIECES_PER_CONNECTION))
        size = min(max(size, MIN_PIECE), MAX_PIECE)
        gaps = self.done.missing(self.total)
        self.first = first
        self.first_piece: _Piece | None = None
        if first is not None:  # a download from zero: the first response brings the first piece
            self.first_piece = _Piece(0, min(size, self.total))
            gaps = [(self.first_piece.end, self.total)]
        self.queue = deque(_Piece(start, min(start + size, end))
                           for begin, end in gaps for start in range(begin, end, size))
        self.failure: BaseException | None = None
        self.stopping = False
        self.ranges_ok: bool | None = None  #: whether the origin answers ranges (None: unknown)
        self.alone = False  #: the first response goes on alone to the end
        self.running = 0
        self.open: set[BaseHTTPResponse] = set()
        self.saving = False  #: a worker is writing the sidecar
        #: What the origin said identifies the content (of the first response or a 206).
        self.validators = Validators.of(first.headers) if first is not None else Validators()

    # -- the calling thread ----------------------------------------------------------------------

    def run(self, progress: Progress | None) -> Validators:
        """Fetch every missing span, then give ``part`` its digests and size; the validators
        the origin sent. Raises DownloadError, Restart (NoRanges), UsageError (a header's
        variable no longer set), or what interrupted the calling thread."""
        part = self.part
        if os.fstat(self.fd).st_size != self.total:
            os.ftruncate(self.fd, self.total)
        part.done = [list(span) for span in self.done.items]
        part.resumed_from = part.saved = self.done.size
        part.save()  # a parallel partial from now on: a later attempt resumes its spans
        follower = Follower(self.fd, self.total, self.cond, lambda: self.done.prefix,
                            part.want)
        count = min(self.client.connections, len(self.queue) + (self.first is not None))
        workers = [threading.Thread(target=self._work, args=(self.first if n == 0 else None,),
                                    name=f"cas-range-{n}", daemon=True) for n in range(count)]
        self.running = len(workers)
        follower.start()
        for worker in workers:
            worker.start()
        complete = False
        try:
            self._watch(progress)
            for worker in workers:
                worker.join()
            if self.failure is not None:
                raise self.failure
            complete = self.done.size == self.total
            if not complete:
                raise Restart(f"{self.total - self.done.size} bytes missing after every range")
        finally:
            if not complete:
                self._stop()
                for worker in workers:
                    worker.join()
            follower.finish(complete)
            if not complete:
                with contextlib.suppress(OSError):  # (a full disk): the error goes on as it is
                    self._checkpoint()
        part.hashes = Hashers.known(*follower.digests())
        part.size = self.total
        if progress is not None:
            progress(self.total, self.total)
        return self.validators

    def _watch(self, progress: Progress | None) -> None:
        """Until the workers end: report progress, show liveness."""
        shown = -1
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.running == 0 or self.failure is not None,
                                   timeout=0.2)
                size, over = self.done.size, self.running == 0 or self.failure is not None
            if over:
                return
            if size != shown:
                heartbeat()  # waiters of the single flight see progress (this thread holds it)
                if progress is not None:
                    progress(size, self.total)
                shown = size

    def _checkpoint(self) -> None:
        """Record the spans written so far (see the module's docstring: no fsync needed), once
        the workers have ended."""
        with self.cond:
            spans = [list(span) for span in self.done.items]
            size = self.done.size
        if size == self.saved:
            return
        self.part.done = spans
        self.part.save()
        with self.cond:
            self.saved = size

    def _stop(self) -> None:
        """Make every worker end soon: no new piece, and reads in progress aborted."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            responses = list(self.open)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()

    # -- the workers -----------------------------------------------------------------------------

    def _work(self, first: BaseHTTPResponse | None) -> None:
        try:
            if first is not None:
                self._first(first)
            while (piece := self._next()) is not None:
                self._fetch(piece)
        except BaseException as error:  # handed to the calling thread
            with self.cond:
                if self.failure is None:
                    self.failure = error
                self.cond.notify_all()
            self._stop()
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def _next(self) -> _Piece | None:
        with self.cond:
            if self.stopping or self.alone or not self.queue:
                return None
            return self.queue.popleft()

    def _first(self, response: BaseHTTPResponse) -> None:
        """The first response's body: the first piece; then, if the origin turns out to
        ignore ranges, the rest of the file."""
        piece = self.first_piece
        assert piece is not None
        try:
            with self._reading(response):
                self._copy(response, piece)
                with self.cond:
                    self.cond.wait_for(lambda: self.ranges_ok is not None or self.stopping)
                    if self.alone:
                        piece.end = self.total
                if self.alone:
                    log.info("%s ignores Range requests: one stream", self.url)
                    self._copy(response, piece)
                    response.release_conn()
        except Interrupted as error:
            if self.alone:
                raise NoRanges(f"cut at byte {piece.pos} ({error}), and the origin does not"
                               " answer Range requests") from error
        finally:
            with self.cond:
                self.first = None
        if piece.pos < piece.end and not self.stopping:
            self._fetch(piece)  # the rest of the first piece, asked as a range

    def _fetch(self, piece: _Piece) -> None:
        """Fetch ``piece`` with ranged requests, resuming where a body stopped."""
        budget = Budget(self.client.retries)
        while piece.pos < piece.end and not self.stopping:
            private = self.private()  # ${VAR} read for this request
            headers = {**private, "Range": f"bytes={piece.pos}-{piece.end - 1}",
                       "If-Range": str(self.part.validator)}
            response = self.client.open(self.url, headers, budget, private)
            try:
                with self._reading(response):
                    until = self._accept(response, piece, budget)
                    if until is None:
                        return
                    self._copy(response, piece, until)  # a shorter answer: ask for the rest
                    response.release_conn()
            except Interrupted as error:
                if self.stopping:
                    return
                if budget.remaining <= 0:
                    raise budget.exhausted(self.url, error) from error
                budget.used += 1
                delay = backoff(budget.used, self.client.backoff_factor, self.client.backoff_max)
                log.warning("range %d-%d of %s interrupted (%s); resuming at byte %d in %.2fs"
                            " (retry %d of %d)", piece.pos, piece.end - 1, self.url, error,
                            piece.pos, delay, budget.used, budget.retries)
                with self.cond:
                    self.cond.wait_for(lambda: self.stopping, timeout=delay)

    def _accept(self, response: BaseHTTPResponse, piece: _Piece, budget: Budget) -> int | None:
        """Where the part of ``piece`` that ``response`` brings ends (a server may answer a
        range with less than asked); None when the first response goes on alone instead.
        Raises Restart for a file that changed, DownloadError for a final status."""
        status = response.status
        fresh = validator(response)
        if status in (200, 206) and fresh is not None and fresh != self.part.validator:
            raise Restart(f"the file changed between ranges: {self.part.validator} became {fresh}")
        if status == 206:
            start, last, total = content_range(response.headers.get("Content-Range", ""))
            if total is not None and total != self.total:
                raise Restart(f"the file changed between ranges: {self.total} bytes became"
                              f" {total}")
            if start != piece.pos:
                raise Restart(f"asked for bytes from {piece.pos}, got a 206 starting at {start}")
            if encoding(response) != self.part.encoding:
                raise Restart("the Content-Encoding changed between ranges")
            if not self._verdict(True):
                return None
            if not self.validators:
                self.validators = Validators.of(response.headers)
            return piece.end if last is None or last >= piece.end else last + 1
        if status == 200:
            if not self._verdict(False):
                raise NoRanges(f"{self.url} answered a Range request with the whole file")
            return None
        if status == 416:
            raise Restart(f"416 for bytes {piece.pos}-{piece.end - 1} of {self.total}: the file"
                          " changed between ranges")
        raise status_error(self.url, response, budget)

    def _verdict(self, ranges: bool) -> bool:
        """Take the first word on whether the origin answers ranges. Returns whether a worker
        that got a 206 may write it (True), or a worker that got a 200 may quietly end because
        the first response goes on alone (also True)."""
        with self.cond:
            if self.ranges_ok is None:
                self.ranges_ok = ranges
                if not ranges and self.first is not None:
                    self.alone = True
                    self.queue.clear()
                self.cond.notify_all()
            return not self.alone if ranges else self.alone

    @contextlib.contextmanager
    def _reading(self, response: BaseHTTPResponse) -> Iterator[None]:
        """Register ``response`` (so that a stop can abort its reads); close it unless it was
        read to its end and released."""
        with self.cond:
            self.open.add(response)
        try:
            yield
        finally:
            with self.cond:
                self.open.discard(response)
            if not response.closed:
                response.close()
            response.release_conn()

    def _copy(self, response: BaseHTTPResponse, piece: _Piece, until: int | None = None) -> None:
        """Write the body of ``response`` at ``piece.pos`` up to ``until`` (``piece.end``)."""
        pace = Pace(self.client.timeout)
        flushed = piece.pos
        end = piece.end if until is None else until
        while piece.pos < end:
            if self.stopping:
                raise Interrupted("stopped")
            try:
                chunk = response.read1(min(READ, end - piece.pos), decode_content=False)
            except (HTTPError, OSError) as error:
                raise Interrupted(describe(error)) from error
            if not chunk:
                raise Interrupted(f"short body: stopped at byte {piece.pos} of a range ending"
                                  f" at {end}")
            view = memoryview(chunk)
            at = piece.pos
            while view:
                written = os.pwrite(self.fd, view, at)
                view, at = view[written:], at + written
            self._mark(piece, len(chunk))
            pace.advance(len(chunk))
            if piece.pos - flushed >= WRITE_BEHIND:  # so that the final fsync waits for little
                start_writeback(self.fd, flushed, piece.pos - flushed)
                flushed = piece.pos

    def _mark(self, piece: _Piece, count: int) -> None:
        with self.cond:
            start = piece.pos
            piece.pos += count
            before = self.done.prefix
            self.done.add(start, start + count)
            self.part.transferred += count
            if self.done.prefix != before:
                self.cond.notify_all()
            due = self.done.size - self.saved >= self.step and not self.saving
            if due:  # this worker records the spans: no wait for another thread to wake
                self.saving = True
                spans, size = [list(span) for span in self.done.items], self.done.size
        if due:
            self._record(spans, size)

    def _record(self, spans: list[list[int]], size: int) -> None:
        try:
            self.part.done = spans
            self.part.save()
        except BaseException:
            with self.cond:
                self.saving = False
            raise
        with self.cond:
            self.saving, self.saved = False, size
