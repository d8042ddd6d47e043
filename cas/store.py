"""The public face of a store: put, path, tag, remove and listing over blobs and catalog.

Order of files and rows (docs/architecture.md): a blob's file is published, then its row is
inserted, both inside one IMMEDIATE transaction; a row is deleted and committed first, and the
file is unlinked later, again under the write lock and only if no row came back meanwhile. So a
crash leaves at most a file without a row, never a row without its file.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NamedTuple, TypeVar, Union

from cas.errors import (
    CasError,
    ConfigError,
    IntegrityError,
    InUse,
    NotFound,
    StoreError,
    UsageError,
    os_error,
)
from cas.ops import eviction
from cas.ops.cleanup import Cleaner
from cas.ops.fetch import Fetched, Fetcher
from cas.ops.leases import Lease, LeaseKeeper, dead_leases
from cas.refs import check_name, is_digest
from cas.settings import (
    Settings,
    default_root,
    load_config,
    parse_duration,
    parse_interval,
    parse_size,
)
from cas.storage import queries as q
from cas.storage.blobs import BlobStore, quarantined
from cas.storage.catalog import Catalog, Connection
from cas.storage.hashing import hasher
from cas.storage.metrics import Counter, Stats, Usage
from cas.storage.opening import open_files
from cas.storage.staging import Staged, staging_debris, staging_usage
from cas.transfer.http import Downloader
from cas.transfer.request import Progress

if TYPE_CHECKING:
    from cas.ops.tier import RemoteTier, TransferReport
    from cas.ops.verify import VerifyReport

log = logging.getLogger("cas")

T = TypeVar("T")

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


@dataclass(frozen=True)
class Entry:
    """One line of a listing: a name and its blob, or a blob without a name."""

    name: str | None
    digest: str
    size: int | None
    last_access: float | None
    pinned: bool
    source: str | None
    leases: int = 0  #: live leases on the blob (SPEC: ``ls`` shows lease state)
    damaged: bool = False  #: its file is missing or of the wrong size, or verify found it so

    @property
    def present(self) -> bool:
        """Whether the blob is in the store (a named fixture's may have been evicted)."""
        return self.size is not None

    @property
    def state(self) -> str:
        """``stored``; ``damaged`` (its row is there but its file is missing or of the wrong
        size, or verify found it damaged and dropped the row); or ``evicted`` (cleanup removed
        it; a named fixture with a source comes back when used)."""
        if self.damaged:
            return "damaged"
        return "stored" if self.present else "evicted"


class _Target(NamedTuple):
    """What a ref resolved to."""

    digest: str
    name: str | None
    size: int | None
    last_access: float | None


class _Restage(Exception):
    """Blobs vanished between the check and the transaction: stage them after all."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(indices)
        self.indices = indices


def _refused_when_closed(cls: type[T]) -> type[T]:
    """Make every public method of ``cls`` raise StoreError once the store is closed: a closed
    store that kept working would quietly reopen its catalog (issue 13, item 19)."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or name in _OPEN_OR_CLOSED or not inspect.isfunction(method):
            continue

        def guarded(self: Any, *args: Any, __method: Any = method, **kwargs: Any) -> Any:
            if self._closed:
                raise StoreError(f"store {self.root} is closed")
            return __method(self, *args, **kwargs)

        setattr(cls, name, functools.wraps(method)(guarded))
    return cls


#: Methods that work on a closed store too.
_OPEN_OR_CLOSED = frozenset({"close", "open"})


@_refused_when_closed
class Store:
    """A content-addressed store at one root, safe to share between threads and processes."""

    def __init__(self, root: Path, settings: Settings, blobs: BlobStore, catalog: Catalog) -> None:
        self.root = root
        self.settings = settings
        self._blobs = blobs
        self._catalog = catalog
        self._keeper = LeaseKeeper(catalog, settings.lease_ttl)
        self._cleaner = Cleaner(blobs, catalog)
        self._cleaning: threading.Thread | None = None
        self._cleaning_lock = threading.Lock()
        self._fetcher = Fetcher(blobs, catalog, Downloader(
            blobs.tmp, blobs.locks,
            timeout=settings.download_timeout, retries=settings.retries,
            max_size=settings.max_cache_size,
        ))  # fmt: skip
        # Issue 8: the shared remote tier, when `remote` names one (boto3 loads on first use).
        self._tier: RemoteTier | None = None
        if settings.remote is not None:
            from cas.ops.tier import RemoteTier
            from cas.transfer.s3 import Remote

            remote = Remote(settings.remote, timeout=settings.download_timeout,
                            retries=settings.retries)  # fmt: skip
            self._tier = RemoteTier(remote, blobs, catalog, self._fetcher,
                                    push=settings.remote_push)  # fmt: skip
        self._fetcher.tier = self._tier
        self._finalizer = weakref.finalize(self, _close, self._keeper, catalog)
        self._closed = False

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        given_as: str = "keyword argument",
        **settings: Any,
    ) -> Store:
        """Open (creating if needed) the store at ``root``, else ``$CAS_HOME`` or the user cache.

        ``settings`` override every other source; ``config_file`` and ``profile`` take the place
        of CAS_CONFIG and CAS_PROFILE (cas/settings.py). A store that cannot be written opens
        read-only (storage/opening.py). Raises ConfigError for a bad setting, StoreError when the
        root cannot be used, CatalogError when catalog.db cannot or is on NFS or SMB.
        ``given_as`` labels these arguments in errors (the CLI passes "command line", so that
        they name its --config and --profile flags).
        """
        path = Path(root).expanduser() if root is not None else default_root()
        path = path.absolute()
        if path.exists() and not path.is_dir():
            raise StoreError(f"store root {path} is not a folder")
        resolved = load_config(path, settings, config_file=config_file, profile=profile,
                               given_as=given_as).settings
        blobs, catalog = open_files(path, resolved)
        return cls(path, resolved, blobs, catalog)

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only (it cannot be written)."""
        return self._catalog.read_only is not None

    def flush(self) -> None:
        """Write now what waits in memory: access times and counters (close does it too)."""
        self._catalog.flush()

    def close(self) -> None:
        """Finish a running automatic cleanup, give up this process's leases, write what
        waits in memory (access times, counters) and release the catalog. Closing twice is
        harmless; any other method of a closed store raises StoreError."""
        if self._closed:
            return
        self.wait_for_cleanup()
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cas.Store {str(self.root)!r}>"

    # -- writing -------------------------------------------------------------------------------

    def put(self, source: Source, *, name: str | None = None) -> str:
        """Store the content of a path, bytes, or binary file; return its BLAKE3 digest.

        Content already stored is not written again. Raises NotFound for a missing source
        file, UsageError for a folder or a bad name.
        """
        return self._put_batch([(name, source)])[0]

    def put_many(self, sources: Mapping[str, Source] | Iterable[Source]) -> list[str]:
        """Store many contents at once; return their digests, in order.

        A mapping stores each content under its name (``{"fixtures/a.bin": b"...", ...}``);
        any other iterable stores them unnamed. The same guarantees as ``put``, for a fraction
        of the cost per item when items are small: each batch of up to ``PUT_BATCH`` items is
        one transaction, and its staged files are made durable by one filesystem sync instead
        of an fsync each. A bad item raises before its batch is recorded; earlier batches stay.
        """
        items: Iterable[tuple[str | None, Source]]
        if isinstance(sources, Mapping):
            items = sources.items()
        elif isinstance(sources, str | bytes | bytearray | memoryview | os.PathLike) or hasattr(
            sources, "read"
        ):
            raise UsageError("put_many takes a collection of sources; use put for one")
        else:
            items = ((None, source) for source in sources)
        digests: list[str] = []
        batch: list[tuple[str | None, Source]] = []
        for name, source in items:
            if isinstance(source, bytearray | memoryview):
                source = bytes(source)  # a buffer the caller reuses must not change meanwhile
            batch.append((name, source))
            if len(batch) == PUT_BATCH:
                digests += self._put_batch(batch)
                batch = []
        if batch:
            digests += self._put_batch(batch)
        return digests

    def _put_batch(self, batch: list[tuple[str | None, Source]]) -> list[str]:
        """Stage, sync, publish and record ``batch`` as one transaction.

        One item is synced with its own fsyncs. More share one syncfs for the staged files,
        outside the write lock, and an fsync of each shard folder they are renamed into, under
        it; both before the commit, so a row is never durable before its file
        (docs/architecture.md).
        """
        for name, _ in batch:
            if name is not None:
                check_name(name)
        alone = len(batch) == 1
        staged: list[Staged | None] = []
        try:
            with self._blobs.batch_sync() as sync_staged:
                items = [self._stage_item(source, staged, sync=alone) for _, source in batch]
                if not alone:
                    sync_staged()
                while True:
                    try:
                        known, stored = self._catalog.write(
                            lambda conn: self._record(conn, batch, items, staged, sync=alone)
                        )
                        break
                    except _Restage as missing:  # removed since it was found: stage it again
                        for index in missing.indices:
                            source = batch[index][1]
                            if not isinstance(source, bytes | bytearray | memoryview):
                                raise StoreError(
                                    f"blob {items[index][0]} was removed by a concurrent"
                                    " cleanup while being stored; put it again"
                                ) from None
                            staged[index] = self._blobs.stage_bytes(source, items[index][0],
                                                                    sync=alone)
                        if not alone:
                            sync_staged()
        except OSError as error:
            raise os_error(error, "cannot store the content") from error
        finally:
            for each in staged:
                if each is not None:
                    each.discard()
        if known:
            self._catalog.count(Counter.DEDUP_SAVED_BYTES, known)
        for (name, _), (digest, size) in zip(batch, items, strict=True):
            log.debug("put %s (%d bytes)%s", digest, size, f" as {name!r}" if name else "")
        self._cleanup_if_needed(stored)
        return [digest for digest, _ in items]

    def _stage_item(self, source: Source, staged: list[Staged | None], *,
                    sync: bool) -> tuple[str, int]:
        """Stage one source unless it is bytes already stored; append what was staged."""
        if isinstance(source, bytes | bytearray | memoryview):
            digest, size = _digest_of(source), len(source)
            staged.append(
                None if self._blobs.has(digest, size)
                else self._blobs.stage_bytes(source, digest, sync=sync)
            )
            return digest, size
        file = self._stage(source, sync=sync)
        staged.append(file)
        return file.digest, file.size

    def _stage(self, source: Any, *, sync: bool = True) -> Staged:
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            try:
                return self._blobs.stage_file(path, sync=sync)
            except FileNotFoundError as error:
                raise NotFound(f"source file {str(path)!r} does not exist") from error
            except IsADirectoryError as error:
                raise UsageError(f"{str(path)!r} is a folder, not a file") from error
            except PermissionError as error:
                raise CasError(f"cannot read {str(path)!r}: permission denied") from error
        if hasattr(source, "read"):
            try:
                return self._blobs.stage_stream(source, sync=sync)
            except TypeError as error:
                raise UsageError(str(error)) from error
        raise UsageError(
            f"cannot put a {type(source).__name__}: give a path, bytes or a binary file"
        )

    def _record(self, conn: Connection, batch: list[tuple[str | None, Source]],
                items: list[tuple[str, int]], staged: list[Staged | None], *,
                sync: bool) -> tuple[int, int]:
        """Publish what is not stored yet and record the rows, under the write lock; return
        the bytes that were already stored, and the bytes the store now holds."""
        known = 0
        missing = []
        publishing = []
        seen = set()
        for index, (digest, size) in enumerate(items):
            if digest in seen:
                continue
            seen.add(digest)
            file = staged[index]
            if self._blobs.has(digest, size):
                if file is None or not file.published:  # not by a rolled-back try of this one
                    known += size
            elif file is None or file.published or not os.path.exists(file.path):
                missing.append(index)
            else:
                publishing.append(file)
        if missing:
            raise _Restage(missing)
        for file in publishing:
            self._blobs.publish(file, sync=sync)
        if not sync:
            self._blobs.sync_shards([file.digest for file in publishing])
        now = time.time()
        q.record_blobs(conn, items, now)
        named = zip((name for name, _ in batch), (digest for digest, _ in items), strict=True)
        q.set_names(conn, [(name, digest) for name, digest in named if name is not None], now)
        return known, q.stored_totals(conn)[0]

    def tag(self, name: str, ref: str) -> str:
        """Point ``name`` at the blob ``ref`` names; return the digest."""
        check_name(name)

        def work(conn: Connection) -> str:
            target = self._resolve(conn, ref)
            if target.size is None:
                raise NotFound(f"{ref!r} has no blob in the store to tag")
            source = q.find_name(conn, ref) if target.name else None
            q.set_name(
                conn,
                name,
                target.digest,
                time.time(),
                url=source.url if source else None,
                sha256=source.sha256 if source else None,
            )
            return target.digest

        return self._catalog.write(work)

    def untag(self, name: str) -> None:
        """Remove a name; its blob stays. Raises NotFound for an unknown name."""
        check_name(name)
        if not self._catalog.write(lambda conn: q.delete_name(conn, name)):
            raise NotFound(f"no name {name!r} in the store")

    def remove(self, ref: str, *, force: bool = False) -> list[str]:
        """Remove a name or a digest; return the digests whose files were removed.

        A digest removes the blob and every name pointing at it. A name removes the name, and
        its blob too when no other name points at it.
        """
        def work(conn: Connection) -> list[str]:
            target = self._resolve(conn, ref)
            if target.name is not None:
                q.delete_name(conn, target.name)
                if q.names_of(conn, target.digest):
                    return []
            if force:
                q.delete_leases_of(conn, target.digest)  # void: their blob is gone
            else:
                self._check_not_leased(conn, target.digest, ref)
            self._blobs.check_removable([target.digest])
            if target.name is None:
                for other in q.names_of(conn, target.digest):
                    q.delete_name(conn, other)
            return [target.digest] if q.delete_blob(conn, target.digest) else []

        doomed = self._catalog.write(work)
        self._cleaner.unlink(doomed)
        return doomed

    def _check_not_leased(self, conn: Connection, digest: str, ref: str) -> None:
        now = time.time()
        live = q.live_leases(conn, digest, now, dead_leases(conn, now))
        if live:
            raise InUse(f"{ref!r} is leased ({live} live lease{'s' * (live > 1)})")

    # -- reading -------------------------------------------------------------------------------

    def _resolve(self, conn: Connection | Catalog, ref: str) -> _Target:
        """What ``ref`` names, read inside ``conn``'s transaction or alone on the catalog."""
        if not isinstance(ref, str):
            raise UsageError(f"a ref must be a digest or a name, not {type(ref).__name__}")
        if is_digest(ref):
            digest = ref.lower()
            row = q.find_blob(conn, digest)
            if row is None:
                raise NotFound(f"no blob {digest} in the store")
            return _Target(digest, None, row.size, row.last_access)
        check_name(ref)
        named = q.find_name(conn, ref)
        if named is None:
            raise NotFound(f"no name {ref!r} in the store")
        return _Target(named.digest, ref, named.size, named.last_access)

    def _locate(self, ref: str) -> str:
        """The digest of the whole, stored blob ``ref`` names, fetched again if it was evicted.

        Hits and misses are counted in memory (cas/storage/metrics.py): no write per read. The first
        lines are the hot path of every look-up, one SELECT and one lstat; anything unusual
        (a bad or unknown ref, an evicted or damaged blob) takes the full path below.
        """
        if type(ref) is str:
            row = q.stored_blob(self._catalog, ref)
            if row is not None and self._blobs.has(row[0], row[1]):
                self._catalog.touch(row[0], row[2])
                self._catalog.count(Counter.HITS)
                return row[0]
        try:
            target = self._resolve(self._catalog, ref)
        except NotFound:
            self._catalog.count(Counter.MISSES)
            raise
        missed = False  # one request is one miss or one hit, even when refetched
        if target.size is None or target.last_access is None:
            missed = True
            self._catalog.count(Counter.MISSES)
            target = self._refetch(ref, target)
            assert target.size is not None and target.last_access is not None  # _refetch checks
        if not self._blobs.has(target.digest, target.size):
            if not missed:
                self._catalog.count(Counter.MISSES)
            raise IntegrityError(
                f"blob {target.digest} is in the catalog but its file is missing or damaged;"
                " run `cas verify`",
                path=str(self._blobs.path_of(target.digest)),
            )
        self._catalog.touch(target.digest, target.last_access)
        if not missed:
            self._catalog.count(Counter.HITS)
        return target.digest

    def path(self, ref: str) -> Path:
        """The read-only path of the blob ``ref`` names. Raises NotFound for an unknown ref."""
        return self._blobs.path_of(self._locate(ref))

    def open_blob(self, ref: str) -> BinaryIO:
        """An open binary file of the blob's content."""
        digest = self._locate(ref)
        try:
            return self._blobs.open(digest)
        except OSError as error:
            raise IntegrityError(
                f"cannot open blob {digest}: {error.strerror}; run `cas verify`"
            ) from error

    def read_bytes(self, ref: str) -> bytes:
        """The whole content of the blob ``ref`` names."""
        with self.open_blob(ref) as blob:
            return blob.read()

    def entries(self) -> list[Entry]:
        """Every name with its blob, then every blob that has no name, with their live leases
        and whether a stored blob's file is missing or damaged (checked by size, not hashed)."""
        with self._catalog.read() as conn:
            rows = q.entries(conn)
            now = time.time()
            leases = q.live_lease_counts(conn, now, dead_leases(conn, now))
            damaged = q.damaged_digests(conn)

        def is_damaged(row: q.EntryRow) -> bool:
            if row.size is None:  # evicted, or dropped by verify as damaged
                return row.digest in damaged
            return not self._blobs.has(row.digest, row.size)

        return [
            Entry(row.name, row.digest, row.size, row.last_access, bool(row.pinned), row.url,
                  leases.get(row.digest, 0), is_damaged(row))
            for row in rows
        ]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    # -- fetching (issue 4) --------------------------------------------------------------------

    def fetch(
        self,
        url: str,
        *,
        name: str | None = None,
        blake3: str | None = None,
        sha256: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Store the content of ``url`` (http or https); return its BLAKE3 digest.

        No network when the content is known: an expected ``blake3`` already stored, a
        ``sha256`` seen before for a stored blob, or, expecting no digest, the URL's last
        content still stored. Otherwise one download for all threads and processes asking at
        once, resumed after interruptions, verified against every expected value before it
        enters the store. ``name`` remembers the source, so an evicted fixture comes back.
        ``progress(done, total)`` is called as bytes arrive. Raises UsageError, DownloadError,
        IntegrityError.
        """
        return self._fetch(
            url, name=name, blake3=blake3, sha256=sha256, size=size, progress=progress
        ).digest

    def _fetch(self, url: str, **options: Any) -> Fetched:
        try:
            fetched = self._fetcher.fetch(url, **options)
        except OSError as error:  # e.g. the lock or staging file of a full or read-only disk
            raise os_error(error, f"cannot fetch {url}") from error
        if fetched.stored is not None:
            self._cleanup_if_needed(fetched.stored)
        return fetched

    def sync(self, manifest_path: str | os.PathLike[str], jobs: int = 4) -> dict[str, str]:
        """Fetch every fixture of a manifest (SPEC "Manifest"), ``jobs`` at a time; return
        name -> digest. Raises CasError naming each failed fixture after the others finished,
        UsageError for a bad manifest (before anything is fetched)."""
        from cas.ops import manifest  # cas/ops/manifest.py drives this store's fetches

        report = manifest.sync(self, manifest_path, jobs=jobs)
        report.raise_for_failures()
        return report.digests

    def _refetch(self, ref: str, target: _Target) -> _Target:
        """Fetch a named fixture whose blob was evicted again from its recorded source."""
        with self._catalog.read() as conn:
            source = q.find_name(conn, target.name) if target.name is not None else None
        if source is None or source.url is None:
            raise NotFound(f"fixture {ref!r} is named but its blob {target.digest} is not stored")
        if not self.settings.auto_download:
            raise NotFound(
                f"fixture {ref!r} is not stored and auto_download is off;"
                f" fetch it from {source.url} or turn auto_download on"
            )
        log.info("fixture %r is not stored; fetching it again from %s", ref, source.url)
        self._fetch(source.url, name=target.name, blake3=target.digest, sha256=source.sha256,
                    size=source.expected_size)
        with self._catalog.read() as conn:
            again = self._resolve(conn, ref)
        if again.size is None or again.last_access is None:
            raise NotFound(f"fixture {ref!r} was fetched again but removed at once; retry")
        return again

    # -- the remote tier (issue 8) -------------------------------------------------------------

    def push(self, refs: str | Sequence[str] | None = None) -> TransferReport:
        """Copy fixtures to the remote tier: each ref (a name or a digest), by default every
        name whose blob is stored. Blobs the remote has already are not uploaded again.

        Returns the report (``done``, ``present``, ``failed``, ``summary()``): a failed ref does
        not stop the others; ``report.raise_for_failures()`` raises if any failed. Raises
        ConfigError when no remote is configured.
        """
        return self._remote_tier().push([refs] if isinstance(refs, str) else refs)

    def pull(
        self,
        refs: str | Sequence[str] | None = None,
        manifest: str | os.PathLike[str] | None = None,
    ) -> TransferReport:
        """Copy fixtures from the remote tier, verified: each ref (a name or a digest), each
        fixture of ``manifest``, or by default every name the remote has. Nothing comes from
        the fixtures' origins: a fixture the remote lacks fails.

        Returns the report, as ``push`` does. Raises ConfigError when no remote is configured,
        UsageError for a bad manifest or for both refs and a manifest.
        """
        report = self._remote_tier().pull([refs] if isinstance(refs, str) else refs, manifest)
        if report.stored is not None:
            self._cleanup_if_needed(report.stored)
        return report

    def _remote_tier(self) -> RemoteTier:
        if self._tier is None:
            raise ConfigError(
                "no remote is configured: set remote = \"s3://bucket/prefix\" in config.toml,"
                " or CAS_REMOTE"
            )
        return self._tier

    # -- metrics (issue 3) ---------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counters, storage use, water marks and staging debris (SPEC "Metrics").

        This process's waiting counts are written first, so they are included.
        """
        self._catalog.flush()
        now = time.time()
        with self._catalog.read() as conn:
            counts = q.counter_values(conn)
            row = q.usage(conn, now, dead_leases(conn, now))
        debris = staging_debris(self._blobs.tmp_dir, self._blobs.locks_dir, now)
        staging = staging_usage(self._blobs.tmp_dir, self._blobs.locks_dir)
        usage = Usage(row.bytes, row.blobs, row.names, row.live_leases)
        quarantine = quarantined(self._blobs.quarantine_dir)
        return Stats.build(counts, usage, self.settings, debris, staging, quarantine)


    # -- verification (issue 6) ----------------------------------------------------------------

    def verify(self, full: bool = True, repair: bool = False, budget: float | None = None,
               progress: Progress | None = None) -> VerifyReport:
        """Check every blob against the catalog, fix what loses nothing, report the rest.

        ``full`` rehashes every blob on every core; otherwise existence, size and mode are
        checked and only files changed since their last verification are rehashed. With
        ``budget`` (seconds) rehashing stops when it is spent, least recently verified blobs
        first, and the next run continues. ``repair`` fetches damaged or missing named fixtures
        again from their recorded sources. ``progress(done, total)`` is told the bytes hashed.
        What is found and what is done: cas/ops/verify.py. Raises UsageError for a bad budget,
        StoreError for a read-only store.
        """
        from cas.ops.verify import Verifier  # only verify needs its thread pool

        def refetch(row: q.DamagedRow) -> None:
            assert row.url is not None
            self.fetch(row.url, name=row.name, blake3=row.digest, sha256=row.sha256,
                       size=row.expected_size)

        verifier = Verifier(self._blobs, self._catalog, refetch if repair else None, progress)
        return verifier.run(full=full, budget=budget)

    # -- leases, pins and cleanup -------------------------------------------------------------

    def lease(self, ref: str) -> Lease:
        """Hold the blob ``ref`` names so that cleanup cannot remove it until released.

        Use as ``with store.lease(ref) as path:``, or keep the Lease and call ``release()``.
        The lease is renewed while this store stays open, and reclaimed if this process dies.
        """
        while True:
            located = self._locate(ref)

            def work(conn: Connection, digest: str = located) -> int | None:
                if q.find_blob(conn, digest) is None:
                    return None  # removed since it was located: locate it again
                return self._keeper.acquire(conn, digest)

            lease_id = self._catalog.write(work)
            if lease_id is not None:
                self._keeper.track(lease_id)
                return Lease(self._keeper, lease_id, located, self._blobs.path_of(located))

    def pin(self, ref: str) -> None:
        """Pin a name (or every name of a digest): its blob is never removed by cleanup."""
        self._set_pinned(ref, True)

    def unpin(self, ref: str) -> None:
        """Undo ``pin``."""
        self._set_pinned(ref, False)

    def _set_pinned(self, ref: str, pinned: bool) -> None:
        def work(conn: Connection) -> int:
            target = self._resolve(conn, ref)
            return q.set_pinned(conn, target.digest, target.name, pinned)

        if not self._catalog.write(work):
            raise UsageError(f"blob {ref} has no name to pin; give it one with `cas tag` first")

    def _limits(self, max_size: int | None, max_age: float | None) -> eviction.Limits:
        """The cleanup policy for these limits; UsageError for a negative or malformed one."""
        settings = self.settings
        try:
            size = settings.max_cache_size if max_size is None else parse_size(max_size)
        except ValueError as error:
            raise UsageError(f"max_size {max_size!r}: {error}") from None
        try:
            age = settings.max_age if max_age is None else parse_duration(max_age)
        except ValueError as error:
            raise UsageError(f"max_age {max_age!r}: {error}") from None
        return eviction.Limits(max_size=size, low_water=settings.low_water, max_age=age,
                               grace_period=settings.grace_period)

    def gc(self, max_size: int | None = None, max_age: float | None = None,
           dry_run: bool = False) -> eviction.Plan:
        """Remove what the cleanup policy chooses; return what went and what stayed, and why.

        Size-based: above ``max_size`` (default ``max_cache_size``), the least recently used
        blobs go until the store is down to ``low_water`` of it. Age-based: blobs not accessed
        for ``max_age`` go. Leased, pinned and recently used blobs always stay. Expired and
        dead holders' leases, and staging debris, are cleaned too.
        """
        limits = self._limits(max_size, max_age)
        if dry_run:
            self._catalog.flush()  # accesses waiting in memory count, as in a real run
            return self._cleaner.survey(limits)
        return self._cleaner.run(limits)

    def _cleanup_if_needed(self, stored: int) -> None:
        """After a write that left ``stored`` bytes: clean up when over the size limit, at most
        once per interval unless the store is past the limit by a wide margin."""
        limit = self.settings.max_cache_size
        if stored <= limit:
            return
        with self._catalog.read() as conn:
            last = q.last_cleanup(conn)
        overdue = time.time() - last >= self.settings.cleanup_interval
        if not (overdue or stored > limit * AUTO_CLEANUP_MARGIN):
            return
        with self._cleaning_lock:
            if self._cleaning is not None and self._cleaning.is_alive():
                return
            log.info("store holds %d bytes, over its limit of %d: cleaning up", stored, limit)
            # In the background, so that the write that crossed the limit returns at once
            # (a caller that leases what it just stored does so well within the grace period).
            self._cleaning = threading.Thread(target=self._background_gc, name="cas-cleanup",
                                              daemon=True)
            self._cleaning.start()

    def _background_gc(self) -> None:
        try:
            self.gc()
        except Exception:  # reported; the next write over the limit tries again
            log.exception("automatic cleanup failed")

    def wait_for_cleanup(self) -> None:
        """Wait until an automatic cleanup started by a write has finished."""
        with self._cleaning_lock:
            cleaning = self._cleaning
        if cleaning is not None:
            cleaning.join()

    @contextlib.contextmanager
    def maintenance(self, interval: float | None = None) -> Iterator[threading.Thread]:
        """Run cleanup every ``interval`` (default ``cleanup_interval``) in a background thread
        for the duration of the ``with`` block. Raises UsageError for an interval that
        ``cleanup_interval`` would refuse (under 1 s: cleaning in a tight loop)."""
        try:
            period = parse_interval(self.settings.cleanup_interval if interval is None
                                    else interval)
        except ValueError as error:
            raise UsageError(f"interval {interval!r}: {error}") from None
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period):
                try:
                    self.gc()
                except Exception:  # the next round retries; a failure must not end upkeep
                    log.exception("periodic cleanup failed")

        thread = threading.Thread(target=loop, name="cas-maintenance", daemon=True)
        thread.start()
        try:
            yield thread
        finally:
            stop.set()
            thread.join()


def _close(keeper: LeaseKeeper, catalog: Catalog) -> None:
    try:
        keeper.release_all()
    finally:
        catalog.close()


#: A store this far past its limit is cleaned up at once, whenever it last was.
AUTO_CLEANUP_MARGIN = 1.2
#: Items per transaction of ``put_many``: the write lock is held for the renames and an fsync
#: of each shard folder (tens of milliseconds), and that many staged files at most wait in tmp/.
PUT_BATCH = 1000


def _digest_of(data: bytes | bytearray | memoryview) -> str:
    digest = hasher()
    digest.update(data)
    return str(digest.hexdigest())
