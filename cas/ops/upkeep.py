"""When cleanup runs: after a write that crossed the size limit, and on a maintenance loop.

The policy is in ops/eviction.py and the mechanism in ops/cleanup.py; this module only decides
when to run them. A write that leaves the store over ``max_cache_size`` starts one cleanup in
a background thread (the write returns at once, so a caller that leases what it just stored
does so well within the grace period), at most once per ``cleanup_interval`` unless the store
is past the limit by ``AUTO_CLEANUP_MARGIN``. ``maintenance`` runs cleanup every interval for the
duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from cas.errors import StoreError, UsageError
from cas.logs import log
from cas.ops.cleanup import Cleaner
from cas.ops.eviction import Limits, Plan
from cas.ops.record import Clock
from cas.settings import Settings
from cas.storage import queries as q
from cas.storage.catalog import Catalog
from cas.values import parse_interval

#: A store this far past its limit is cleaned up at once, whenever it last was.
AUTO_CLEANUP_MARGIN = 1.2


class Upkeep:
    """Starts one store's automatic cleanups, with the store's limits, until ``closed``."""

    def __init__(self, catalog: Catalog, settings: Settings, clock: Clock, cleaner: Cleaner,
                 closed: threading.Event) -> None:
        self._catalog = catalog
        self._settings = settings
        self._clock = clock
        self._cleaner = cleaner
        self._closed = closed
        self._cleaning: threading.Thread | None = None
        self._lock = threading.Lock()

    def _gc(self) -> Plan:
        if self._closed.is_set():
            raise StoreError(f"store {self._catalog.path.parent} is closed")
        return self._cleaner.run(Limits.of(self._settings))

    def after_write(self, stored: int) -> None:
        """After a write that left ``stored`` bytes: clean up when over the size limit, at
        most once per interval unless the store is past the limit by a wide margin."""
        limit = self._settings.max_cache_size
        if stored <= limit:
            return
        with self._catalog.read() as conn:
            last = q.last_cleanup(conn)
        overdue = self._clock() - last >= self._settings.cleanup_interval
        if not (overdue or stored > limit * AUTO_CLEANUP_MARGIN):
            return
        with self._lock:
            if self._cleaning is not None and self._cleaning.is_alive():
                return
            log.info("store holds %d bytes, over its limit of %d: cleaning up", stored, limit)
            self._cleaning = threading.Thread(target=self._background_gc, name="cas-cleanup",
                                              daemon=True)
            self._cleaning.start()

    def _background_gc(self) -> None:
        try:
            self._gc()
        except Exception:  # reported; the next write over the limit tries again
            log.exception("automatic cleanup failed")

    def wait(self) -> None:
        """Wait until an automatic cleanup started by a write has finished."""
        with self._lock:
            cleaning = self._cleaning
        if cleaning is not None:
            cleaning.join()

    @contextlib.contextmanager
    def maintenance(self, interval: float | None = None) -> Iterator[threading.Thread]:
        """Run cleanup every ``interval`` (default ``cleanup_interval``) in a background thread
        for the duration of the ``with`` block. Raises UsageError for an interval that
        ``cleanup_interval`` would refuse (under 1 s: cleaning in a tight loop)."""
        try:
            period = parse_interval(self._settings.cleanup_interval if interval is None
                                    else interval)
        except ValueError as error:
            raise UsageError(f"interval {interval!r}: {error}") from None
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period):
                try:
                    self._gc()
                except Exception:  # the next round retries; a failure must not end upkeep
                    log.exception("periodic cleanup failed")

        thread = threading.Thread(target=loop, name="cas-maintenance", daemon=True)
        thread.start()
        try:
            yield thread
        finally:
            stop.set()
            thread.join()
