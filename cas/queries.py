"""Every SQL statement about blobs, names, leases, counters, downloads and verification.

Each function takes the caller's transaction (a SQLAlchemy Connection from ``Catalog.write`` or
``Catalog.read``) and runs its statements through it; ``find_blob`` and ``find_name`` also take
the Catalog itself, for a lone read outside any transaction (``Catalog.lookup``). The tables
are defined in schema.sql.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection

from .catalog import Catalog

# -- queries: every statement about blobs and names lives here ------------------------------------


class BlobRow(NamedTuple):
    digest: str
    size: int
    last_access: float


class NameRow(NamedTuple):
    name: str
    digest: str
    pinned: int
    url: str | None
    sha256: str | None
    expected_size: int | None
    size: int | None  #: NULL when the name's blob is not stored
    last_access: float | None


def _one(source: Connection | Catalog, sql: str, params: tuple[Any, ...]) -> Any:
    """One row of ``sql``: inside the caller's transaction, or a lone read on the catalog."""
    if isinstance(source, Catalog):
        return source.lookup(sql, params)
    return source.exec_driver_sql(sql, params).first()


def find_blob(source: Connection | Catalog, digest: str) -> BlobRow | None:
    """The blob's row, or None."""
    row = _one(source, "SELECT digest, size, last_access FROM blobs WHERE digest = ?", (digest,))
    return None if row is None else BlobRow._make(row)


