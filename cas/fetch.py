"""Fetching into the store: serve what is already known, else download once, verify, publish.

Policy over two mechanisms: cas/download.py moves and verifies bytes, the catalog knows what is
stored. A fetch is answered without network when its expected BLAKE3 is stored, when its
expected SHA-256 was seen before for a stored blob (the ``aliases`` table), or, when it expects
no digest, when the URL's last content is still stored (the ``sources`` table). Otherwise one
thread of one process downloads (single flight: the others wait on its lock, then find the blob
on their re-check), and the verified staging file is published and recorded in one write
transaction, as ``Store.put`` does: file first, then rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import queries as q
from .blobs import BlobStore
from .catalog import Catalog, Connection
from .download import Download, Downloader, Expected, Progress, check_url
from .errors import DownloadError, IntegrityError, StoreError, UsageError
from .metrics import Counter
from .refs import check_digest, check_name

if TYPE_CHECKING:
    from .tier import RemoteTier

log = logging.getLogger("cas")


@dataclass(frozen=True)
class Fetched:
    """The outcome of one fetch."""

    digest: str
    size: int
    downloaded: bool  #: False when served from the store without network
    stored: int | None = None  #: bytes the store holds after recording a download


def expectation(
    blake3: str | None, sha256: str | None, size: int | None
) -> Expected:
    """Validate what a caller expects of a download; raise UsageError naming a bad value."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UsageError(f"size {size!r} is not a non-negative number of bytes")
    return Expected(
        blake3=check_digest(blake3, "blake3") if blake3 is not None else None,
        sha256=check_digest(sha256, "sha256") if sha256 is not None else None,
        size=size,
    )


