"""A wall clock that moves only when told, for ``Store.open(clock=...)``: tests make time pass
(last accesses age, leases expire) without waiting and without rewriting the catalog."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch, starting at ``start`` (default now) and moved by ``advance``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
