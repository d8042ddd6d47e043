"""Running a batch of transfers so that the link stays full: large ones first, small ones beside.

``order`` puts a batch largest first (items of unknown size ahead: they may be the largest).
``run`` works through it with ``jobs`` threads in two lanes that meet in the middle: a quarter of
them (at least one) take from the large end, the rest from the small end. A large transfer is
bound by bandwidth and fills the link with its own ranged connections (or, from an origin
without ranges, is the longest and has to start first); small ones are bound by round trips, so
many run at once beside it. Every thread stays busy until the batch is done, and the batch ends
no later than its largest item allows.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def order(items: Sequence[T], size: Callable[[T], int | None]) -> list[T]:
    """``items`` largest first: those of unknown size ahead, in their given order, then the
    others by size, descending (equal sizes in their given order)."""
    unknown = [item for item in items if size(item) is None]
    known = [item for item in items if size(item) is not None]
    known.sort(key=lambda item: -(size(item) or 0))
    return unknown + known


def large_lane(threads: int) -> int:
    """How many of ``threads`` take from the large end: a quarter, at least one."""
    return max(1, threads // 4)


class _Ends(Generic[T]):
    """A batch ordered largest first, taken from either end."""

    def __init__(self, items: Sequence[T]) -> None:
        self._items: deque[T] = deque(items)
        self._lock = threading.Lock()

    def take(self, large: bool) -> T | None:
        with self._lock:
            if not self._items:
                return None
            return self._items.popleft() if large else self._items.pop()


def run(
    items: Sequence[T], work: Callable[[T], R], *, jobs: int, stop: threading.Event,
    name: str = "cas-batch",
) -> Generator[tuple[T, R | BaseException], None, None]:
    """Run ``work`` on every item of ``items`` (ordered largest first, see ``order``), ``jobs``
    at a time in two lanes, and yield ``(item, result or exception)`` as each ends.

    The caller's thread does the yielding, so it alone sees outcomes. When the caller stops
    early (an exception, Ctrl-C while waiting, closing the iterator), ``stop`` is set: no item
    starts after that, and the running ones are waited for (``work`` should end soon once
    ``stop`` is set).
    """
    if not items:
        return
    ends: _Ends[T] = _Ends(items)
    outcomes: queue.SimpleQueue[tuple[T, R | BaseException]] = queue.SimpleQueue()

    def lane(large: bool) -> None:
        while not stop.is_set():
            item = ends.take(large)
            if item is None:
                return
            try:
                outcome: R | BaseException = work(item)
            except BaseException as error:  # handed to the caller's thread, which decides
                outcome = error
            outcomes.put((item, outcome))

    threads = min(jobs, len(items))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    try:
        for index in range(threads):
            pool.submit(lane, index < large_lane(threads))
        for _ in items:
            yield outcomes.get()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
