"""The SQLite catalog, reached through SQLAlchemy: transactions, schema versions, and queries.

Transactions: the DBAPI's own transaction handling is switched off and every transaction emits
its own BEGIN, so a read-then-write is one transaction. Transactions that may write begin
IMMEDIATE (a deferred one that reads then writes fails at once with SQLITE_BUSY_SNAPSHOT when
another process committed meanwhile, whatever the busy timeout), stay short, and are retried as a
whole on "database is locked". Reads stay deferred; in WAL mode they never wait for a writer.

Last access is coarse (guarantee 6): a read records a touch only when the stored time is older
than ``ACCESS_GRANULARITY``, and touches wait in memory until a write transaction happens anyway,
the store closes, or the oldest waiting touch is itself older than the granularity.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, exc
from sqlalchemy.pool import QueuePool

from .errors import CatalogError

log = logging.getLogger("cas")

T = TypeVar("T")

#: Seconds within which last-access times are not updated again, and at most how long a touch
#: waits in memory before it is written. Eviction is LRU to within this.
ACCESS_GRANULARITY = 60.0
#: How long one statement waits for the write lock before SQLite reports "database is locked".
BUSY_TIMEOUT = 30.0
#: How long a write transaction is retried as a whole before the error reaches the caller.
WRITE_DEADLINE = 300.0


def _schema_text() -> str:
    """schema.sql: packaged beside the code in a wheel, at the repository root in a checkout."""
    packaged = resources.files("cas").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "schema.sql").read_text(encoding="utf-8")


def schema_versions() -> list[tuple[int, list[str]]]:
    """The versions of schema.sql, oldest first, each with its statements."""
    versions: list[tuple[int, list[str]]] = []
    pending = ""
    for line in _schema_text().splitlines(keepends=True):
        if line.startswith("-- version:"):
            versions.append((int(line.split(":", 1)[1]), []))
            continue
        if not versions:
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if statement.strip(";").strip() and not all(
                part.strip().startswith("--") or not part.strip()
                for part in statement.splitlines()
            ):
                versions[-1][1].append(statement)
            pending = ""
    numbers = [number for number, _ in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(f"schema.sql versions are not 1..N in order: {numbers}")
    return versions


SCHEMA_VERSIONS = schema_versions()
LATEST_VERSION = SCHEMA_VERSIONS[-1][0]


def _is_locked(error: BaseException) -> bool:
    text = str(getattr(error, "orig", error))
    return "database is locked" in text or "database table is locked" in text


def _translate(error: exc.DBAPIError, path: Path) -> CatalogError:
    reason = str(error.orig)
    if "file is not a database" in reason or "malformed" in reason:
        return CatalogError(
            f"{path} is not a usable SQLite catalog ({reason}); "
            "move it aside and run `cas verify --repair` to rebuild it from blobs/"
        )
    if "readonly" in reason or "read-only" in reason:
        return CatalogError(f"cannot write the catalog {path}: {reason}")
    return CatalogError(f"catalog {path}: {reason}")


class Catalog:
    """One store's catalog.db: a connection pool plus the write and read protocols."""

    def __init__(self, path: Path, setup_lock: Path) -> None:
        self.path = path
        self._setup_lock = setup_lock
        connect_args: dict[str, Any] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
        if hasattr(sqlite3, "LEGACY_TRANSACTION_CONTROL"):  # Python 3.12+
            connect_args["autocommit"] = sqlite3.LEGACY_TRANSACTION_CONTROL
        self.engine = create_engine(
            f"sqlite:///{path}", connect_args=connect_args, poolclass=QueuePool, pool_size=4
        )
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "begin", self._on_begin)
        self._writer = self.engine.execution_options(cas_immediate=True)
        self._touch_lock = threading.Lock()
        self._touches: dict[str, float] = {}
        self._oldest_touch: float | None = None
        self._pid = os.getpid()
        self._setup()

    # -- connections and transactions ----------------------------------------------------------

    @staticmethod
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Take transaction control away from the driver; _on_begin emits BEGIN itself.
        dbapi_connection.isolation_level = None
        for pragma in ("foreign_keys = ON", "synchronous = FULL", "mmap_size = 0"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @staticmethod
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("cas_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _check_fork(self) -> None:
        # A child process must not reuse the parent's pooled connections.
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()
            with self._touch_lock:
                self._touches.clear()
                self._oldest_touch = None

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A deferred (read) transaction."""
        self._check_fork()
        try:
            with self.engine.begin() as conn:
                yield conn
        except exc.DBAPIError as error:
            raise _translate(error, self.path) from error
        if self._touch_due():
            self.flush()

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one IMMEDIATE transaction, retried as a whole while the lock is busy.

        ``work`` must be safe to run again after a rollback. Waiting touches ride along.
        """
        self._check_fork()
        deadline = time.monotonic() + WRITE_DEADLINE
        delay = 0.01
        while True:
            with self._touch_lock:
                touches = dict(self._touches)
            try:
                with self._writer.begin() as conn:
                    self._apply_touches(conn, touches)
                    result = work(conn)
            except exc.OperationalError as error:
                if _is_locked(error) and time.monotonic() < deadline:
                    log.debug("catalog busy, retrying the transaction in %.2fs", delay)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                raise _translate(error, self.path) from error
            except exc.DBAPIError as error:
                raise _translate(error, self.path) from error
            self._forget_touches(touches)
            return result

    # -- last access ---------------------------------------------------------------------------

    def touch(self, digest: str, last_access: float) -> None:
        """Note a read of ``digest`` whose stored last access is ``last_access``."""
        now = time.time()
        if now - last_access < ACCESS_GRANULARITY:
            return
        with self._touch_lock:
            self._touches[digest] = now
            if self._oldest_touch is None:
                self._oldest_touch = now

    def _touch_due(self) -> bool:
        oldest = self._oldest_touch
        return oldest is not None and time.time() - oldest >= ACCESS_GRANULARITY

    @staticmethod
    def _apply_touches(conn: Connection, touches: dict[str, float]) -> None:
        if touches:
            conn.exec_driver_sql(
                "UPDATE blobs SET last_access = max(last_access, ?) WHERE digest = ?",
                [(when, digest) for digest, when in touches.items()],
            )

    def _forget_touches(self, written: dict[str, float]) -> None:
        if not written:
            return
        with self._touch_lock:
            for digest, when in written.items():
                if self._touches.get(digest) == when:
                    del self._touches[digest]
            self._oldest_touch = min(self._touches.values(), default=None)

    def flush(self) -> None:
        """Write waiting touches now."""
        if self._touches:
            self.write(lambda conn: None)

    def close(self) -> None:
        """Flush waiting touches and close every pooled connection."""
        try:
            if os.getpid() == self._pid:
                self.flush()
        finally:
            self.engine.dispose()

    # -- schema --------------------------------------------------------------------------------

    def _version(self) -> tuple[int, str]:
        raw = self.engine.raw_connection()
        try:
            version = raw.execute("PRAGMA user_version").fetchone()[0]
            mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            raw.close()
        return int(version), str(mode)

    def _setup(self) -> None:
        """Bring the catalog to WAL mode and the latest schema, once, under a file lock.

        Switching to WAL needs exclusive access and does not wait on the busy timeout, so
        simultaneous first opens are serialised by a lock file (not catalog.db itself: closing
        another descriptor of the database would drop SQLite's own locks).
        """
        try:
            version, mode = self._version()
            if version == LATEST_VERSION and mode == "wal":
                return
            self._check_not_newer(version)
            with open(self._setup_lock, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                version, mode = self._version()
                self._check_not_newer(version)
                if mode != "wal":
                    raw = self.engine.raw_connection()
                    try:
                        raw.execute("PRAGMA journal_mode = WAL")
                    finally:
                        raw.close()
                if version < LATEST_VERSION:
                    self.write(lambda conn: self._migrate(conn, version))
        except exc.DBAPIError as error:
            self.engine.dispose()
            raise _translate(error, self.path) from error
        except sqlite3.DatabaseError as error:
            self.engine.dispose()
            raise _translate(exc.DBAPIError(None, None, error), self.path) from error
        except BaseException:
            self.engine.dispose()
            raise

    def _check_not_newer(self, version: int) -> None:
        if version > LATEST_VERSION:
            self.engine.dispose()
            raise CatalogError(
                f"{self.path} has schema version {version}, newer than the {LATEST_VERSION} "
                "this cas knows; upgrade cas to use this store"
            )

    @staticmethod
    def _migrate(conn: Connection, current: int) -> None:
        if current == 0 and conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'blobs'"
        ).scalar():
            raise CatalogError("catalog has tables but no schema version; it was not made by cas")
        for number, statements in SCHEMA_VERSIONS:
            if number > current:
                log.info("catalog: applying schema version %d", number)
                for statement in statements:
                    conn.exec_driver_sql(statement)
        conn.exec_driver_sql(f"PRAGMA user_version = {LATEST_VERSION}")


# -- queries: every statement about blobs and names lives here ------------------------------------


def find_blob(conn: Connection, digest: str) -> Any:
    """The blob row (digest, size, last_access) or None."""
    return conn.exec_driver_sql(
        "SELECT digest, size, last_access FROM blobs WHERE digest = ?", (digest,)
    ).first()


def find_name(conn: Connection, name: str) -> Any:
    """The name row joined with its blob (size and last_access are NULL if it has none)."""
    return conn.exec_driver_sql(
        "SELECT n.name, n.digest, n.pinned, n.url, n.sha256, b.size, b.last_access"
        " FROM names n LEFT JOIN blobs b ON b.digest = n.digest WHERE n.name = ?",
        (name,),
    ).first()


def record_blob(conn: Connection, digest: str, size: int, now: float) -> None:
    """Insert the blob's row, or mark an existing one as just accessed."""
    conn.exec_driver_sql(
        "INSERT INTO blobs (digest, size, created, last_access) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (digest) DO UPDATE SET last_access = max(last_access, excluded.last_access)",
        (digest, size, now, now),
    )


def set_name(
    conn: Connection,
    name: str,
    digest: str,
    now: float,
    *,
    url: str | None = None,
    sha256: str | None = None,
) -> None:
    """Point ``name`` at ``digest`` with the given source; a pin is kept."""
    conn.exec_driver_sql(
        "INSERT INTO names (name, digest, url, sha256, created, updated) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, url = excluded.url,"
        " sha256 = excluded.sha256, updated = excluded.updated",
        (name, digest, url, sha256, now, now),
    )


def delete_name(conn: Connection, name: str) -> bool:
    """Delete a name; whether it existed."""
    return conn.exec_driver_sql("DELETE FROM names WHERE name = ?", (name,)).rowcount > 0


def names_of(conn: Connection, digest: str) -> list[str]:
    """Every name pointing at ``digest``."""
    return list(
        conn.exec_driver_sql(
            "SELECT name FROM names WHERE digest = ? ORDER BY name", (digest,)
        ).scalars()
    )


def delete_blob(conn: Connection, digest: str) -> bool:
    """Delete a blob's row; whether it existed. Its file goes later (``unlinkable``)."""
    return conn.exec_driver_sql("DELETE FROM blobs WHERE digest = ?", (digest,)).rowcount > 0


def without_rows(conn: Connection, digests: list[str]) -> list[str]:
    """Those of ``digests`` that have no blob row: the only files that may be unlinked."""
    return [
        digest
        for digest in digests
        if conn.exec_driver_sql("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).first() is None
    ]


def entries(conn: Connection) -> list[Any]:
    """Every name with its blob, then every blob without a name, for listings."""
    return list(
        conn.exec_driver_sql(
            "SELECT n.name, n.digest, b.size, b.last_access, n.pinned, n.url"
            " FROM names n LEFT JOIN blobs b ON b.digest = n.digest"
            " UNION ALL"
            " SELECT NULL, b.digest, b.size, b.last_access, 0, NULL FROM blobs b"
            " WHERE NOT EXISTS (SELECT 1 FROM names n WHERE n.digest = b.digest)"
            " ORDER BY 1 NULLS LAST, 2"
        )
    )
