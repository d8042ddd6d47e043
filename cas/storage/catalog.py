"""The SQLite catalog: connections, transactions, and the order in which they are used.

Two kinds of connection, made alike (cas/storage/catalog_file.py: same ``connect``, pragmas):

- SQLAlchemy's engine pools those of read and write transactions (cas/storage/pool.py), made
  (and SQLAlchemy imported) by the first such transaction, disposed of after a fork; statements
  run on the DBAPI (sqlite3) connection it hands out. The SQL is cas/storage/queries.py.
- Plain sqlite3 connections serve a look-up's needs: the schema check at open (then the
  look-ups, cas/storage/lookups.py, keep that connection) and the small flush of waiting access
  times and counters (at close, on the look-ups' connection, or when due after a read). A
  command that only looks up (``cas path``) never loads SQLAlchemy (about 200 ms).

Transactions: the driver's own transaction handling is switched off and every transaction emits
its own BEGIN, so a read-then-write is one transaction. Transactions that may write begin
IMMEDIATE (a deferred one that reads then writes fails at once with SQLITE_BUSY_SNAPSHOT when
another process committed meanwhile, whatever the busy timeout), stay short, and are retried as a
whole on "database is locked". Reads stay deferred; in WAL mode they never wait for a writer.

Last access is coarse (guarantee 6, cas/storage/pending.py): touches and counter increments wait
in memory for a write transaction, the store's close, or the oldest touch to pass the
granularity. A read never waits for the write lock: its flush takes the lock only if it is free,
else what waits stays for a later write (a catalog that never wrote drops it at close after
``FLUSH_WAIT``).

After a fork (``cas.storage.processes.forks()``), a child forgets the parent's connections of
both kinds and its waiting writes, and opens its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cas.errors import CatalogError, StoreError
from cas.logs import log
from cas.storage.catalog_file import (
    BUSY_TIMEOUT,
    configure,
    connect,
    connect_args,
    is_locked,
    read_only_query,
    translate,
)
from cas.storage.counters import Counter
from cas.storage.folder import Folder, open_lock
from cas.storage.lookups import Lookups
from cas.storage.pending import ACCESS_GRANULARITY, Pending
from cas.storage.processes import forks
from cas.storage.schema import LATEST_VERSION, check_not_newer, migrate

if TYPE_CHECKING:
    from cas.storage.pool import Pool


T = TypeVar("T")

#: How long a write transaction is retried as a whole before the error reaches the caller.
WRITE_DEADLINE = 300.0
#: How long the flush of a closing store waits for the write lock before it drops what it would
#: write (last-access times and counters): a read never waits behind another process's writes.
FLUSH_WAIT = 0.1
#: After a read found the write lock busy, how long before reads try to flush again.
FLUSH_RETRY = 1.0
#: What a transaction function receives: the DBAPI connection, inside its transaction.
Connection = sqlite3.Connection


class Catalog:
    """One store's catalog.db: its connections plus the write and read protocols."""

    def __init__(self, path: Path, setup_lock: Path, *, durable: bool = True,
                 read_only: str | None = None, locks: Folder | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock  # the wall time of last accesses
        self._locks = locks  # the Folder of setup_lock's folder, opened without following links
        #: Why the catalog was opened for reading only (a read-only filesystem or folder, a full
        #: disk), or None: writes then raise StoreError, and reads record no access or counts.
        self.read_only = read_only
        self._setup_lock = setup_lock
        self._synchronous = "FULL" if durable else "NORMAL"
        # Connections are made here (the pool's too), never from a URL of SQLAlchemy's.
        self._query = read_only_query(path) if read_only else None
        self._connect_args = connect_args()
        self._pool: Pool | None = None  # made by the first read or write transaction
        self._spare: sqlite3.Connection | None = None  # one plain connection kept for reuse
        self._locks_made()
        self._pending = Pending(clock)
        self._forks = forks()
        self._lookups = Lookups(self._lookup_connection, enabled=not read_only)
        self._next_flush = 0.0  # monotonic time before which reads do not try to flush
        self._wrote = False  # whether a write transaction of this catalog committed
        self._setup()

    # -- connections ---------------------------------------------------------------------------

    def _locks_made(self) -> None:
        # New ones after a fork too: another thread may have held one at the fork.
        self._pool_lock = threading.Lock()
        self._spare_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the catalog with cas's pragmas: for the pool and plain use."""
        conn = connect(self.path, self._query, **self._connect_args)
        try:
            configure(conn, self._synchronous)
        except BaseException:
            conn.close()
            raise
        return conn

    def _lookup_connection(self) -> sqlite3.Connection:
        """The look-ups' own connection: the kept one (opening checked the schema on it)."""
        with self._spare_lock:
            conn, self._spare = self._spare, None
        return conn if conn is not None else self._connect()

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's connections and waiting writes, which the
        parent closes and writes itself."""
        if forks() != self._forks:
            if self._pool is not None:
                self._pool.abandon()
            self._pool = None
            self._spare = None
            self._locks_made()
            # New ones rather than clear(): another thread may have held their lock at the fork.
            self._pending = Pending(self._clock)
            self._lookups = Lookups(self._lookup_connection, enabled=not self.read_only)
            self._forks = forks()

    def _connection(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A pooled connection, outside any transaction, for the duration of the block; the
        pool (and its module) is made on first use."""
        self._check_fork()
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    from cas.storage.pool import Pool

                    self._pool = Pool(self._connect, self.path)
                pool = self._pool
        return pool.connection()

    @contextlib.contextmanager
    def _plain(self) -> Iterator[sqlite3.Connection]:
        """A plain connection (no SQLAlchemy), outside any transaction, for the block: one is
        kept for the next use, as the pool would."""
        self._check_fork()
        with self._spare_lock:
            conn, self._spare = self._spare, None
        if conn is None:
            conn = self._connect()
        reuse = True
        try:
            yield conn
        except sqlite3.Error as error:
            reuse = isinstance(error, sqlite3.OperationalError)  # not a damaged file's
            raise
        finally:
            try:
                if reuse and conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error:
                reuse = False
            with self._spare_lock:
                if reuse and self._spare is None:
                    self._spare, conn = conn, None
            if conn is not None:
                conn.close()

    def close_connections(self) -> None:
        """Close every connection, plain, kept or pooled (a forked child leaves the parent's
        alone)."""
        self._check_fork()
        self._lookups.close()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
        if self._pool is not None:
            self._pool.close()

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A deferred (read) transaction."""
        try:
            with self._connection() as conn:
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise translate(error, self.path) from error
        self._flush_if_due()

    def lookup(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of one SELECT, run alone outside any transaction on a plain
        connection: the hot read path (``path()`` of a name or digest). The result is
        remembered while the catalog does not change (cas/storage/lookups.py)."""
        self._check_fork()
        try:
            row = self._lookups.first_row(sql, params)
        except sqlite3.Error as error:
            raise translate(error, self.path) from error
        self._flush_if_due()
        return row

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one IMMEDIATE transaction, retried as a whole while the lock is busy.

        ``work`` must be safe to run again after a rollback. Waiting touches and counts ride
        along, and are forgotten only once the transaction committed. Raises StoreError when
        the catalog was opened read-only.
        """
        if self.read_only:
            raise StoreError(f"store root {self.path.parent} is not writable ({self.read_only})")
        self._check_fork()  # before taking the waiting writes: a child's are not the parent's
        deadline = time.monotonic() + WRITE_DEADLINE
        delay = 0.01
        while True:
            touches, counts, taken = self._pending.take()
            try:
                with self._connection() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    self._pending.apply(conn, touches, counts, max(taken, self._clock()))
                    result = work(conn)
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as error:
                if is_locked(error) and time.monotonic() < deadline:
                    import random  # only a busy catalog needs the jitter

                    log.debug("catalog busy, retrying the transaction in %.2fs", delay)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                raise translate(error, self.path) from error
            except sqlite3.Error as error:
                raise translate(error, self.path) from error
            self._pending.written(touches, counts, taken)
            self._wrote = True
            return result

    # -- last access and counters: batched, never a transaction of their own -------------------

    def touch(self, digest: str, last_access: float) -> None:
        """Note a read of ``digest`` whose stored last access is ``last_access``: when that is
        older than the granularity, or in the future (written before the clock went back)."""
        now = self._clock()
        stale = now - last_access >= ACCESS_GRANULARITY or last_access > now
        if stale and not self.read_only:
            self._check_fork()
            self._pending.touch(digest, now)

    def count(self, name: Counter, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``, written with the next write (storage/metrics.py).

        Raises ValueError for a name that is not a ``Counter``.
        """
        if type(name) is not Counter:
            name = Counter(name)  # ValueError for a misspelt name, before it reaches the table
        if amount and not self.read_only:
            self._check_fork()
            self._pending.count(name, amount)  # a Counter is its name (a StrEnum)

    def flush(self) -> None:
        """Write waiting touches and counts now, waiting for the write lock if need be."""
        self._check_fork()
        if self._pending:
            self.write(lambda conn: None)

    def flush_if_free(self, wait: float = 0.0) -> bool:
        """Write waiting touches and counts if the write lock is free within ``wait`` seconds;
        whether nothing is left waiting. When another process holds the lock they stay waiting
        (for a later write of this process), and this returns at once: a read never waits for
        a writer (guarantee 6). Runs on a plain connection: a reader needs no pool for it."""
        self._check_fork()
        if not self._pending or self.read_only:
            return not self._pending
        touches, counts, taken = self._pending.take()
        try:
            with self._plain() as conn:
                conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    self._pending.apply(conn, touches, counts, taken)
                    conn.execute("COMMIT")
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.OperationalError as error:
            if is_locked(error):
                log.debug("catalog busy: access times and counters wait for a later write")
                return False
            raise translate(error, self.path) from error
        except sqlite3.Error as error:
            raise translate(error, self.path) from error
        self._pending.written(touches, counts, taken)
        return not self._pending

    def _flush_if_due(self) -> None:
        """After a read: write what waited ``ACCESS_GRANULARITY`` if the lock is free now;
        after finding it busy, try again only ``FLUSH_RETRY`` later."""
        due = self._pending.due() and time.monotonic() >= self._next_flush
        if due and not self.flush_if_free():
            self._next_flush = time.monotonic() + FLUSH_RETRY

    def close(self) -> None:
        """Write waiting touches and counts, and close every connection.

        A catalog that only read writes them if the write lock is free within ``FLUSH_WAIT``
        and else drops them: a reader's exit never waits for another process's writes. One
        that wrote waits for the lock as its writes did, so a writer's counts add up exactly.
        """
        try:
            self._check_fork()
            conn = self._lookups.detach()  # serves the flush below unless one is kept
            with self._spare_lock:
                if self._spare is None:
                    self._spare, conn = conn, None
            if conn is not None:
                conn.close()
            if self._wrote:
                self.flush()
            elif not self.flush_if_free(FLUSH_WAIT):
                log.debug("catalog busy at close: last-access times and counters dropped")
        finally:
            self.close_connections()

    # -- schema --------------------------------------------------------------------------------

    def _version(self) -> tuple[int, str]:
        with self._plain() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return int(version), str(mode)

    def _setup(self) -> None:
        """Bring the catalog to WAL mode and the latest schema, once, under a file lock.

        Switching to WAL needs exclusive access and does not wait on the busy timeout, so
        simultaneous first opens are serialised by a lock file (not catalog.db itself: closing
        another descriptor of the database would drop SQLite's own locks). A catalog already
        at the latest version in WAL mode is checked on a plain connection, without the pool.
        """
        try:
            version, mode = self._version()
            if version == LATEST_VERSION and (mode == "wal" or self.read_only):
                return
            check_not_newer(self.path, version)
            if self.read_only:
                raise CatalogError(
                    f"{self.path} has schema version {version} and this cas needs"
                    f" {LATEST_VERSION}; migrating needs write access: open the store once"
                    " with write access"
                )
            with open_lock(self._setup_lock, self._locks) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                version, mode = self._version()
                check_not_newer(self.path, version)
                if mode != "wal":
                    with self._plain() as conn:
                        conn.execute("PRAGMA journal_mode = WAL")
                if version < LATEST_VERSION:
                    self.write(lambda conn: migrate(conn, version))
        except sqlite3.Error as error:
            self.close_connections()
            raise translate(error, self.path) from error
        except BaseException:
            self.close_connections()
            raise

    def integrity_problems(self) -> list[str]:
        """What SQLite's ``PRAGMA quick_check`` finds wrong with the catalog file (empty: none).

        Reads every page, so it is left to verification rather than done on every open.
        """
        try:
            with self.read() as conn:
                rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        except CatalogError as error:
            return [str(error)]
        return [] if rows == ["ok"] else rows
