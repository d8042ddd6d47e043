"""One remote blob into a staging file: ranged GETs in parallel, written where they belong,
hashed in order as the file fills.

The first GET asks for the first part (``bytes=0-<part_size - 1>``) and learns the object's size
from its Content-Range, so a blob that fits in one part costs one request, no HEAD. The other
parts go to a thread pool shared by the remote; each writes its bytes at their offset
(``pwrite``) into the staging file, preallocated to the object's size. Meanwhile the calling
thread hashes the file from its start as far as the parts have filled it contiguously, reading
the bytes back from the page cache, and starts their writeback when the file will be fsynced;
nothing waits for earlier parts to arrive and memory stays at a chunk per part in flight.

Nothing is trusted: an object whose size is not the expected one is refused before its body is
read, a part that answers another range than asked, or more bytes, is refused, and the caller
compares the digest (and SHA-256) of the bytes in the file with what it expects. A part whose
body stream breaks is asked again, for what is missing, up to ``stream_retries`` times.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_all
from typing import Any

from cas.errors import IntegrityError
from cas.storage import hashing
from cas.transfer.spans import Spans

#: Bytes read from a response body, written and hashed at a time.
CHUNK = 1 << 20


class Stopped(Exception):
    """Another part failed: this one stops."""


class _Disk(Exception):
    """Writing the staging file failed (not the network: no part is asked again)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class RangedGet:
    """Downloads the object ``key`` into a file descriptor; ``fill`` is the
    ``Staging.stage_written`` callback."""

    def __init__(
        self, client: Any, bucket: str, key: str, where: str, *, part_size: int,
        pool: Callable[[], Executor], size: int | None, want_sha256: bool, stream_retries: int,
    ) -> None:  # fmt: skip
        self.client = client
        self.bucket = bucket
        self.key = key
        self.where = where
        self.part_size = part_size
        self.pool = pool
        self.size = size
        self.sha256 = hashlib.sha256() if want_sha256 else None
        self.stream_retries = stream_retries
        self.count = 0  #: body bytes received
        self._lock = threading.Condition()
        self._written = Spans()  # the byte spans written so far, by every part
        self._failed: BaseException | None = None

    # -- the staging callback ------------------------------------------------------------------

    def fill(self, fd: int, write_behind: bool) -> tuple[str, int]:
        """Download into ``fd``; the BLAKE3 digest and size of what the file holds."""
        try:  # a Range on an empty object answers 416
            first = self._get(None if self.size == 0 else f"bytes=0-{self.part_size - 1}")
        except Exception as error:
            if not _empty(error):
                raise
            first = self._get(None)
        futures: list[Future[None]] = []
        digest = ""
        try:
            total = self._total(first)
            if self.size is not None and total != self.size:
                raise IntegrityError(
                    f"remote object {self.where} is damaged: its size is {total}, not"
                    f" {self.size}; it was not stored",
                    expected=self.size, found=total,
                )  # fmt: skip
            if total:
                _preallocate(fd, total)
            step = self.part_size if first.get("ContentRange") else max(total, 1)
            parts = [(start, min(start + step, total)) for start in range(0, total, step)]
            for start, end in parts[1:]:
                futures.append(self.pool().submit(self._run_part, fd, start, end))
            if parts:
                self._part(fd, 0, parts[0][1], first)
            else:
                self._body(fd, first, [0], 0)  # an empty object: its body must be empty
            digest = self._hash(fd, total, write_behind)
        except BaseException as error:
            self._fail(error)
        finally:
            first["Body"].close()
            wait_all(futures)  # no part may write to fd once it is closed
        with self._lock:
            failed = self._failed
        if isinstance(failed, _Disk):
            raise failed.error  # the store's own disk: ENOSPC, EIO, ...
        if failed is not None:
            raise failed
        return digest, total

    def _run_part(self, fd: int, start: int, end: int) -> None:
        """One part in the pool; its failure stops the others."""
        try:
            self._part(fd, start, end, None)
        except BaseException as error:
            self._fail(error)

    # -- requests ------------------------------------------------------------------------------

    def _get(self, byte_range: str | None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        return self.client.get_object(**kwargs)

    def _total(self, response: Any) -> int:
        """The object's size, from the first part's Content-Range (or the whole body's length,
        where the server ignored the Range)."""
        content_range = response.get("ContentRange")
        if content_range:
            total = content_range.rpartition("/")[2]
            if total.isdigit():
                return int(total)
            raise IntegrityError(f"remote object {self.where} answered Content-Range"
                                 f" {content_range!r}; it was not stored")  # fmt: skip
        return int(response["ContentLength"])

    def _part(self, fd: int, start: int, end: int, response: Any) -> None:
        """Write bytes ``start`` to ``end`` (exclusive) at their place; ``response`` is the
        first part's, already asked for."""
        from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

        at, tries = [start], 0  # where the part's bytes have reached, kept across a break
        while at[0] < end:
            self._check()
            if response is None:
                response = self._get(f"bytes={at[0]}-{end - 1}")
            if response.get("ContentRange") is not None or at[0] != 0:
                self._check_range(response, at[0], end)
            try:
                self._body(fd, response, at, end)
                if at[0] < end:  # a body shorter than announced, without an error
                    raise IntegrityError(
                        f"remote object {self.where} sent {at[0] - start} of the"
                        f" {end - start} bytes of its part at {start}; it was not stored"
                    )
            except S3_RETRYABLE_DOWNLOAD_ERRORS:
                if tries >= self.stream_retries:
                    raise
                tries += 1
            finally:
                response["Body"].close()
            response = None

    def _check_range(self, response: Any, start: int, end: int) -> None:
        answered = str(response.get("ContentRange") or "")
        if not answered.startswith(f"bytes {start}-{end - 1}/"):
            response["Body"].close()
            raise IntegrityError(
                f"remote object {self.where} answered {answered or 'the whole object'} to a"
                f" request for bytes {start}-{end - 1}; it was not stored"
            )

    def _body(self, fd: int, response: Any, at: list[int], end: int) -> None:
        """Write a part's body at ``at[0]``, which follows it; refuses bytes
        beyond ``end``. The hashing follows each chunk written."""
        body = response["Body"]
        while True:
            self._check()
            chunk = body.read(min(CHUNK, end - at[0]) or 1)
            if not chunk:
                return
            if at[0] + len(chunk) > end:
                raise IntegrityError(
                    f"remote object {self.where} sent more than the {end} bytes it announced;"
                    " it was not stored",
                    expected=end, found=at[0] + len(chunk),
                )  # fmt: skip
            try:
                hashing.pwrite_all(fd, chunk, at[0])
            except OSError as error:
                raise _Disk(error) from error
            at[0] += len(chunk)
            with self._lock:
                self.count += len(chunk)
                self._written.add(at[0] - len(chunk), at[0])
                self._lock.notify_all()

    # -- hashing in order ----------------------------------------------------------------------

    def _hash(self, fd: int, total: int, write_behind: bool) -> str:
        digest = hashing.hasher()
        hashed = flushed = 0  # bytes hashed; bytes whose writeback was started
        while hashed < total:
            with self._lock:
                while self._failed is None and self._written.prefix <= hashed:
                    self._lock.wait(0.5)
                self._check_locked()
                filled = self._written.prefix
            while hashed < filled:
                chunk = os.pread(fd, min(CHUNK, filled - hashed), hashed)
                if not chunk:
                    raise IntegrityError(f"staging file of {self.where} ends early")
                digest.update(chunk)
                if self.sha256 is not None:
                    self.sha256.update(chunk)
                hashed += len(chunk)
            if write_behind and (hashed - flushed >= hashing.WRITE_BEHIND or hashed == total):
                hashing.start_writeback(fd, flushed, hashed - flushed)
                flushed = hashed
        return str(digest.hexdigest())

    # -- failures ------------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._failed is None:
                self._failed = error
            self._lock.notify_all()

    def _check(self) -> None:
        with self._lock:
            self._check_locked()

    def _check_locked(self) -> None:
        if self._failed is not None:
            raise Stopped() from self._failed


def _empty(error: BaseException) -> bool:
    """Whether ``error`` is the 416 that a Range on an empty object answers."""
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError) and (
        error.response.get("Error", {}).get("Code") == "InvalidRange"
        or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416
    )


def _preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks (a full disk fails now, not half-way), else set its size."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        import errno

        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def mismatch(
    digest: str, size: int, sha256: str | None,
    want_digest: str, want_size: int | None, want_sha256: str | None,
) -> tuple[str | int, str | int, str] | None:  # fmt: skip
    """(expected, found, what) for the first property that does not match, or None."""
    if want_size is not None and size != want_size:
        return want_size, size, "size"
    if digest != want_digest:
        return want_digest, digest, "BLAKE3 digest"
    if want_sha256 is not None and sha256 != want_sha256:
        return want_sha256, sha256 or "unknown", "SHA-256"
    return None
