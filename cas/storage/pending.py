"""Last-access touches and counter increments that wait in memory for a write transaction.

Last access is coarse (guarantee 6): a read records a touch only when the stored time is older
than ``ACCESS_GRANULARITY`` (or in the future: the clock went back). Touches and counter
increments (storage/metrics.py) wait here until a write transaction happens anyway, the store
closes, or the oldest waiting item is itself older than the granularity; so counting or
touching on a read costs no transaction of its own. cas/storage/catalog.py decides when they
are written.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping

#: Seconds within which last-access times are not updated again, and at most how long a touch
#: waits in memory before it is written. Eviction is LRU to within this.
ACCESS_GRANULARITY = 60.0


class Pending:
    """What waits in memory for a write transaction that happens anyway: touches and counts.

    A write takes a snapshot, applies it inside its transaction, and forgets exactly what it
    wrote only once that transaction committed; anything added meanwhile stays for the next.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # the wall time of last accesses
        self._lock = threading.Lock()
        self._touches: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._since: float | None = None  # when the oldest waiting item arrived

    def __bool__(self) -> bool:
        return bool(self._touches or self._counts)

    def touch(self, digest: str, now: float) -> None:
        with self._lock:
            self._touches[digest] = now
            self._since = now if self._since is None else self._since

    def count(self, name: str, amount: int) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount
            self._since = self._clock() if self._since is None else self._since

    def due(self) -> bool:
        """Whether the oldest waiting item has waited ``ACCESS_GRANULARITY``."""
        since = self._since
        return since is not None and self._clock() - since >= ACCESS_GRANULARITY

    def take(self) -> tuple[dict[str, float], dict[str, int], float]:
        """A snapshot to write: touches, counts, and when it was taken."""
        with self._lock:
            return dict(self._touches), dict(self._counts), self._clock()

    @staticmethod
    def apply(conn: sqlite3.Connection, touches: dict[str, float], counts: dict[str, int],
              now: float) -> None:
        """Write a snapshot inside ``conn``'s transaction. A stored last access later than
        ``now`` (written before the clock went back) is clamped to ``now``, so it ages again."""
        if touches:
            conn.executemany(
                "UPDATE blobs SET last_access = max(min(last_access, ?), ?) WHERE digest = ?",
                [(now, when, digest) for digest, when in touches.items()],
            )
        add_counts(conn, counts)

    def written(self, touches: dict[str, float], counts: dict[str, int], taken: float) -> None:
        """Forget a committed snapshot, keeping what arrived after it was taken."""
        if not touches and not counts:
            return
        with self._lock:
            for digest, when in touches.items():
                if self._touches.get(digest) == when:
                    del self._touches[digest]
            for name, amount in counts.items():
                left = self._counts.get(name, 0) - amount
                if left:
                    self._counts[name] = left
                else:
                    self._counts.pop(name, None)
            # What is left of the counts arrived after the snapshot, so after ``taken``.
            self._since = min(
                [*self._touches.values(), *([taken] if self._counts else [])], default=None
            )


def add_counts(conn: sqlite3.Connection, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to their counters inside ``conn``'s write transaction: for a writer whose
    counts belong to what that transaction does (and go if it is rolled back)."""
    if counts:
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(counts.items()),
        )
