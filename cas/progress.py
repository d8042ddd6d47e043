"""Progress bars for transfers (tqdm on stderr), shown only when asked, i.e. on a terminal.

A transfer reports ``(done, total)`` through the ``Progress`` callback of transfer/request.py; a
bar turns that into tqdm updates. ``done`` may go back to zero when a download restarts.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]


class TransferBar:
    """One transfer's byte bar, created on its first report (so waiting costs no line)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        with self._lock:
            if self._bar is None:
                self._bar = tqdm(
                    total=total, desc=self._label, unit="B", unit_scale=True,
                    unit_divisor=1024, leave=False, file=sys.stderr, dynamic_ncols=True,
                )  # fmt: skip
            if total != self._bar.total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()


class TotalBar:
    """A batch's bar: the bytes of all its transfers (so its rate is the aggregate rate), and
    how many of its items have ended, e.g. ``total 3/20``."""

    def __init__(self, total: int, label: str = "total") -> None:
        self._label = label
        self._items = total
        self._ended = 0
        self._lock = threading.Lock()
        self._bar = tqdm(total=None, desc=self._describe(), unit="B", unit_scale=True,
                         unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)

    def _describe(self) -> str:
        return f"{self._label} {self._ended}/{self._items}"

    def __call__(self, done: int, total: int | None) -> None:
        with self._lock:
            if total != self._bar.total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def advance(self) -> None:
        with self._lock:
            self._ended += 1
            self._bar.set_description(self._describe(), refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._bar.close()