class Fetcher:
    """Fetches for one store: its blobs, its catalog and its downloader."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, downloader: Downloader) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self.downloader = downloader
        #: The shared remote tier (issue 8, cas/tier.py), tried before the origin; set by the
        #: store when the ``remote`` setting names one.
        self.tier: RemoteTier | None = None

    def fetch(
        self,
        url: str,
        *,
        name: str | None = None,
        blake3: str | None = None,
        sha256: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Fetched:
        """The content of ``url`` in the store, downloaded only if it is not known already.

        Raises UsageError for bad arguments, DownloadError, IntegrityError (the content does
        not match what was expected), StoreError (the content cannot be written).
        """
        check_url(url)
        if name is not None:
            check_name(name)
        expected = expectation(blake3, sha256, size)
        served = self._serve(url, name, expected)
        if served is not None:
            return served
        keys = [f"url:{url}"]
        keys += [f"blake3:{expected.blake3}"] if expected.blake3 else []
        keys += [f"sha256:{expected.sha256}"] if expected.sha256 else []
        with self.downloader.single_flight(keys):
            # Another thread or process may have fetched it while this one waited.
            served = self._serve(url, name, expected)
            if served is not None:
                return served
            # -- issue 8: a local miss tries the remote tier before the origin ----------------
            if self.tier is not None:
                pulled = self.tier.read_through(url, name, expected)
                if pulled is not None:
                    return pulled
            fetched = self._download(url, name, expected, progress)
        if self.tier is not None:  # outside the lock: the others find the blob stored already
            self.tier.offer(fetched, url, name, expected)
        # -- end of issue 8 --------------------------------------------------------------------
        return fetched

    # -- served from the store -------------------------------------------------------------------

    def _known(self, conn: Connection, url: str, expected: Expected) -> Any:
        """The stored blob row that answers this fetch, or None."""
        if expected.blake3 is not None:
            digest: str | None = expected.blake3
            if expected.sha256 is not None:
                seen = q.find_alias(conn, "sha256", expected.sha256)
                if seen is not None and seen != expected.blake3:
                    raise IntegrityError(
                        f"sha256 {expected.sha256} is the content {seen}, not the expected"
                        f" blake3 {expected.blake3}; check the expected digests of {url}",
                        expected=expected.blake3,
                        found=seen,
                    )
        elif expected.sha256 is not None:
            digest = q.find_alias(conn, "sha256", expected.sha256)
        else:
            digest = q.find_source(conn, url)
        row = q.find_blob(conn, digest) if digest is not None else None
        if row is None or not self._blobs.has(row.digest, row.size):
            return None
        if expected.size is not None and row.size != expected.size:
            if expected.blake3 is None and expected.sha256 is None:
                return None  # what the URL gave last time is not what is expected now
            raise IntegrityError(
                f"content {row.digest} is {row.size} bytes, not the expected {expected.size};"
                f" check the expected size of {url}",
                expected=expected.size,
                found=row.size,
            )
        return row

    def _serve(self, url: str, name: str | None, expected: Expected) -> Fetched | None:
        with self._catalog.read() as conn:
            row = self._known(conn, url, expected)
        if row is None:
            return None
        if name is not None:

            def work(conn: Connection) -> bool:
                # Name it only if it is still there: cleanup may have removed it meanwhile.
                if q.find_blob(conn, row.digest) is None:
                    return False
                q.set_name(
                    conn, name, row.digest, time.time(),
                    url=url, sha256=expected.sha256, expected_size=row.size,
                )  # fmt: skip
                return True

            if not self._catalog.write(work):
                return None
        self._catalog.touch(row.digest, row.last_access)
        self._catalog.count(Counter.HITS)
        log.debug("%s served from the store as %s", url, row.digest)
        return Fetched(row.digest, row.size, downloaded=False)

    # -- downloaded ------------------------------------------------------------------------------

    def _download(
        self, url: str, name: str | None, expected: Expected, progress: Progress | None
    ) -> Fetched:
        try:
            result = self.downloader.download(
                url, expected, progress,
                received=lambda amount: self._catalog.count(Counter.DOWNLOADED_BYTES, amount),
            )  # fmt: skip
        except (DownloadError, IntegrityError) as error:
            self._catalog.count(Counter.DOWNLOADS_FAILED)
            self._catalog.count(Counter.DOWNLOAD_RETRIES, max(getattr(error, "attempts", 1) - 1, 0))
            raise
        except OSError as error:
            self._catalog.count(Counter.DOWNLOADS_FAILED)
            raise StoreError(f"cannot download {url}: {error.strerror or error}") from error
        return self.keep(result, url=url, name=name, expected=expected, via=url)

    def keep(
        self,
        result: Download,
        *,
        url: str | None,
        name: str | None,
        expected: Expected,
        via: str,
        source: bool = True,
    ) -> Fetched:
        """Publish and record a verified transfer from ``via`` (the origin, or the remote tier).

        ``name`` remembers ``url`` as its source; ``source`` also records that ``url`` gave this
        content (not for a pull, where that is only the remote's word). Raises StoreError.
        """
        staged = result.staged
        try:
            known, stored = self._catalog.write(
                lambda conn: self._record(conn, url, name, expected, result, source)
            )
        except OSError as error:
            raise StoreError(f"cannot store {via}: {error.strerror or error}") from error
        finally:
            staged.discard()
        for counter, amount in (
            (Counter.DOWNLOADS_SUCCEEDED, 1),
            (Counter.DOWNLOAD_RETRIES, result.attempts - 1),
            (Counter.RESUME_SAVED_BYTES, result.resumed),
            (Counter.DEDUP_SAVED_BYTES, staged.size if known else 0),
        ):
            self._catalog.count(counter, amount)
        log.info(
            "fetched %s (%d bytes) from %s%s%s",
            staged.digest, staged.size, via,
            f" as {name!r}" if name else "",
            f"; resuming saved {result.resumed} bytes" if result.resumed else "",
        )  # fmt: skip
        return Fetched(staged.digest, staged.size, downloaded=True, stored=stored)

    def _record(
        self, conn: Connection, url: str | None, name: str | None, expected: Expected,
        result: Download, source: bool = True,
    ) -> tuple[bool, int]:  # fmt: skip
        """Publish and record, under the write lock; whether the content was stored already,
        and the bytes the store now holds. Safe to run again after a rollback."""
        staged = result.staged
        known = self._blobs.has(staged.digest, staged.size)
        if not known:
            self._blobs.publish(staged)
        now = time.time()
        q.record_blobs(conn, [(staged.digest, staged.size)], now)
        if result.sha256 is not None:
            q.record_alias(conn, "sha256", result.sha256, staged.digest)
        if source and url is not None:
            q.record_source(conn, url, staged.digest, now)
        if name is not None:
            q.set_name(
                conn, name, staged.digest, now,
                url=url, sha256=result.sha256 or expected.sha256, expected_size=staged.size,
            )  # fmt: skip
        return known, q.stored_totals(conn)[0]
