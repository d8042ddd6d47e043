"""Leases: explicit "in use" records that eviction respects (guarantee 3).

A lease names its holder (this process: its place, pid and start time, storage/processes.py) and an
expiry. While the store is open, a keeper thread renews this process's leases every third of
``lease_ttl``, so a live holder never loses one; a holder provably dead (of this host, boot and
PID namespace) loses its leases at once, and any other's simply expire. ``dead_leases`` is the
one answer to "which unexpired leases protect nothing": cleanup, ``rm``, verify, ``stats`` and
``ls`` all take it, with ``queries.LIVE_LEASE``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cas.logs import log
from cas.storage import queries as q
from cas.storage.processes import Holder, forks, is_dead, place, this_process

if TYPE_CHECKING:
    from cas.storage.catalog import Catalog, Connection


class Lease:
    """A held lease on one blob: a context manager giving its path, or renew and release."""

    def __init__(self, keeper: LeaseKeeper, lease_id: int, digest: str, path: Path) -> None:
        self._keeper = keeper
        self.id = lease_id
        self.digest = digest
        self.path = path
        self.released = False

    def renew(self) -> None:
        """Push the expiry out by ``lease_ttl`` now."""
        self._keeper.renew([self.id])

    def release(self) -> None:
        """Give the lease up; releasing twice is harmless."""
        if not self.released:
            self.released = True
            self._keeper.release(self.id)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *_: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<cas.Lease {self.id} on {self.digest[:12]} {state}>"


class LeaseKeeper:
    """This process's leases in one store, and the thread that keeps them renewed."""

    def __init__(self, catalog: Catalog, ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._catalog = catalog
        self.ttl = ttl
        self._clock = clock
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._holder: Holder | None = None  # on the first lease: a read takes none
        self._forks = forks()

    def acquire(self, conn: Connection, digest: str) -> int:
        """Record a new lease on ``digest`` inside the caller's write transaction."""
        holder = self._current_holder()
        now = self._clock()
        return q.insert_lease(conn, digest, holder.place, holder.pid, holder.started, now,
                              now + self.ttl)

    def hold(self, locate: Callable[[str], str], ref: str,
             path_of: Callable[[str], Path]) -> Lease:
        """A lease on the blob ``ref`` names, kept renewed: ``locate`` finds its digest (and
        fetches it again if evicted), located again if it went before the lease was taken."""
        while True:
            located = locate(ref)

            def work(conn: Connection, digest: str = located) -> int | None:
                if q.find_blob(conn, digest) is None:
                    return None  # removed since it was located: locate it again
                return self.acquire(conn, digest)

            lease_id = self._catalog.write(work)
            if lease_id is not None:
                self.track(lease_id)
                return Lease(self, lease_id, located, path_of(located))

    def track(self, lease_id: int) -> None:
        """Keep ``lease_id`` renewed until it is released."""
        with self._lock:
            self._held.add(lease_id)
            if self._thread is None or not self._thread.is_alive():
                self._wake.clear()
                self._thread = threading.Thread(
                    target=self._renew_loop, name="cas-lease-keeper", daemon=True
                )
                self._thread.start()

    def renew(self, ids: list[int]) -> None:
        expires = self._clock() + self.ttl
        alive = self._catalog.write(lambda conn: q.renew_leases(conn, ids, expires))
        lost = set(ids) - alive
        if lost:
            log.warning("leases %s were reclaimed before renewal", sorted(lost))
            with self._lock:
                self._held -= lost

    def release(self, lease_id: int) -> None:
        with self._lock:
            self._held.discard(lease_id)
        self._catalog.write(lambda conn: q.delete_leases(conn, [lease_id]))

    def release_all(self) -> None:
        """Give up every lease of this process (at close)."""
        with self._lock:
            held, self._held = sorted(self._held), set()
            self._wake.set()
        if held:
            self._catalog.write(lambda conn: q.delete_leases(conn, held))

    def _renew_loop(self) -> None:
        while not self._wake.wait(self.ttl / 3):
            with self._lock:
                held = sorted(self._held)
            if not held:
                return
            try:
                self.renew(held)
            except Exception:  # a renewal must not kill the thread; the next one retries
                log.exception("renewing leases failed")

    def _current_holder(self) -> Holder:
        if forks() != self._forks:  # forked: the child is a holder of its own
            self._holder = this_process()
            self._forks = forks()
            with self._lock:
                self._held = set()
                self._thread = None
        if self._holder is None:
            self._holder = this_process()
        return self._holder


def dead_leases(conn: Connection, now: float) -> list[int]:
    """Ids of unexpired leases whose holder, a process of this place, is gone."""
    where = place()
    return [
        row.id for row in q.leases_of_host(conn, where, now)
        if is_dead(Holder(where, row.pid, row.started))
    ]
