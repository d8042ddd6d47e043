"""Publish, then record: the one step that moves verified staging files into the store.

Put, fetch and pull all end here. Under the write lock, each staged file whose blob is not
stored yet is published into ``blobs/`` (renamed, made read-only, synced), and only then are
the blob rows written, in the same IMMEDIATE transaction; so a crash leaves at most a file
without a row, never a row without its file (docs/architecture.md). The step is safe to run
again after a rollback: a file published by a rolled-back try is found in place.

``Recorder`` adds what a transfer records besides (its upstream checksums as aliases: SHA-256,
SHA-1, MD5; the URL's source; a name) and checks a stored blob's checksums before anyone
records them as aliases. The transfer types are
only annotations here, so this module stays light: ``put`` imports it at start-up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cas.errors import IntegrityError, StoreError, os_error
from cas.logs import log
from cas.refs import CHECKSUM_LABELS
from cas.storage import queries as q
from cas.storage import sources
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.storage.hashing import CHUNK_SIZE
from cas.storage.staging import Staged

if TYPE_CHECKING:
    from cas.transfer.request import Download, Expected


#: A callable returning the wall time, in seconds since the epoch (``time.time``).
Clock = Callable[[], float]


@dataclass(frozen=True)
class Fetched:
    """The outcome of one fetch or pull of one blob."""

    digest: str
    size: int
    downloaded: bool  #: False when served from the store without network
    stored: int | None = None  #: bytes the store holds after recording a download


@dataclass(frozen=True)
class Keep:
    """One verified transfer to record (``Recorder.keep`` says what each field does)."""

    result: Download
    url: str | None
    name: str | None
    expected: Expected
    via: str
    source: bool = True


class Restage(Exception):
    """Staged files vanished between the check and the transaction (a concurrent cleanup
    removed a blob that a rolled-back try had published): stage them again."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(indices)
        self.indices = indices


def publish_and_record(conn: Connection, blobs: BlobStore, items: Sequence[tuple[str, int]],
                       files: Sequence[Staged | None], now: float, *, sync: bool = True) -> int:
    """Inside ``conn``'s write transaction, publish what is not stored yet and record a row
    for every item; return the bytes that were stored already.

    ``items`` are (digest, size); ``files[i]`` is the staged file of ``items[i]``, or None when
    its content was found stored before staging. Without ``sync``, published files are not
    fsynced one by one: their shard folders are synced here, their data before (one syncfs of
    the batch). Raises Restage naming the items to stage again.
    """
    known = 0
    missing = []
    publishing = []
    seen = set()
    for index, (digest, size) in enumerate(items):
        if digest in seen:
            continue
        seen.add(digest)
        file = files[index]
        if blobs.has(digest, size):
            if file is None or not file.published:  # not by a rolled-back try of this one
                known += size
        elif file is None or file.published or not os.path.exists(file.path):
            missing.append(index)
        else:
            publishing.append(file)
    if missing:
        raise Restage(missing)
    for file in publishing:
        blobs.publish(file, sync=sync)
    if not sync:
        blobs.sync_shards([file.digest for file in publishing])
    q.record_blobs(conn, list(items), now)
    return known


