"""The catalog file: connections to it made safely and alike, and its errors in cas's words.

Every connection to catalog.db, whether SQLAlchemy's pool holds it or the catalog uses it plain
(look-ups, the version check, the small flush of access times), is made by ``connect`` and
configured by ``configure``: the path reaches SQLite exactly, a symlink is refused, and the
same pragmas hold on every connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cas.errors import CatalogError

#: How long one statement waits for the write lock before SQLite reports "database is locked".
BUSY_TIMEOUT = 30.0

#: The files SQLite opens beside the catalog, each by following a symlink planted there.
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def connect_args() -> dict[str, Any]:
    """The keyword arguments of ``sqlite3.connect`` for every catalog connection."""
    args: dict[str, Any] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
    if hasattr(sqlite3, "LEGACY_TRANSACTION_CONTROL"):  # Python 3.12+
        args["autocommit"] = sqlite3.LEGACY_TRANSACTION_CONTROL
    return args


def configure(conn: sqlite3.Connection, synchronous: str) -> None:
    """Set cas's pragmas on a new connection, and take transaction control away from the
    driver: every transaction emits its own BEGIN."""
    conn.isolation_level = None
    for pragma in ("foreign_keys = ON", f"synchronous = {synchronous}", "mmap_size = 0"):
        conn.execute(f"PRAGMA {pragma}")


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (the write lock is busy)."""
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


def translate(error: sqlite3.Error, path: Path) -> CatalogError:
    """A sqlite3 error on the catalog ``path`` as a one-line CatalogError."""
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


def read_only_query(path: Path) -> str:
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


def connect(path: Path, query: str | None = None, **args: Any) -> sqlite3.Connection:
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
        conn = sqlite3.connect(name, **args)
    else:
        uri = f"file:{quote(os.fsencode(name))}?{query}"
        conn = sqlite3.connect(uri, uri=True, **args)
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
