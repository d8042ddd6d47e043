"""The operations that write or clean up, wired together for one store.

A store builds them on its first write (cas/store.py), so that opening a store to read from it
never imports them: put, names, record (publish then record), cleanup and its upkeep; and, on
its first fetch, fetch with its HTTP client and the remote tier (urllib3, boto3).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cas.ops.cleanup import Cleaner
from cas.ops.names import Names
from cas.ops.put import Putter
from cas.ops.record import Clock, Recorder
from cas.ops.upkeep import Upkeep
from cas.settings import Settings
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog

if TYPE_CHECKING:
    from cas.ops.fetch import Fetcher
    from cas.ops.tier import RemoteTier
    from cas.ops.unpack import FetchArchive, Unpacker
    from cas.transfer.http import Downloader
    from cas.transfer.s3 import Remote


class Writers:
    """One store's write operations; ``closed`` is the store's, which ends its cleanups."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, settings: Settings, clock: Clock,
                 closed: threading.Event) -> None:
        self.recorder = Recorder(blobs, catalog, clock)
        self.cleaner = Cleaner(blobs, catalog, clock)
        self.upkeep = Upkeep(catalog, settings, clock, self.cleaner, closed)
        self.putter = Putter(blobs, catalog, clock, self.upkeep.after_write)
        self.names = Names(blobs, catalog, self.cleaner, clock)


def fetching(blobs: BlobStore, catalog: Catalog, settings: Settings, recorder: Recorder,
             clock: Clock, downloader: Downloader | None = None,
             remote_client: Remote | None = None) -> tuple[Fetcher, RemoteTier | None]:
    """A store's fetch, and its remote tier when ``settings.remote`` is set or a
    ``remote_client`` is given; the HTTP client is built from the settings unless given.
    Offline, fetch has neither: it serves stored content and refuses the rest."""
    from cas.ops.fetch import Fetcher

    if settings.offline:  # no downloader, no tier: cas/transfer/ is never called
        return Fetcher(blobs, catalog, None, recorder, clock=clock, headers=settings.headers), None
    from cas.transfer.http import Downloader

    downloader = downloader or Downloader(
        blobs.tmp, blobs.locks, timeout=settings.download_timeout, retries=settings.retries,
        max_size=settings.max_cache_size, connections=settings.connections,
        parallel_min_size=settings.parallel_min_size,
    )  # fmt: skip
    tier = None
    if remote_client is not None or settings.remote is not None:
        from cas.ops.tier import RemoteTier
        from cas.transfer.s3 import Remote

        remote = remote_client or Remote(settings.remote or "", timeout=settings.download_timeout,
                                         retries=settings.retries)  # fmt: skip
        tier = RemoteTier(remote, blobs, catalog, recorder, downloader.single_flight,
                          push=settings.remote_push, clock=clock)
    return Fetcher(blobs, catalog, downloader, recorder, tier=tier, clock=clock,
                   headers=settings.headers), tier


def unpacking(blobs: BlobStore, catalog: Catalog, settings: Settings, fetch: FetchArchive,
              clock: Clock) -> Unpacker:
    """A store's fetch with unpack, over its fetch: archives unpack at most to
    ``max_cache_size``, one unpacking at a time per archive and kind across processes."""
    import functools

    from cas.ops.unpack import Unpacker
    from cas.transfer.flight import heartbeat, single_flight

    locks = functools.partial(single_flight, locks=blobs.locks, stall=settings.download_timeout)
    return Unpacker(blobs, catalog, fetch, locks=locks, beat=heartbeat, clock=clock,
                    ceiling=settings.max_cache_size)
