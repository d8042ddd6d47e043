"""The look-up memory: results of lone SELECTs, remembered while the catalog stays unchanged.

A connection's ``PRAGMA data_version`` changes whenever another connection commits (in this
process or any other). Look-ups run on a connection of their own that never writes, so one
pragma (about 2 µs) tells whether anything remembered may be stale, where the join of a name
and its blob costs 4.5 µs and the Path of the result 1.5 µs more. The first look-up after any
commit reads afresh, so a look-up is never older than one that ran the SELECT.

The connection is a plain sqlite3 one made by the catalog's ``connect`` (same checks, same
pragmas), not one of SQLAlchemy's pool: the look-up path (``cas path``) then never loads it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

#: Look-up results remembered while the catalog is unchanged; past this many, memory restarts.
REMEMBERED_LOOKUPS = 20_000


class Lookups:
    """First rows of lone SELECTs on one connection of their own, remembered while valid."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, enabled: bool) -> None:
        self.enabled = enabled  # a read-only (possibly immutable) catalog reads afresh
        self._connect = connect
        self._lock = threading.Lock()
        #: The connection look-ups run on, made at the first one (None until then or after close).
        self.connection: sqlite3.Connection | None = None
        self._version: int | None = None
        self._rows: dict[tuple[str, tuple[Any, ...]], Any] = {}

    def first_row(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of ``sql`` with ``params`` (None when there is none).

        Raises sqlite3.Error (the connection is then closed and made anew next time), or what
        the catalog's ``connect`` raises.
        """
        key = (sql, params)
        with self._lock:
            if self.connection is None:
                self.connection = self._connect()
            conn = self.connection
            try:
                if self.enabled:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != self._version:
                        self._rows.clear()
                        self._version = version
                    elif key in self._rows:
                        return self._rows[key]
                cursor = conn.execute(sql, params)
                row = cursor.fetchone()
                # Close at once: a statement left unfinished keeps its read snapshot open, and
                # the next look-up on this connection would not see what others committed.
                cursor.close()
            except sqlite3.Error:
                self._drop()  # a damaged file or a misuse: not reused
                raise
            if self.enabled:
                if len(self._rows) >= REMEMBERED_LOOKUPS:
                    self._rows.clear()
                self._rows[key] = row
            return row

    def detach(self) -> sqlite3.Connection | None:
        """Give the connection up to the caller, and forget every remembered row."""
        with self._lock:
            conn, self.connection = self.connection, None
            self._drop()
        return conn

    def close(self) -> None:
        """Close the connection and forget every remembered row."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None
        self._version = None
        self._rows.clear()
