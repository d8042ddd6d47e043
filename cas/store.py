"""The public face of a store: ``Store`` opens the files, wires the operations of ``cas/ops/``
and delegates to them (docs/architecture.md lists them).

Imports are deferred on purpose: opening a store to read from it (``cas path`` in a script's
loop) imports only reading (ops/lookup, ops/leases); writing, cleanup, fetch with its HTTP
client, the remote tier, manifests and verify load when a method first needs them
(tests/faces/test_startup.py checks it).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from cas.errors import StoreError, os_error
from cas.ops.leases import Lease, LeaseKeeper
from cas.ops.lookup import Reader
from cas.ops.wiring import Wiring
from cas.settings import Settings, default_root, load_config
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog
from cas.storage.opening import open_files
from cas.values import SYNC_JOBS

if TYPE_CHECKING:
    from cas.ops.eviction import Plan
    from cas.ops.fetch import Fetched
    from cas.ops.listing import Entry
    from cas.ops.manifest import Bar, SyncReport, Total
    from cas.ops.put import Source
    from cas.ops.record import Clock
    from cas.ops.tier import TransferReport
    from cas.ops.verify import VerifyReport
    from cas.storage.metrics import Stats
    from cas.storage.verification import DamagedRow
    from cas.transfer.http import Downloader
    from cas.transfer.request import Progress
    from cas.transfer.s3 import Remote

__all__ = ["Entry", "Source", "Store"]

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    """``Source`` (what ``put`` takes) and ``Entry`` (a line of ``entries()``) load with their
    operations."""
    if name == "Source":
        from cas.ops.put import Source as value
    elif name == "Entry":
        from cas.ops.listing import Entry as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value


def _refused_when_closed(cls: type[T]) -> type[T]:
    """Make every public method of ``cls`` raise StoreError once the store is closed: a closed
    store that kept working would quietly reopen its catalog."""
    for name, method in list(vars(cls).items()):
        if (name.startswith("_") or name in _OPEN_OR_CLOSED
                or not isinstance(method, types.FunctionType)):
            continue

        def guarded(self: Any, *args: Any, __method: Any = method, **kwargs: Any) -> Any:
            if self._closed.is_set():
                raise StoreError(f"store {self.root} is closed")
            return __method(self, *args, **kwargs)

        setattr(cls, name, functools.wraps(method)(guarded))
    return cls


#: Methods that work on a closed store too.
_OPEN_OR_CLOSED = frozenset({"close", "open"})


@_refused_when_closed
class Store:
    """A content-addressed store at one root, safe to share between threads and processes."""

    def __init__(self, root: Path, settings: Settings, blobs: BlobStore, catalog: Catalog, *,
                 downloader: Downloader | None = None, remote_client: Remote | None = None,
                 clock: Clock = time.time) -> None:
        self.root = root
        self.settings = settings
        self._blobs = blobs
        self._catalog = catalog
        self._clock = clock
        self._closed = threading.Event()
        self._keeper = LeaseKeeper(catalog, settings.lease_ttl, clock)
        self._reader = Reader(blobs, catalog, clock, _weakly(self._refetch), settings.auto_download)
        # Writing, the HTTP client and the remote tier load on first use (urllib3, boto3).
        self._ops = Wiring(blobs, catalog, settings, clock, self._closed, downloader,
                           remote_client)
        self._finalizer = weakref.finalize(self, _close, self._keeper, catalog)

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        given_as: str = "keyword argument",
        downloader: Downloader | None = None,
        remote_client: Remote | None = None,
        clock: Clock | None = None,
        **settings: Any,
    ) -> Store:
        """Open (creating if needed) the store at ``root``, else ``$CAS_HOME`` or the user cache.

        ``settings`` override every other source; ``config_file`` and ``profile`` take the place
        of CAS_CONFIG and CAS_PROFILE; ``given_as`` labels them in errors. A store that cannot
        be written opens read-only. Raises ConfigError for a bad setting, StoreError when the
        root cannot be used, CatalogError when catalog.db cannot (or is on NFS or SMB).

        Seams: ``downloader`` replaces the HTTP client, ``remote_client`` the remote tier's
        client (a ``cas.transfer.s3.Remote``; used even without the ``remote`` setting), and
        ``clock`` (seconds since the epoch) the wall time of last access, leases and eviction.
        """
        path = Path(root).expanduser() if root is not None else default_root()
        path = path.absolute()
        if path.exists() and not path.is_dir():
            raise StoreError(f"store root {path} is not a folder")
        resolved = load_config(path, settings, config_file=config_file, profile=profile,
                               given_as=given_as).settings
        now = clock if clock is not None else time.time
        blobs, catalog = open_files(path, resolved, now)
        return cls(path, resolved, blobs, catalog, downloader=downloader,
                   remote_client=remote_client, clock=now)

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
        if self._closed.is_set():
            return
        self._ops.wait_for_cleanup()
        self._closed.set()
        self._finalizer()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cas.Store {str(self.root)!r}>"

    # -- writing -------------------------------------------------------------------------------

    def put(self, source: Source, *, name: str | None = None) -> str:
        """Store the content of a path, bytes, or binary file, or a folder as a tree (each
        file a blob); return the BLAKE3 digest (a tree's record's). Raises NotFound for a
        missing source, UsageError for a bad name or an entry a tree cannot hold."""
        if isinstance(source, str | os.PathLike) and os.path.isdir(source):
            from cas.ops.trees import put_tree

            return put_tree(self._ops.writers.putter, source, name)
        return self._ops.writers.putter.put(source, name)

    def put_many(self, sources: Mapping[str, Source] | Iterable[Source]) -> list[str]:
        """Store many contents at once; return their digests, in order.

        A mapping stores each content under its name (``{"fixtures/a.bin": b"...", ...}``);
        any other iterable stores them unnamed. The same guarantees as ``put``, for a fraction
        of the cost per item when items are small: each batch of up to ``PUT_BATCH`` items is
        one transaction, and its staged files are made durable by one filesystem sync instead
        of an fsync each. A bad item raises before its batch is recorded; earlier batches stay.
        """
        return self._ops.writers.putter.put_many(sources)

    def tag(self, name: str, ref: str) -> str:
        """Point ``name`` at the blob ``ref`` names; return the digest."""
        return self._ops.writers.names.tag(name, ref)

    def untag(self, name: str) -> None:
        """Remove a name; its blob stays. Raises NotFound for an unknown name."""
        self._ops.writers.names.untag(name)

    def remove(self, ref: str, *, force: bool = False) -> list[str]:
        """Remove a name or a digest; return the digests whose files were removed.

        A digest removes the blob and every name pointing at it. A name removes the name, and
        its blob too when no other name (nor a stored tree) holds it; a blob a stored tree
        holds is InUse unless ``force``."""
        return self._ops.writers.names.remove(ref, force=force)

    # -- reading -------------------------------------------------------------------------------

    def path(self, ref: str) -> Path:
        """The read-only path of what ``ref`` names: a name's view (named after its last
        component), a tree's folder, a digest's blob. Raises NotFound for an unknown ref."""
        return self._reader.path_of(ref)

    def open_blob(self, ref: str) -> BinaryIO:
        """An open binary file of the blob's content."""
        return self._reader.open(ref)

    def read_bytes(self, ref: str) -> bytes:
        """The whole content of the blob ``ref`` names."""
        with self.open_blob(ref) as blob:
            return blob.read()

    def entries(self) -> list[Entry]:
        """Every name with its blob, then every blob that has no name, with their live leases
        and whether a stored blob's file is missing or damaged (checked by size, not hashed)."""
        from cas.ops.listing import entries

        return entries(self._blobs, self._catalog, self._clock)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    # -- fetching ------------------------------------------------------------------------------

    def fetch(
        self,
        url: str,
        *,
        name: str | None = None,
        blake3: str | None = None,
        sha256: str | None = None,
        sha1: str | None = None,
        md5: str | None = None,
        size: int | None = None,
        unpack: str | None = None,
        refresh: bool = False,
        headers: Mapping[str, str] | Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Store the content of ``url`` (http or https); return its BLAKE3 digest.

        No network when the content is known: an expected ``blake3`` already stored, a
        ``sha256``, ``sha1`` or ``md5`` seen before for a stored blob, or, expecting no digest,
        the URL's last content still stored (or the one ``name`` got from it). Otherwise one
        download for all threads and processes asking at once, resumed after interruptions,
        verified against every expected value before it enters the store. ``name`` remembers
        the source, so an evicted fixture comes back. ``unpack`` (``"auto"``, ``"zip"``,
        ``"tar.gz"``, ``"gz"``…) unpacks the verified archive (the expected values are the
        archive's) and returns the digest of what it holds, unpacked once. ``refresh``
        revalidates a URL fetched without a digest (a 304 costs no body); names follow new
        content. ``headers`` (``{"Authorization": "Bearer ${TOKEN}"}``) go to the URL's origin
        only, over the setting's, never recorded (docs/api.md). ``progress(done, total)`` is
        told the bytes. Raises UsageError, DownloadError, IntegrityError, NotFound.
        """
        return self._fetch(url, name=name, blake3=blake3, sha256=sha256, sha1=sha1, md5=md5,
                           size=size, unpack=unpack, refresh=refresh, headers=headers,
                           progress=progress).digest  # fmt: skip

    def stored(self, url: str | None = None, *, name: str | None = None,
               blake3: str | None = None, sha256: str | None = None, sha1: str | None = None,
               md5: str | None = None, size: int | None = None) -> str | None:
        """The digest of stored content that satisfies a fixture, without network: what
        ``fetch`` with these arguments would serve from the store alone; None when nothing
        stored matches every expected digest and size.

        As ``fetch``, a checksum not yet known for a stored blob is computed from its file, and
        ``name`` is pointed at what is found when ``url`` is given too. Without ``url`` only
        ``name``'s blob and the expected digests are looked at, and the name is left as it is.
        Raises UsageError for a malformed digest or size, IntegrityError when a stored blob is
        the expected BLAKE3 but not another expected checksum or size.
        """
        from cas.ops.fetch import expectation

        expected = expectation(blake3, sha256, size, sha1, md5)
        found = self._ops.fetcher.stored(url, name, expected)
        return found.digest if found is not None else None

    def _fetch(self, url: str, again: bool = False, **how: Any) -> Fetched:
        """Fetch (with unpack, cas/ops/unpack.py); ``again``: a named fixture's evicted
        content, ``how["blake3"]``, from its recorded source."""
        fetching = self._ops.unpacker
        try:
            fetched = (fetching.refetch if again else fetching.fetch)(url, **how)
        except OSError as error:  # e.g. the lock or staging file of a full or read-only disk
            raise os_error(error, f"cannot fetch {url}") from error
        if fetched.stored is not None:
            self._ops.writers.upkeep.after_write(fetched.stored)
        return fetched

    def _refetch(self, url: str, **how: Any) -> Fetched:
        return self._fetch(url, True, **how)

    def sync(self, manifest_path: str | os.PathLike[str], jobs: int = SYNC_JOBS, *,
             update: bool = False) -> dict[str, str]:
        """Fetch every fixture of a manifest, ``jobs`` at a time (``update``: refresh those
        without a hash); return name -> digest. Raises CasError naming each failed fixture
        after the others finished, UsageError for a bad manifest (before any fetch)."""
        report = self.sync_report(manifest_path, jobs=jobs, update=update)
        report.raise_for_failures()
        return report.digests

    def sync_report(self, manifest_path: str | os.PathLike[str], *, jobs: int = SYNC_JOBS,
                    update: bool = False, bar: Callable[[str], Bar] | None = None,
                    total_bar: Callable[[int], Total] | None = None) -> SyncReport:
        """Fetch every fixture of a manifest as ``sync`` does, and return the report (what was
        fetched, already present, or failed) instead of raising for failures. ``bar(name)``
        and ``total_bar(count)`` make progress bars: one a transfer, one in total."""
        from cas.ops import manifest

        return manifest.sync(self._fetch, manifest_path, jobs=jobs, update=update, bar=bar,
                             total_bar=total_bar)

    # -- the remote tier -----------------------------------------------------------------------

    def push(self, refs: str | Sequence[str] | None = None) -> TransferReport:
        """Copy fixtures to the remote tier: each ref (a name or a digest), by default every
        name whose blob is stored. Blobs the remote has already are not uploaded again.

        Returns the report (``done``, ``present``, ``failed``, ``summary()``): a failed ref does
        not stop the others; ``report.raise_for_failures()`` raises if any failed. Raises
        ConfigError when no remote is configured, NotFound when cas is offline.
        """
        return self._ops.tier("cannot push").push([refs] if isinstance(refs, str) else refs)

    def pull(
        self,
        refs: str | Sequence[str] | None = None,
        manifest: str | os.PathLike[str] | None = None,
    ) -> TransferReport:
        """Copy fixtures from the remote tier, verified: each ref (a name or a digest), each
        fixture of ``manifest``, or by default every name the remote has. Nothing comes from
        the fixtures' origins: a fixture the remote lacks fails.

        Returns the report, as ``push`` does. Raises as ``push`` does, and UsageError for a
        bad manifest or for both refs and a manifest.
        """
        tier = self._ops.tier("cannot pull")
        report = tier.pull([refs] if isinstance(refs, str) else refs, manifest)
        if report.stored is not None:
            self._ops.writers.upkeep.after_write(report.stored)
        return report

    # -- metrics -------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counters, storage use, water marks and staging debris (SPEC "Metrics").

        This process's waiting counts are written first, so they are included.
        """
        from cas.ops.listing import stats

        return stats(self._blobs, self._catalog, self._clock, self.settings)

    # -- verification --------------------------------------------------------------------------

    def verify(self, full: bool = True, repair: bool = False, budget: float | None = None,
               progress: Progress | None = None) -> VerifyReport:
        """Check every blob against the catalog, fix what loses nothing, report the rest.

        ``full`` rehashes every blob on every core; otherwise existence, size and mode are
        checked and only files changed since their last verification are rehashed. With
        ``budget`` (seconds) rehashing stops when it is spent, least recently verified blobs
        first, and the next run continues. ``repair`` fetches damaged or missing named fixtures
        again from their recorded sources (offline: it reports them). ``progress(done, total)``
        is told the bytes hashed. What is found and what is done: cas/ops/verify.py. Raises
        UsageError for a bad budget, StoreError for a read-only store.
        """
        from cas.ops.verify import Verifier

        def refetch(row: DamagedRow) -> None:
            self._refetch(row.url or "", name=row.name, blake3=row.digest, sha256=row.sha256,
                          size=row.expected_size, unpack=row.unpack)

        verifier = Verifier(self._blobs, self._catalog, refetch if repair else None, progress)
        return verifier.run(full=full, budget=budget)

    # -- leases, pins and cleanup -------------------------------------------------------------

    def lease(self, ref: str, *, name: str | None = None) -> Lease:
        """Hold what ``ref`` names so that cleanup cannot remove it until released; its path
        is ``path(ref)``'s, or the view named after ``name``. Use as ``with store.lease(ref) as
        path:``; renewed while the store is open, reclaimed if this process dies."""
        return self._keeper.hold(
            self._reader.locate, ref,
            lambda digest: Path(self._reader.shown_for(ref, digest, name)))

    def pin(self, ref: str) -> None:
        """Pin a name (or every name of a digest): its blob is never removed by cleanup."""
        self._ops.writers.names.set_pinned(ref, True)

    def unpin(self, ref: str) -> None:
        """Undo ``pin``."""
        self._ops.writers.names.set_pinned(ref, False)

    def gc(self, max_size: int | None = None, max_age: float | None = None,
           dry_run: bool = False) -> Plan:
        """Remove what the cleanup policy chooses; return what went and what stayed, and why.

        Size-based: above ``max_size`` (default ``max_cache_size``), the least recently used
        blobs go until the store is down to ``low_water`` of it. Age-based: blobs not accessed
        for ``max_age`` go. Leased, pinned and recently used blobs always stay. Expired and
        dead holders' leases, and staging debris, are cleaned too.
        """
        from cas.ops.eviction import Limits

        limits = Limits.of(self.settings, max_size, max_age)
        cleaner = self._ops.writers.cleaner
        if dry_run:
            self._catalog.flush()  # accesses waiting in memory count, as in a real run
            return cleaner.survey(limits)
        return cleaner.run(limits)

    def wait_for_cleanup(self) -> None:
        """Wait until an automatic cleanup started by a write has finished."""
        self._ops.wait_for_cleanup()

    def maintenance(self, interval: float | None = None
                    ) -> AbstractContextManager[threading.Thread]:  # fmt: skip
        """Run cleanup every ``interval`` (default ``cleanup_interval``) in a background thread
        for the duration of the ``with`` block. Raises UsageError for an interval that
        ``cleanup_interval`` would refuse (under 1 s: cleaning in a tight loop)."""
        return self._ops.writers.upkeep.maintenance(interval)


def _weakly(method: Callable[..., object]) -> Callable[..., object]:
    """``method`` of a store, called without holding the store: the parts a store owns must not
    keep it alive, so that one dropped unclosed is still finalized at once."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any, **kwargs: Any) -> object:
        bound = ref()
        if bound is None:
            raise StoreError("the store is closed")
        return bound(*args, **kwargs)

    return call


def _close(keeper: LeaseKeeper, catalog: Catalog) -> None:
    try:
        keeper.release_all()
    finally:
        catalog.close()