def find_name(source: Connection | Catalog, name: str) -> NameRow | None:
    """The name's row joined with its blob's size and last access, or None."""
    row = _one(
        source,
        "SELECT n.name, n.digest, n.pinned, n.url, n.sha256, n.expected_size, b.size,"
        " b.last_access FROM names n LEFT JOIN blobs b ON b.digest = n.digest WHERE n.name = ?",
        (name,),
    )
    return None if row is None else NameRow._make(row)


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
    expected_size: int | None = None,
) -> None:
    """Point ``name`` at ``digest`` with the given source; a pin is kept."""
    conn.exec_driver_sql(
        "INSERT INTO names (name, digest, url, sha256, expected_size, created, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, url = excluded.url,"
        " sha256 = excluded.sha256, expected_size = excluded.expected_size,"
        " updated = excluded.updated",
        (name, digest, url, sha256, expected_size, now, now),
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


# -- leases and pins -------------------------------------------------------------------------------


def insert_lease(conn: Connection, digest: str, host: str, pid: int, started: float,
                 now: float, expires: float) -> int:
    """Record a lease on ``digest``; return its id."""
    cursor = conn.exec_driver_sql(
        "INSERT INTO leases (digest, host, pid, started, created, expires)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (digest, host, pid, started, now, expires),
    )
    return int(cursor.lastrowid)


def renew_leases(conn: Connection, ids: list[int], expires: float) -> set[int]:
    """Extend the given leases; return the ids that still existed."""
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    conn.exec_driver_sql(f"UPDATE leases SET expires = ? WHERE id IN ({marks})", (expires, *ids))
    return set(conn.exec_driver_sql(f"SELECT id FROM leases WHERE id IN ({marks})",
                                    tuple(ids)).scalars())


def delete_leases(conn: Connection, ids: list[int]) -> int:
    """Delete leases by id; return how many went."""
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return conn.exec_driver_sql(f"DELETE FROM leases WHERE id IN ({marks})", tuple(ids)).rowcount


def delete_leases_of(conn: Connection, digest: str) -> int:
    """Delete every lease on ``digest``; return how many went."""
    return conn.exec_driver_sql("DELETE FROM leases WHERE digest = ?", (digest,)).rowcount


def delete_expired_leases(conn: Connection, now: float) -> int:
    """Delete every lease past its expiry; return how many went."""
    return conn.exec_driver_sql("DELETE FROM leases WHERE expires <= ?", (now,)).rowcount


def leases_of_host(conn: Connection, host: str, now: float) -> list[Any]:
    """Unexpired leases held by processes of ``host``: (id, pid, started)."""
    return list(conn.exec_driver_sql(
        "SELECT id, pid, started FROM leases WHERE host = ? AND expires > ?", (host, now)
    ))


def live_leases(conn: Connection, digest: str, now: float, dead: list[int]) -> int:
    """How many unexpired leases not known dead hold ``digest``."""
    return sum(
        1 for (lease_id,) in conn.exec_driver_sql(
            "SELECT id FROM leases WHERE digest = ? AND expires > ?", (digest, now)
        ) if lease_id not in dead
    )


def set_pinned(conn: Connection, digest: str, name: str | None, pinned: bool) -> int:
    """Pin or unpin ``name``, or every name of ``digest`` when name is None; return the count."""
    if name is not None:
        return conn.exec_driver_sql(
            "UPDATE names SET pinned = ? WHERE name = ?", (int(pinned), name)
        ).rowcount
    return conn.exec_driver_sql(
        "UPDATE names SET pinned = ? WHERE digest = ?", (int(pinned), digest)
    ).rowcount


def stored_totals(conn: Connection) -> tuple[int, int]:
    """Bytes and blobs stored, kept exact by triggers (schema.sql)."""
    values: dict[str, int] = dict(conn.exec_driver_sql(
        "SELECT name, value FROM counters WHERE name IN ('stored_bytes', 'stored_blobs')"
    ).all())
    return int(values.get("stored_bytes", 0)), int(values.get("stored_blobs", 0))


def evict(conn: Connection, digests: list[str]) -> None:
    """Delete the rows of evicted blobs, and the names that cannot bring them back.

    A name with a source stays, so that the fixture can be fetched again; one without goes.
    """
    if not digests:
        return
    conn.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS evicting (digest TEXT PRIMARY KEY)")
    conn.exec_driver_sql("DELETE FROM temp.evicting")
    conn.exec_driver_sql(
        "INSERT INTO temp.evicting (digest) VALUES (?)", [(digest,) for digest in digests]
    )
    conn.exec_driver_sql(
        "DELETE FROM names WHERE url IS NULL AND digest IN (SELECT digest FROM temp.evicting)"
    )
    conn.exec_driver_sql("DELETE FROM blobs WHERE digest IN (SELECT digest FROM temp.evicting)")
    conn.exec_driver_sql("DELETE FROM temp.evicting")


def without_rows(conn: Connection, digests: list[str]) -> list[str]:
    """Those of ``digests`` (a few thousand at most) that have no blob row: the only files
    that may be unlinked."""
    if not digests:
        return []
    marks = ",".join("?" * len(digests))
    present = set(conn.exec_driver_sql(
        f"SELECT digest FROM blobs WHERE digest IN ({marks})", tuple(digests)
    ).scalars())
    return [digest for digest in digests if digest not in present]


# -- queries for metrics (issue 3) ---------------------------------------------------------------


def counter_values(conn: Connection) -> dict[str, int]:
    """Every row of the counters table: name -> value."""
    return {
        str(name): int(value)
        for name, value in conn.exec_driver_sql("SELECT name, value FROM counters")
    }


def usage(conn: Connection, now: float) -> Any:
    """Stored bytes and blobs, names, and leases not expired at ``now``, in one row."""
    return conn.exec_driver_sql(
        "SELECT (SELECT coalesce(sum(size), 0) FROM blobs) AS bytes,"
        " (SELECT count(*) FROM blobs) AS blobs,"
        " (SELECT count(*) FROM names) AS names,"
        " (SELECT count(*) FROM leases WHERE expires > ?) AS live_leases",
        (now,),
    ).one()


def record_cleanup(conn: Connection, now: float) -> None:
    """Note that a cleanup ran at ``now``."""
    conn.exec_driver_sql(
        "INSERT INTO counters (name, value) VALUES ('last_cleanup_at', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (int(now),),
    )


def last_cleanup(conn: Connection) -> float:
    """When cleanup last ran (Unix seconds), 0 if never."""
    value = conn.exec_driver_sql(
        "SELECT value FROM counters WHERE name = 'last_cleanup_at'"
    ).scalar()
    return float(value or 0)


# -- queries for downloads (issue 4) ---------------------------------------------------------------


def find_alias(conn: Connection, algorithm: str, value: str) -> str | None:
    """The BLAKE3 digest of the content whose ``algorithm`` checksum is ``value``, if seen."""
    found = conn.exec_driver_sql(
        "SELECT digest FROM aliases WHERE algorithm = ? AND value = ?", (algorithm, value)
    ).scalar()
    return str(found) if found is not None else None


def record_alias(conn: Connection, algorithm: str, value: str, digest: str) -> None:
    """Remember that the content ``digest`` has the ``algorithm`` checksum ``value``."""
    conn.exec_driver_sql(
        "INSERT INTO aliases (algorithm, value, digest) VALUES (?, ?, ?)"
        " ON CONFLICT (algorithm, value) DO UPDATE SET digest = excluded.digest",
        (algorithm, value, digest),
    )


def find_source(conn: Connection, url: str) -> str | None:
    """The digest last fetched from ``url``, if any."""
    found = conn.exec_driver_sql("SELECT digest FROM sources WHERE url = ?", (url,)).scalar()
    return str(found) if found is not None else None


def record_source(conn: Connection, url: str, digest: str, now: float) -> None:
    """Remember that ``url`` gave the content ``digest``."""
    conn.exec_driver_sql(
        "INSERT INTO sources (url, digest, fetched) VALUES (?, ?, ?)"
        " ON CONFLICT (url) DO UPDATE SET digest = excluded.digest, fetched = excluded.fetched",
        (url, digest, now),
    )


# -- queries for verification (issue 6) ------------------------------------------------------------


class VerifyRow(NamedTuple):
    digest: str
    size: int
    verified: float | None  #: when its content was last hashed and right; None: never
    signature: str | None  #: its file's stat signature then (cas/blobs.py ``signature``)


def verify_rows(conn: Connection) -> dict[str, VerifyRow]:
    """Every blob row with its last verification."""
    return {
        row[0]: VerifyRow._make(row)
        for row in conn.exec_driver_sql("SELECT digest, size, verified, signature FROM blobs")
    }


def mark_verified(conn: Connection, checked: list[tuple[str, int, str]], now: float) -> None:
    """Record that each (digest, size, signature) was hashed at ``now`` and found right."""
    if not checked:
        return
    conn.exec_driver_sql(
        "UPDATE blobs SET verified = ?, signature = ? WHERE digest = ? AND size = ?",
        [(now, signature, digest, size) for digest, size, signature in checked],
    )


def adopt_blob(conn: Connection, digest: str, size: int, since: float, signature: str,
               now: float) -> bool:
    """Give a right file without a row its row, as accessed at ``since`` (its file's mtime, so
    cleanup takes it in its turn); whether a row was added."""
    return conn.exec_driver_sql(
        "INSERT INTO blobs (digest, size, created, last_access, verified, signature)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
        (digest, size, since, since, now, signature),
    ).rowcount > 0


def record_damaged(conn: Connection, digest: str, problem: str, quarantined: str | None,
                   now: float) -> None:
    """Drop a missing or damaged blob's row and remember the digest (names stay)."""
    conn.exec_driver_sql("DELETE FROM blobs WHERE digest = ?", (digest,))
    conn.exec_driver_sql(
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


def damaged(conn: Connection) -> list[DamagedRow]:
    """Damaged digests not stored again, with their names and one recorded source.

    Entries whose blob is back (put or fetched again) are cleared first: call it inside a
    write transaction.
    """
    conn.exec_driver_sql(
        "DELETE FROM damaged WHERE digest IN (SELECT digest FROM blobs)"
    )
    return [DamagedRow._make(row) for row in conn.exec_driver_sql(
        "SELECT d.digest, d.found, d.problem, d.quarantined,"
        " (SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = d.digest),"
        " s.url, s.name, s.sha256, s.expected_size"
        " FROM damaged d LEFT JOIN names s ON s.name = (SELECT min(name) FROM names m"
        "  WHERE m.digest = d.digest AND m.url IS NOT NULL)"
        " ORDER BY d.digest"
    )]


def forget_damaged(conn: Connection, digests: list[str]) -> None:
    """Forget damaged digests that nothing refers to any more (reported once, when found)."""
    if not digests:
        return
    conn.exec_driver_sql(
        "DELETE FROM damaged WHERE digest = ? AND NOT EXISTS"
        " (SELECT 1 FROM names n WHERE n.digest = damaged.digest)",
        [(digest,) for digest in digests],
    )


def dangling_names(conn: Connection) -> list[tuple[str, str]]:
    """(name, digest) of names whose blob is not stored, that have no source to fetch it from,
    and that verify did not explain as damaged: no cas operation leaves one (guarantee 5)."""
    return [(str(name), str(digest)) for name, digest in conn.exec_driver_sql(
        "SELECT name, digest FROM names n WHERE url IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = n.digest)"
        " AND NOT EXISTS (SELECT 1 FROM damaged d WHERE d.digest = n.digest) ORDER BY name"
    )]
