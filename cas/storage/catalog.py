"""The SQLite catalog, reached through SQLAlchemy: connections, transactions, schema versions.

SQLAlchemy's engine owns the connections: it opens them (with the pragmas below), pools them,
and disposes of them after a fork. Statements run on the DBAPI (sqlite3) connection it hands out:
SQLAlchemy's Connection and Result layer cost about 135 µs per transaction here, twice the
transaction itself (benchmarks/RESULTS.md), and cas's statements are hand-written SQL anyway
(cas/storage/queries.py).

Transactions: the driver's own transaction handling is switched off and every transaction emits
its own BEGIN, so a read-then-write is one transaction. Transactions that may write begin
IMMEDIATE (a deferred one that reads then writes fails at once with SQLITE_BUSY_SNAPSHOT when
another process committed meanwhile, whatever the busy timeout), stay short, and are retried as a
whole on "database is locked". Reads stay deferred; in WAL mode they never wait for a writer.

Last access is coarse (guarantee 6): a read records a touch only when the stored time is older
than ``ACCESS_GRANULARITY`` (or in the future: the clock went back), and touches wait in memory
until a write transaction happens anyway, the store closes, or the oldest waiting touch is itself
older than the granularity. Counter increments (metrics.py) wait and ride along the same way,
so counting a read costs no transaction of its own. A read never waits for the write lock: the
flush a read makes takes the lock only if it is free; when another process holds it, what waits
stays for a later write, and the close of a catalog that never wrote drops it after
``FLUSH_WAIT``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

from sqlalchemy import create_engine, event, exc
from sqlalchemy.pool import QueuePool

from cas.errors import CatalogError, StoreError
from cas.storage.folder import Folder, open_lock
from cas.storage.metrics import Counter
from cas.storage.processes import forks

log = logging.getLogger("cas")

T = TypeVar("T")

#: Seconds within which last-access times are not updated again, and at most how long a touch
#: waits in memory before it is written. Eviction is LRU to within this.
ACCESS_GRANULARITY = 60.0
#: How long one statement waits for the write lock before SQLite reports "database is locked".
BUSY_TIMEOUT = 30.0
#: How long a write transaction is retried as a whole before the error reaches the caller.
WRITE_DEADLINE = 300.0
#: How long the flush of a closing store waits for the write lock before it drops what it would
#: write (last-access times and counters): a read never waits behind another process's writes.
FLUSH_WAIT = 0.1
#: After a read found the write lock busy, how long before reads try to flush again.
FLUSH_RETRY = 1.0
#: DBAPI connections kept checked out of the pool between transactions, for speed.
KEPT_CONNECTIONS = 4
#: Look-up results remembered while the catalog is unchanged; past this many, memory restarts.
REMEMBERED_LOOKUPS = 20_000

#: What a transaction function receives: the DBAPI connection, inside its transaction.
Connection = sqlite3.Connection



def _schema_text() -> str:
    """schema.sql: packaged beside the code in a wheel, at the repository root in a checkout."""
    packaged = resources.files("cas").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "schema.sql").read_text(encoding="utf-8")


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
            if statement.strip(";").strip():
                versions[-1][1].append(statement)
            pending = ""
    numbers = [number for number, _ in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(f"schema.sql versions are not 1..N in order: {numbers}")
    return versions


SCHEMA_VERSIONS = schema_versions()
LATEST_VERSION = SCHEMA_VERSIONS[-1][0]


def _is_locked(error: BaseException) -> bool:
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


def _translate(error: sqlite3.Error, path: Path) -> CatalogError:
    reason = str(error)
    if "file is not a database" in reason or "malformed" in reason:
        return CatalogError(damaged_catalog(path, reason))
    if "disk is full" in reason:
        return CatalogError(f"cannot write the catalog {path}: no space left on the device;"
                            " nothing was changed")
    if "readonly" in reason or "read-only" in reason:
        return CatalogError(f"cannot write the catalog {path}: {reason}")
    return CatalogError(f"catalog {path}: {reason}")


def damaged_catalog(path: Path, why: str) -> str:
    """The one-line message for a catalog damaged from outside, saying what to do."""
    return (
        f"{path} is not a usable SQLite catalog ({why}); move it aside (keep it: `sqlite3"
        f" {path.name} .recover` may save names) and run `cas verify`, which rebuilds the"
        " catalog from blobs/ (names and sources must then be added again)"
    )


class _Pending:
    """What waits in memory for a write transaction that happens anyway: touches and counts.

    A write takes a snapshot, applies it inside its transaction, and forgets exactly what it
    wrote only once that transaction committed; anything added meanwhile stays for the next.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
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
    def apply(conn: Connection, touches: dict[str, float], counts: dict[str, int],
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


def add_counts(conn: Connection, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to their counters inside ``conn``'s write transaction: for a writer whose
    counts belong to what that transaction does (and go if it is rolled back)."""
    if counts:
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(counts.items()),
        )


class _Lookups:
    """Results of lone SELECTs, remembered while the catalog stays unchanged.

    A connection's ``PRAGMA data_version`` changes whenever another connection commits (in this
    process or any other). Look-ups run on a connection of their own that never writes, so one
    pragma (about 2 µs) tells whether anything remembered may be stale, where the join of a name
    and its blob costs 4.5 µs and the Path of the result 1.5 µs more. The first look-up after
    any commit reads afresh, so a look-up is never older than one that ran the SELECT.
    """

    def __init__(self, take: Callable[[], tuple[Any, sqlite3.Connection]], *,
                 enabled: bool) -> None:
        self.enabled = enabled  # a read-only (possibly immutable) catalog reads afresh
        self._take = take
        self._lock = threading.Lock()
        self._kept: tuple[Any, sqlite3.Connection] | None = None
        self._version: int | None = None
        self._rows: dict[tuple[str, tuple[Any, ...]], Any] = {}

    def first_row(self, sql: str, params: tuple[Any, ...]) -> Any:
        key = (sql, params)
        with self._lock:
            if self._kept is None:
                self._kept = self._take()
            conn = self._kept[1]
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
                self._drop(invalidate=True)  # a damaged file or a misuse: not reused
                raise
            if self.enabled:
                if len(self._rows) >= REMEMBERED_LOOKUPS:
                    self._rows.clear()
                self._rows[key] = row
            return row

    def close(self) -> None:
        with self._lock:
            self._drop(invalidate=False)

    def _drop(self, *, invalidate: bool) -> None:
        """Give back (or invalidate) the connection and forget every remembered row."""
        if self._kept is not None:
            if invalidate:
                self._kept[0].invalidate()
            else:
                self._kept[0].close()
        self._kept = None
        self._version = None
        self._rows.clear()


class Catalog:
    """One store's catalog.db: a connection pool plus the write and read protocols."""

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
        self._kept: queue.SimpleQueue[tuple[Any, sqlite3.Connection]] = queue.SimpleQueue()
        connect_args: dict[str, Any] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
        if hasattr(sqlite3, "LEGACY_TRANSACTION_CONTROL"):  # Python 3.12+
            connect_args["autocommit"] = sqlite3.LEGACY_TRANSACTION_CONTROL
        # Connections are made here, never from a URL of SQLAlchemy's: the path must reach
        # SQLite exactly, and in a URL a `?` or `#` of the root's path would start its query.
        query = _read_only_query(path) if read_only else None
        self.engine = create_engine(
            "sqlite://", poolclass=QueuePool, pool_size=KEPT_CONNECTIONS,
            creator=lambda: connect(path, query, **connect_args),
        )  # fmt: skip
        event.listen(self.engine, "connect", self._on_connect)
        self._pending = _Pending(clock)
        self._forks = forks()
        self._lookups = _Lookups(self._take, enabled=not read_only)
        self._next_flush = 0.0  # monotonic time before which reads do not try to flush
        self._wrote = False  # whether a write transaction of this catalog committed
        self._setup()

    # -- connections and transactions ----------------------------------------------------------

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Take transaction control away from the driver: every transaction emits its own BEGIN.
        dbapi_connection.isolation_level = None
        for pragma in ("foreign_keys = ON", f"synchronous = {self._synchronous}",
                       "mmap_size = 0"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's connections and waiting writes, which the
        parent closes and writes itself."""
        if forks() != self._forks:
            self.engine.dispose(close=False)
            self._kept = queue.SimpleQueue()
            # New ones rather than clear(): another thread may have held their lock at the fork.
            self._pending = _Pending(self._clock)
            self._lookups = _Lookups(self._take, enabled=not self.read_only)
            self._forks = forks()

    def _take(self) -> tuple[Any, sqlite3.Connection]:
        """A connection out of the kept ones, or from SQLAlchemy's pool: the pool's own entry
        and its DBAPI connection (looked up once: SQLAlchemy's accessors cost on a hot path).

        Up to ``KEPT_CONNECTIONS`` stay checked out of the pool between uses, so a look-up or a
        put does not pay for the pool's checkout and reset each time.
        """
        self._check_fork()
        try:
            return self._kept.get_nowait()
        except queue.Empty:
            pass
        try:
            pooled = self.engine.raw_connection()
        except exc.DBAPIError as error:
            raise _translate(error.orig, self.path) from error  # type: ignore[arg-type]
        except sqlite3.Error as error:  # SQLAlchemy 2 hands the pool's errors on unwrapped
            raise _translate(error, self.path) from error
        return pooled, cast(sqlite3.Connection, pooled.driver_connection)

    def _give_back(self, kept: tuple[Any, sqlite3.Connection]) -> None:
        if self._kept.qsize() < KEPT_CONNECTIONS:
            self._kept.put(kept)
        else:
            kept[0].close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A DBAPI connection, outside any transaction, for the duration of the block."""
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

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A deferred (read) transaction."""
        try:
            with self._connection() as conn:
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error
        self._flush_if_due()

    def lookup(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of one SELECT, run alone outside any transaction: the hot read path
        (``path()`` of a name or digest). The result is remembered while the catalog does not
        change (see ``_Lookups``)."""
        self._check_fork()
        try:
            row = self._lookups.first_row(sql, params)
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error
        self._flush_if_due()
        return row

    def _close_kept(self) -> None:
        while True:
            try:
                self._kept.get_nowait()[0].close()
            except queue.Empty:
                return

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
                if _is_locked(error) and time.monotonic() < deadline:
                    log.debug("catalog busy, retrying the transaction in %.2fs", delay)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                raise _translate(error, self.path) from error
            except sqlite3.Error as error:
                raise _translate(error, self.path) from error
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
        a writer (guarantee 6)."""
        self._check_fork()
        if not self._pending or self.read_only:
            return not self._pending
        touches, counts, taken = self._pending.take()
        try:
            with self._connection() as conn:
                conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    self._pending.apply(conn, touches, counts, taken)
                    conn.execute("COMMIT")
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.OperationalError as error:
            if _is_locked(error):
                log.debug("catalog busy: access times and counters wait for a later write")
                return False
            raise _translate(error, self.path) from error
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error
        self._pending.written(touches, counts, taken)
        return not self._pending

    def _flush_if_due(self) -> None:
        """After a read: write what waited ``ACCESS_GRANULARITY`` if the lock is free now;
        after finding it busy, try again only ``FLUSH_RETRY`` later."""
        due = self._pending.due() and time.monotonic() >= self._next_flush
        if due and not self.flush_if_free():
            self._next_flush = time.monotonic() + FLUSH_RETRY

    def close(self) -> None:
        """Write waiting touches and counts, and close every pooled connection.

        A catalog that only read writes them if the write lock is free within ``FLUSH_WAIT``
        and else drops them: a reader's exit never waits for another process's writes. One
        that wrote waits for the lock as its writes did, so a writer's counts add up exactly.
        """
        try:
            if self._wrote:
                self.flush()
            elif not self.flush_if_free(FLUSH_WAIT):
                log.debug("catalog busy at close: last-access times and counters dropped")
        finally:
            self.close_connections()

    def close_connections(self) -> None:
        """Close every connection, kept or pooled (a forked child leaves the parent's alone)."""
        self._check_fork()
        self._lookups.close()
        self._close_kept()
        self.engine.dispose()

    # -- schema --------------------------------------------------------------------------------

    def _version(self) -> tuple[int, str]:
        with self._connection() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return int(version), str(mode)

    def _setup(self) -> None:
        """Bring the catalog to WAL mode and the latest schema, once, under a file lock.

        Switching to WAL needs exclusive access and does not wait on the busy timeout, so
        simultaneous first opens are serialised by a lock file (not catalog.db itself: closing
        another descriptor of the database would drop SQLite's own locks).
        """
        try:
            version, mode = self._version()
            if version == LATEST_VERSION and (mode == "wal" or self.read_only):
                return
            self._check_not_newer(version)
            if self.read_only:
                raise CatalogError(
                    f"{self.path} has schema version {version} and this cas needs"
                    f" {LATEST_VERSION}; migrating needs write access: open the store once"
                    " with write access"
                )
            with open_lock(self._setup_lock, self._locks) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                version, mode = self._version()
                self._check_not_newer(version)
                if mode != "wal":
                    with self._connection() as conn:
                        conn.execute("PRAGMA journal_mode = WAL")
                if version < LATEST_VERSION:
                    self.write(lambda conn: self._migrate(conn, version))
        except sqlite3.Error as error:
            self.close_connections()
            raise _translate(error, self.path) from error
        except BaseException:
            self.close_connections()
            raise

    def _check_not_newer(self, version: int) -> None:
        if version > LATEST_VERSION:
            raise CatalogError(
                f"{self.path} has schema version {version}, newer than the {LATEST_VERSION} "
                "this cas knows; upgrade cas to use this store"
            )

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

    @staticmethod
    def _migrate(conn: Connection, current: int) -> None:
        if current == 0 and conn.execute(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'blobs'"
        ).fetchone()[0]:
            raise CatalogError("catalog has tables but no schema version; it was not made by cas")
        for number, statements in SCHEMA_VERSIONS:
            if number > current:
                log.info("catalog: applying schema version %d", number)
                for statement in statements:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION}")


def _read_only_query(path: Path) -> str:
    """The URI query that opens ``path`` for reading only.

    ``mode=ro`` shares WAL readers' locks, but SQLite needs the ``-shm`` file for it, which it
    cannot create on a read-only filesystem or folder. Without one no process has the catalog
    open, and ``immutable=1`` reads the file as it is (what a later writer adds to the WAL stays
    unseen until it is checkpointed, which a short read does not miss).
    """
    try:
        connect(path, "mode=ro").close()
    except sqlite3.OperationalError:
        return "immutable=1"
    return "mode=ro"


#: The files SQLite opens beside the catalog, each by following a symlink planted there.
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def connect(path: Path, query: str | None = None, **connect_args: Any) -> sqlite3.Connection:
    """A sqlite3 connection to the catalog file ``path``, refusing a symlink (guarantee 7).

    The path reaches SQLite exactly: as a plain file name (never parsed as a URI), or, with a
    URI ``query`` such as ``mode=ro``, percent-encoded byte by byte. SQLite follows a symlink
    planted as ``catalog.db`` or beside it (``-wal``, ``-shm``), and has no way to be told not
    to from Python; so none may stand there before the connection is made, and the file SQLite
    opened must be the one in the root (``PRAGMA database_list`` names the file it resolved),
    which catches a link swapped in between. Raises CatalogError for a link, or a probe that
    fails (sqlite3.Error) when it is not the catalog.
    """
    name = os.path.abspath(path)
    refuse_links(path)
    conn: sqlite3.Connection
    if query is None:
        conn = sqlite3.connect(name, **connect_args)
    else:
        uri = f"file:{quote(os.fsencode(name))}?{query}"
        conn = sqlite3.connect(uri, uri=True, **connect_args)
    try:  # as bytes: a path need not be UTF-8
        opened = conn.execute("SELECT CAST(file AS BLOB) FROM pragma_database_list"
                              " WHERE name = 'main'").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    folder = os.path.realpath(os.path.dirname(name))
    if opened != os.fsencode(os.path.join(folder, os.path.basename(name))):
        conn.close()
        raise CatalogError(_link_refusal(path))
    return conn


def refuse_links(path: Path) -> None:
    """Raise CatalogError if a symlink stands as the catalog ``path`` or one of the files
    SQLite keeps beside it."""
    for suffix in _COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(f"{path}{suffix}").st_mode):
                raise CatalogError(_link_refusal(Path(f"{path}{suffix}")))


def _link_refusal(path: Path) -> str:
    return (f"{path} is a symbolic link, which cas never follows inside a store; put the"
            " catalog file itself there")
