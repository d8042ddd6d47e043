"""Fetching with unpack: the archive is fetched and verified as any fetch, then unpacked once.

``Unpacker.fetch(url, unpack=kind, …)`` answers with the unpacked content's digest: the one
file of a bare gz, bz2, xz or zst, or the tree of a zip or tar (cas/storage/archives.py and
extract.py do the unpacking, safely and within bounds). Each unpacking is recorded as
(archive digest, kind) -> result in the ``unpacked`` table, so a later fetch of the same archive
with the same unpack is served from the store without network and without unpacking again,
also once the archive blob itself was evicted; the expected digests and size of a fetch are
the archive's. A name points at the result and remembers the archive's URL and the kind, so an
evicted fixture is fetched and unpacked again (``refetch``).

Unpacking is single flight too: the threads and processes that fetch the same archive with the
same kind at once wait on one lock (``unpack:<archive>:<kind>``), and all but the first find its
result recorded when they get it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cas.errors import IntegrityError, StoreError, os_error
from cas.logs import log
from cas.ops.fetch import expectation
from cas.ops.put import PUT_BATCH
from cas.ops.record import Clock, Fetched, Restage, publish_and_record
from cas.refs import check_name
from cas.storage import queries as q
from cas.storage.archives import FILE_KINDS, Budget, check_kind, decide, decompress, limit
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.storage.staging import Staged
from cas.storage.unpacks import Unpacked, archive_of, demote, find_unpacked, record_unpacked
from cas.transfer.request import Expected, Progress, check_url
from cas.urls import redact

if TYPE_CHECKING:
    from cas.storage.trees import Tree


__all__ = ["FetchArchive", "Unpacker"]


class FetchArchive(Protocol):
    """Fetches the archive itself into the store (the store's fetch without unpack)."""

    def __call__(self, url: str, *, name: str | None, blake3: str | None, sha256: str | None,
                 sha1: str | None, md5: str | None, size: int | None, refresh: bool,
                 headers: object, progress: Progress | None) -> Fetched: ...


#: Holds the single-flight locks of some keys (transfer/flight.py), with a heartbeat.
Locks = Callable[[Iterable[str]], AbstractContextManager[None]]


class Unpacker:
    """Fetch-and-unpack for one store."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, fetch: FetchArchive, *,
                 locks: Locks, beat: Callable[[], None], clock: Clock, ceiling: int,
                 ) -> None:  # fmt: skip
        """``ceiling`` bounds what any archive unpacks to (``max_cache_size``)."""
        self._blobs = blobs
        self._catalog = catalog
        self._fetch = fetch
        self._locks = locks
        self._beat = beat
        self._clock = clock
        self._ceiling = ceiling

    def fetch(self, url: str, *, name: str | None = None, blake3: str | None = None,
              sha256: str | None = None, sha1: str | None = None, md5: str | None = None,
              size: int | None = None, unpack: str | None = None, refresh: bool = False,
              headers: object = None, progress: Progress | None = None) -> Fetched:  # fmt: skip
        """The content of the archive at ``url`` unpacked as ``unpack``, in the store (without
        ``unpack``: the content of ``url``, as the fetch given).

        The expected digests and ``size`` are the archive's; with ``refresh`` the archive's URL
        is revalidated first, and a changed archive is unpacked anew. Raises UsageError for bad
        arguments or an archive whose kind "auto" cannot tell, IntegrityError for an archive
        that does not match, is not the kind asked for, is damaged, unsafe or a bomb, and
        what a fetch raises.
        """
        def fetch(name: str | None) -> Fetched:
            return self._fetch(url, name=name, blake3=blake3, sha256=sha256, sha1=sha1, md5=md5,
                               size=size, refresh=refresh, headers=headers, progress=progress)

        if unpack is None:
            return fetch(name)
        kind = check_kind(unpack)
        shown = check_url(redact(url)) if isinstance(url, str) else check_url(url)
        if name is not None:
            check_name(name)
        expected = expectation(blake3, sha256, size, sha1, md5)
        served = None if refresh else self._served(shown, name, expected, kind)
        if served is not None:
            return served
        archive = fetch(None)
        return self._unpacked(archive, shown, name, kind)

    def refetch(self, url: str, *, name: str | None, blake3: str, sha256: str | None,
                size: int | None, unpack: str | None) -> Fetched:
        """Fetch again the named fixture whose content ``blake3`` was evicted, from its
        recorded source (``sha256`` and ``size`` are the name's). With ``unpack``, the
        archive expected is the one recorded as giving that content unpacked; IntegrityError
        if it gives other content now."""
        if unpack is None:
            return self.fetch(url, name=name, blake3=blake3, sha256=sha256, size=size)
        kind, digest = unpack, blake3
        with self._catalog.read() as conn:
            row = archive_of(conn, digest, kind)
        fetched = self.fetch(url, name=name, unpack=kind,
                             blake3=row.archive if row else None,
                             size=row.archive_size if row else None)  # fmt: skip
        if fetched.digest != digest:
            raise IntegrityError(
                f"{url} unpacked as {kind} gives {fetched.digest}, not {digest} as before",
                expected=digest, found=fetched.digest,
            )  # fmt: skip
        return fetched

    # -- served from the store ---------------------------------------------------------------

    def _served(self, url: str, name: str | None, expected: Expected,
                kind: str) -> Fetched | None:  # fmt: skip
        """The recorded result of unpacking the archive this fetch designates, if both the
        archive's identity is known without network and the result is stored."""
        with self._catalog.read() as conn:
            archive = self._known_archive(conn, url, expected)
            if archive is None:
                return None
            found = self._recorded(conn, archive, kind, url)
        if found is None:
            return None
        if expected.size is not None and found.archive_size != expected.size:
            raise IntegrityError(
                f"archive {archive} is {found.archive_size} bytes, not the expected"
                f" {expected.size}; check the expected size of {url}",
                expected=expected.size, found=found.archive_size,
            )  # fmt: skip
        return self._name_result(found, url, name, downloaded=False)

    @staticmethod
    def _known_archive(conn: Connection, url: str, expected: Expected) -> str | None:
        """The archive's digest, known without network: the expected BLAKE3 (if an expected
        SHA-256 is no other content's), an expected SHA-256 seen before, or, expecting
        nothing, what the URL gave last time."""
        seen = q.find_alias(conn, "sha256", expected.sha256) if expected.sha256 else None
        if expected.blake3 is not None:
            return expected.blake3 if expected.sha256 is None or seen == expected.blake3 else None
        if expected.sha256 is not None:
            return seen
        return q.find_source(conn, url)

    def _recorded(self, conn: Connection, archive: str, kind: str,
                  url: str) -> Unpacked | None:  # fmt: skip
        """What unpacking ``archive`` as ``kind`` gave. For "auto": as the URL's suffix says;
        without one, as the archive's bytes say when it is stored (None here: the unpacking
        path decides and finds it), else as it was unpacked before."""
        if kind != "auto":
            return find_unpacked(conn, archive, kind)
        from cas.storage.archives import suffix_kind

        by_suffix = suffix_kind(url)
        if by_suffix is not None:
            return find_unpacked(conn, archive, by_suffix)
        row = q.find_blob(conn, archive)
        if row is not None and self._blobs.has(row.digest, row.size):
            return None
        return find_unpacked(conn, archive, None)

    def _name_result(self, found: Unpacked, url: str, name: str | None,
                     downloaded: bool) -> Fetched | None:  # fmt: skip
        """Point ``name`` at a recorded result if it is stored; None if it is not."""

        def work(conn: Connection) -> int | None:
            row = q.find_blob(conn, found.digest)
            if row is None or not self._blobs.has(row.digest, row.size):
                return None
            if name is not None:
                q.set_name(conn, name, found.digest, self._clock(), url=url,
                           expected_size=row.size, unpack=found.kind)  # fmt: skip
            return int(row.size)

        if name is None:  # no write needed: a read answers
            with self._catalog.read() as conn:
                row = q.find_blob(conn, found.digest)
            size = row.size if row is not None and self._blobs.has(row.digest, row.size) else None
            if row is not None and size is not None:
                self._catalog.touch(row.digest, row.last_access)
        else:
            size = self._catalog.write(work)
        if size is None:
            return None
        self._catalog.count(Counter.HITS)
        log.debug("%s unpacked as %s is stored as %s", url, found.kind, found.digest)
        return Fetched(found.digest, size, downloaded=downloaded)

    # -- unpacked ------------------------------------------------------------------------------

    def _unpacked(self, archive: Fetched, url: str, name: str | None, kind: str) -> Fetched:
        """Unpack the stored ``archive`` as ``kind`` once, however many ask at once."""
        label = f"archive {url}"
        try:
            blob = self._blobs.open(archive.digest)
        except OSError as error:
            raise StoreError(f"archive {archive.digest} from {url} was removed by a concurrent"
                             " cleanup before it was unpacked; fetch it again") from error
        with blob:
            resolved = decide(kind, blob, url, label)
            with self._locks([f"unpack:{archive.digest}:{resolved}"]):
                with self._catalog.read() as conn:
                    found = find_unpacked(conn, archive.digest, resolved)
                if found is not None:  # unpacked by another while this one waited
                    done = self._name_result(found, url, name, archive.downloaded)
                    if done is not None:
                        return done
                budget = Budget(limit(archive.size, self._ceiling), archive.size, label,
                                beat=self._beat)  # fmt: skip
                try:
                    if resolved in FILE_KINDS:
                        result = self._one_file(blob, resolved, budget, archive, url, name)
                    else:
                        result = self._tree(blob, resolved, budget, archive, url, name)
                except OSError as error:
                    raise os_error(error, f"cannot unpack {label}") from error
        log.info("unpacked %s (%s, %d bytes) as %s: %s", url, archive.digest, archive.size,
                 resolved, result.digest)  # fmt: skip
        return result

    def _one_file(self, blob: BinaryIO, compression: str, budget: Budget, archive: Fetched,
                  url: str, name: str | None) -> Fetched:  # fmt: skip
        staging = self._blobs.staging
        with decompress(blob, compression, budget) as stream:
            staged = staging.stage_stream(stream)
        try:
            stored = self._catalog.write(
                lambda conn: self._record(conn, archive, compression, staged.digest,
                                          staged.size, url, name, staged)
            )
        except Restage:
            raise StoreError(f"blob {staged.digest} was removed by a concurrent cleanup while"
                             f" being stored from {url}; fetch it again") from None
        finally:
            staged.discard()
        return Fetched(staged.digest, staged.size, archive.downloaded, stored)

    def _tree(self, blob: BinaryIO, kind: str, budget: Budget, archive: Fetched, url: str,
              name: str | None) -> Fetched:  # fmt: skip
        """Stage every file of the archive as a blob while reading it (one write of each
        byte, hashed on the way), sync them at once, publish them in batches, then the tree's
        record (cas/storage/trees.py) with its rows, the unpacking and the name."""
        from cas.storage import trees
        from cas.storage.extract import extract
        from cas.storage.hashing import hasher

        staging = self._blobs.staging
        with staging.batch_sync() as sync:
            done = extract(blob, kind, budget,
                           lambda source: staging.stage_stream(source, sync=False))
            try:
                sync()
                try:
                    tree = trees.Tree.build(
                        (trees.TreeFile(path, member.staged.digest, member.staged.size,
                                        member.executable)
                         for path, member in done.files.items()),
                        done.empty_folders(),
                    )  # fmt: skip
                except IntegrityError as error:
                    raise IntegrityError(f"{budget.label}: {error}") from error
                record = tree.encode()
                digest = hasher()
                digest.update(record)
                staged = staging.stage_bytes(record, str(digest.hexdigest()))
                done.staged.append(staged)
                members = done.staged[:-1]
                for first in range(0, len(members), PUT_BATCH):
                    self._catalog.write(partial(self._publish, members[first:first + PUT_BATCH]))
                stored = self._catalog.write(
                    lambda conn: self._record(conn, archive, kind, staged.digest, staged.size,
                                              url, name, staged, tree)
                )
            except Restage:
                raise StoreError(f"files of {budget.label} were removed by a concurrent cleanup"
                                 " while being stored; fetch it again") from None
            finally:
                done.discard()
        return Fetched(staged.digest, staged.size, archive.downloaded, stored)

    def _publish(self, batch: list[Staged], conn: Connection) -> int:
        """Under the write lock: publish and record a batch of staged members."""
        return publish_and_record(conn, self._blobs, [(each.digest, each.size) for each in batch],
                                  batch, self._clock(), sync=False)  # fmt: skip

    def _record(self, conn: Connection, archive: Fetched, kind: str, digest: str, size: int,
                url: str, name: str | None, staged: Staged,
                tree: Tree | None = None) -> int:  # fmt: skip
        """Under the write lock: publish the staged result (a tree's record, whose members
        must be stored), remember what the archive gave, name it; the bytes the store holds
        after."""
        now = self._clock()
        if tree is not None:
            from cas.storage import trees

            if trees.missing_members(conn, (each.digest for each in tree.files)):
                raise Restage([])
        publish_and_record(conn, self._blobs, [(digest, size)], [staged], now)
        if tree is not None:
            trees.record(conn, digest, tree)
        record_unpacked(conn, Unpacked(archive.digest, kind, digest, archive.size), now)
        demote(conn, archive.digest)
        if name is not None:
            q.set_name(conn, name, digest, now, url=url, expected_size=size, unpack=kind)
        return q.stored_totals(conn)[0]