class Recorder:
    """Records verified transfers (from an origin or the remote tier) in one store."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, clock: Clock) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._clock = clock

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
        return self.keep_many([Keep(result, url, name, expected, via, source)])[0]

    def keep_many(self, batch: Sequence[Keep], *, discard: bool = True) -> list[Fetched]:
        """``keep`` of several transfers in one transaction: all are recorded, or none. Without
        ``discard`` the staged files stay after a failure, to be kept one by one."""
        try:
            stored = self._catalog.write(lambda conn: self._record(conn, batch))
        except Restage as restage:
            first = batch[restage.indices[0]]
            raise StoreError(f"blob {first.result.staged.digest} was removed by a concurrent"
                             f" cleanup while being stored from {first.via}; fetch it"
                             " again") from None  # fmt: skip
        except OSError as error:
            raise os_error(error, f"cannot store {batch[0].via}") from error
        finally:
            if discard:
                for keep in batch:
                    keep.result.staged.discard()
        kept = []
        for keep in batch:
            result, staged = keep.result, keep.result.staged
            # Content that was stored already saved no transfer: its bytes came over the network
            # (or from the remote) all the same, so it is not counted as saved by dedup.
            for counter, amount in (
                (Counter.DOWNLOADS_SUCCEEDED, 1),
                (Counter.DOWNLOAD_RETRIES, result.attempts - 1),
                (Counter.RESUME_SAVED_BYTES, result.resumed),
            ):
                self._catalog.count(counter, amount)
            log.info(
                "fetched %s (%d bytes) from %s%s%s",
                staged.digest, staged.size, keep.via,
                f" as {keep.name!r}" if keep.name else "",
                f"; resuming saved {result.resumed} bytes" if result.resumed else "",
            )  # fmt: skip
            kept.append(Fetched(staged.digest, staged.size, downloaded=True, stored=stored))
        return kept

    def _record(self, conn: Connection, batch: Sequence[Keep]) -> int:
        """Publish and record, under the write lock; the bytes the store now holds. A batch's
        shard folders are synced once each (its files were fsynced when staged)."""
        now = self._clock()
        files = [keep.result.staged for keep in batch]
        publish_and_record(conn, self._blobs, [(f.digest, f.size) for f in files], files, now,
                           sync=len(batch) == 1)  # fmt: skip
        for keep in batch:
            result, staged, expected = keep.result, keep.result.staged, keep.expected
            for algorithm, value in result.upstream.items():
                q.record_alias(conn, algorithm, value, staged.digest)
            if keep.source and keep.url is not None:
                found = result.validators
                q.record_source(conn, keep.url, staged.digest, now, found.etag,
                                found.last_modified)  # fmt: skip
                if not expected.pinned:  # the names that follow this URL follow its new content
                    sources.follow(conn, keep.url, staged.digest, staged.size, now)
            if keep.name is not None:
                q.set_name(
                    conn, keep.name, staged.digest, now, url=keep.url,
                    sha256=result.sha256 or expected.sha256, expected_size=staged.size,
                    floating=keep.source and not expected.pinned,
                )  # fmt: skip
        return q.stored_totals(conn)[0]

    # -- a stored blob's upstream checksums, checked before they are recorded as aliases ------

    def confirm(self, digest: str, wanted: dict[str, str], where: str | None) -> None:
        """Check that the stored blob ``digest`` has the upstream checksums ``wanted``
        (algorithm -> hex) before a caller records them (the remote tier naming a stored blob),
        and record them as its aliases.

        Raises IntegrityError when it has not (``where`` names the fixture in the message).
        """
        with self._catalog.read() as conn:
            seen = {algorithm: q.find_alias(conn, algorithm, value)
                    for algorithm, value in wanted.items()}  # fmt: skip
        for algorithm, other in seen.items():
            if other is not None and other != digest:
                raise IntegrityError(
                    f"{algorithm} {wanted[algorithm]} is the content {other}, not {digest};"
                    f" check the expected digests of {where}",
                    expected=digest,
                    found=other,
                )
        unseen = {algorithm: wanted[algorithm] for algorithm, other in seen.items() if not other}
        if not unseen:
            return
        self.confirmed(digest, unseen, where)

        def work(conn: Connection) -> None:
            for algorithm, value in unseen.items():
                q.record_alias(conn, algorithm, value, digest)

        self._catalog.write(work)

    def confirmed(self, digest: str, wanted: dict[str, str], where: str | None) -> dict[str, str]:
        """``wanted`` (algorithm -> hex), once the stored blob's bytes are hashed (one pass)
        and found to have each; else IntegrityError naming the algorithm and both values, as a
        download of other content would raise."""
        found = self.checksums_of(digest, tuple(wanted))
        for algorithm, value in wanted.items():
            if found[algorithm] != value:
                raise IntegrityError(
                    f"content {digest} has {CHECKSUM_LABELS[algorithm]} {found[algorithm]},"
                    f" not the expected {value}; check the expected digests of {where}",
                    expected=value,
                    found=found[algorithm],
                )
        return wanted

    def checksums_of(self, digest: str, algorithms: tuple[str, ...]) -> dict[str, str]:
        """The upstream checksums (hashlib names) of a stored blob's bytes, computed now in one
        pass (StoreError if unreadable)."""
        try:
            hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
            with self._blobs.open(digest) as blob:
                for chunk in iter(lambda: blob.read(CHUNK_SIZE), b""):
                    for hasher in hashers.values():
                        hasher.update(chunk)
            return {name: hasher.hexdigest() for name, hasher in hashers.items()}
        except OSError as error:
            raise os_error(error, f"cannot read blob {digest} (`cas verify` checks it)") from error
