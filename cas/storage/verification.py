"""Every SQL statement about verification: when each blob was last hashed, damaged blobs,
files without rows, and names left without a blob.

Each function takes the caller's transaction, as in ``cas.storage.queries``, which holds the
statements about blobs, names, leases, counters and downloads. The tables are defined in
schema.sql.
"""

from __future__ import annotations

from typing import NamedTuple

from cas.storage.catalog import Connection
from cas.storage.queries import without_credentials


class VerifyRow(NamedTuple):
    digest: str
    size: int
    verified: float | None  #: when its content was last hashed and right; None: never
    signature: str | None  #: its file's stat signature then (cas/storage/found.py ``signature``)


def verify_rows(conn: Connection) -> dict[str, VerifyRow]:
    """Every blob row with its last verification."""
    return {
        row[0]: VerifyRow._make(row)
        for row in conn.execute("SELECT digest, size, verified, signature FROM blobs")
    }


def mark_verified(conn: Connection, checked: list[tuple[str, int, str]], now: float) -> None:
    """Record that each (digest, size, signature) was hashed at ``now`` and found right."""
    if not checked:
        return
    conn.executemany(
        "UPDATE blobs SET verified = ?, signature = ? WHERE digest = ? AND size = ?",
        [(now, signature, digest, size) for digest, size, signature in checked],
    )


def adopt_blob(conn: Connection, digest: str, size: int, since: float, signature: str,
               now: float) -> bool:
    """Give a right file without a row its row, as accessed at ``since`` (its file's mtime, so
    cleanup takes it in its turn); whether a row was added."""
    return conn.execute(
        "INSERT INTO blobs (digest, size, created, last_access, verified, signature)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
        (digest, size, since, since, now, signature),
    ).rowcount > 0


def record_damaged(conn: Connection, digest: str, problem: str, quarantined: str | None,
                   now: float) -> None:
    """Drop a missing or damaged blob's row and remember the digest (names stay)."""
    conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
    conn.execute(
        "INSERT INTO damaged (digest, found, problem, quarantined) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (digest) DO UPDATE SET found = excluded.found,"
        " problem = excluded.problem, quarantined = excluded.quarantined",
        (digest, now, problem, quarantined),
    )


class DamagedRow(NamedTuple):
    digest: str
    found: float
    problem: str
    quarantined: str | None
    names: str | None  #: newline-separated
    url: str | None  #: a source of one of its names, to fetch it again from
    name: str | None  #: the name that has ``url``
    sha256: str | None
    expected_size: int | None
    unpack: str | None  #: the kind ``url``'s archive is unpacked as, or None


def damaged(conn: Connection) -> list[DamagedRow]:
    """Damaged digests not stored again, with their names and one recorded source.

    Entries whose blob is back (put or fetched again) are cleared first: call it inside a
    write transaction.
    """
    conn.execute(
        "DELETE FROM damaged WHERE digest IN (SELECT digest FROM blobs)"
    )
    return [without_credentials(DamagedRow._make(row)) for row in conn.execute(
        "SELECT d.digest, d.found, d.problem, d.quarantined,"
        " (SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = d.digest),"
        " s.url, s.name, s.sha256, s.expected_size, s.unpack"
        " FROM damaged d LEFT JOIN names s ON s.name = (SELECT min(name) FROM names m"
        "  WHERE m.digest = d.digest AND m.url IS NOT NULL)"
        " ORDER BY d.digest"
    )]


def forget_damaged(conn: Connection, digests: list[str]) -> None:
    """Forget damaged digests that nothing refers to any more (reported once, when found)."""
    if not digests:
        return
    conn.executemany(
        "DELETE FROM damaged WHERE digest = ? AND NOT EXISTS"
        " (SELECT 1 FROM names n WHERE n.digest = damaged.digest)",
        [(digest,) for digest in digests],
    )


def dangling_names(conn: Connection) -> list[tuple[str, str]]:
    """(name, digest) of names whose blob is not stored, that have no source to fetch it from,
    and that verify did not explain as damaged: no cas operation leaves one (guarantee 5)."""
    return [(str(name), str(digest)) for name, digest in conn.execute(
        "SELECT name, digest FROM names n WHERE url IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = n.digest)"
        " AND NOT EXISTS (SELECT 1 FROM damaged d WHERE d.digest = n.digest) ORDER BY name"
    )]
