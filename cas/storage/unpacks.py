"""The SQL of unpacked archives: which content an archive gave, unpacked as which kind
(the ``unpacked`` table of schema.sql)."""

from __future__ import annotations

from typing import NamedTuple

from cas.storage.catalog import Connection


class Unpacked(NamedTuple):
    archive: str
    kind: str
    digest: str  #: the result: a blob, or a tree's record
    archive_size: int


def find_unpacked(conn: Connection, archive: str, kind: str | None) -> Unpacked | None:
    """What unpacking ``archive`` as ``kind`` gave; with ``kind`` None, what unpacking it as
    any kind gave (the first recorded), or None."""
    row = conn.execute(
        "SELECT archive, kind, digest, archive_size FROM unpacked WHERE archive = ?"
        " AND (?2 IS NULL OR kind = ?2) ORDER BY created LIMIT 1",
        (archive, kind),
    ).fetchone()
    return None if row is None else Unpacked._make(row)


def archive_of(conn: Connection, digest: str, kind: str) -> Unpacked | None:
    """An archive that unpacked as ``kind`` gives ``digest``, or None."""
    row = conn.execute(
        "SELECT archive, kind, digest, archive_size FROM unpacked WHERE digest = ? AND kind = ?"
        " ORDER BY created LIMIT 1",
        (digest, kind),
    ).fetchone()
    return None if row is None else Unpacked._make(row)


def record_unpacked(conn: Connection, row: Unpacked, now: float) -> None:
    """Remember what unpacking an archive gave (the same archive and kind always give the
    same content, so a second record changes nothing)."""
    conn.execute(
        "INSERT INTO unpacked (archive, kind, digest, archive_size, created)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (archive, kind) DO NOTHING",
        (*row, now),
    )


def demote(conn: Connection, archive: str) -> None:
    """Make an unpacked archive that no name points at the first victim of cleanup (its last
    access the oldest possible): its content lives on unpacked, and a fetch with the same
    unpack no longer needs it."""
    conn.execute(
        "UPDATE blobs SET last_access = 0 WHERE digest = ?1"
        " AND NOT EXISTS (SELECT 1 FROM names WHERE digest = ?1)",
        (archive,),
    )
