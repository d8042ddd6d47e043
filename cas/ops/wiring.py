"""One store's operations, built when first used.

Opening a store to read from it (``cas path`` in a script's loop) must not import writing,
cleanup, the HTTP client or the remote tier (tests/faces/test_startup.py), so the façade holds
this light object and each service is built, once and under a lock, by its first caller:
``writers`` (put, names, record, cleanup and its upkeep: cas/ops/writing.py), ``fetcher`` with
its downloader and remote tier, and ``unpacker`` over the fetcher.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cas.errors import ConfigError, offline_error

if TYPE_CHECKING:
    from cas.ops.fetch import Fetcher
    from cas.ops.record import Clock
    from cas.ops.tier import RemoteTier
    from cas.ops.unpack import Unpacker
    from cas.ops.writing import Writers
    from cas.settings import Settings
    from cas.storage.blobs import BlobStore
    from cas.storage.catalog import Catalog
    from cas.transfer.http import Downloader
    from cas.transfer.s3 import Remote


class Wiring:
    """The services of one store; ``downloader`` and ``remote_client`` are the store's seams
    (None: built from the settings), ``closed`` the store's event, which ends its cleanups."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, settings: Settings, clock: Clock,
                 closed: threading.Event, downloader: Downloader | None = None,
                 remote_client: Remote | None = None) -> None:  # fmt: skip
        self._blobs = blobs
        self._catalog = catalog
        self._settings = settings
        self._clock = clock
        self._closed = closed
        self._downloader = downloader
        self._remote_client = remote_client
        self._lock = threading.Lock()
        self._writers: Writers | None = None
        self._fetcher: Fetcher | None = None
        self._unpacker: Unpacker | None = None
        self._tier: RemoteTier | None = None

    @property
    def writers(self) -> Writers:
        with self._lock:
            if self._writers is None:
                from cas.ops.writing import Writers

                self._writers = Writers(self._blobs, self._catalog, self._settings, self._clock,
                                        self._closed)
            return self._writers

    @property
    def fetcher(self) -> Fetcher:
        recorder = self.writers.recorder
        with self._lock:
            if self._fetcher is None:
                from cas.ops.writing import fetching

                self._fetcher, self._tier = fetching(
                    self._blobs, self._catalog, self._settings, recorder, self._clock,
                    self._downloader, self._remote_client,
                )  # fmt: skip
            return self._fetcher

    @property
    def unpacker(self) -> Unpacker:
        fetcher = self.fetcher
        with self._lock:
            if self._unpacker is None:
                from cas.ops.writing import unpacking

                self._unpacker = unpacking(self._blobs, self._catalog, self._settings,
                                           fetcher.fetch, self._clock)
            return self._unpacker

    def tier(self, doing: str) -> RemoteTier:
        """The remote tier; ConfigError when none is configured, the offline error offline
        (``doing`` says what could not be done)."""
        if self._settings.offline:
            raise offline_error(f"{doing}: the remote tier is not reached")
        self.fetcher  # noqa: B018  (builds the tier with the fetcher)
        if self._tier is None:
            raise ConfigError(
                "no remote is configured: set remote = \"s3://bucket/prefix\" in config.toml,"
                " or CAS_REMOTE"
            )
        return self._tier

    def wait_for_cleanup(self) -> None:
        """Wait for a running automatic cleanup, if writing was ever wired."""
        if self._writers is not None:
            self._writers.upkeep.wait()
