"""SQLAlchemy's pool of the catalog's connections for read and write transactions.

The engine is made, and SQLAlchemy imported (about 200 ms), by the first connection asked for,
so a command that only looks up never pays for it (cas/storage/catalog.py). Statements run on
the DBAPI (sqlite3) connection the pool hands out: its Connection and Result layer cost about
135 µs per transaction, twice the transaction (benchmarks/RESULTS.md). Up to
``KEPT_CONNECTIONS`` stay checked out between uses, so a put does not pay for the pool's
checkout and reset each time.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cas.storage.catalog_file import translate

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: DBAPI connections kept checked out of the pool between transactions, for speed.
KEPT_CONNECTIONS = 4

#: A connection kept checked out of the pool: the pool's own entry, and its DBAPI connection.
_Pooled = tuple[Any, sqlite3.Connection]


class Pool:
    """The pooled connections of one catalog file, each made by ``connect``."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], path: Path) -> None:
        # Connections are made by ``connect``, never from a URL of SQLAlchemy's: the path must
        # reach SQLite exactly, and in a URL a `?` or `#` of the root's path would start its query.
        self._connect = connect
        self._path = path  # named in errors
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._kept: deque[_Pooled] = deque()  # appends and pops are thread-safe

    def _pool(self) -> Engine:
        """SQLAlchemy's engine, made (and SQLAlchemy imported) on first use."""
        with self._engine_lock:
            if self._engine is None:
                from sqlalchemy import create_engine
                from sqlalchemy.pool import QueuePool

                self._engine = create_engine(
                    "sqlite://", poolclass=QueuePool, pool_size=KEPT_CONNECTIONS,
                    creator=self._connect,
                )  # fmt: skip
            return self._engine

    def _take(self) -> _Pooled:
        """A kept connection, else one from SQLAlchemy's pool: the pool's own entry and its
        DBAPI connection (looked up once: SQLAlchemy's accessors cost on a hot path)."""
        try:
            return self._kept.pop()
        except IndexError:
            pass
        engine = self._pool()
        from sqlalchemy import exc

        try:
            pooled = engine.raw_connection()
        except exc.DBAPIError as error:
            raise translate(error.orig, self._path) from error  # type: ignore[arg-type]
        except sqlite3.Error as error:  # SQLAlchemy 2 hands the pool's errors on unwrapped
            raise translate(error, self._path) from error
        return pooled, cast(sqlite3.Connection, pooled.driver_connection)

    def _give_back(self, kept: _Pooled) -> None:
        if len(self._kept) < KEPT_CONNECTIONS:
            self._kept.append(kept)
        else:
            kept[0].close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled DBAPI connection, outside any transaction, for the duration of the block."""
        kept = self._take()
        pooled, conn = kept
        try:
            yield conn
        except sqlite3.Error as error:
            if not isinstance(error, sqlite3.OperationalError):
                pooled.invalidate()  # a damaged file or a misuse: this connection is not reused
            raise
        finally:
            if pooled.is_valid:
                try:
                    if conn.in_transaction:
                        conn.rollback()
                except sqlite3.Error:
                    pooled.invalidate()
                else:
                    self._give_back(kept)

    def close(self) -> None:
        """Close every kept and pooled connection; the pool makes new ones if used again."""
        while True:
            try:
                self._kept.pop()[0].close()
            except IndexError:
                break
        if self._engine is not None:
            self._engine.dispose()

    def abandon(self) -> None:
        """In a forked child: forget the parent's connections without closing them (the parent
        closes its own). The pool is not used afterwards."""
        if self._engine is not None:
            self._engine.dispose(close=False)
