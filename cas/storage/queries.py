"""Every SQL statement about blobs, names, leases, counters and downloads.

Each function takes the caller's transaction (the DBAPI connection that ``Catalog.write`` or
``Catalog.read`` hands out) and runs its statements through it; ``find_blob`` and
``find_name`` also take the Catalog itself, for a lone read outside any transaction
(``Catalog.lookup``). The statements about verification are in ``cas.storage.verification``.
The tables are defined in schema.sql.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Self, TypeVar

from cas.refs import is_digest
from cas.storage.catalog import Catalog, Connection
from cas.urls import redact, redact_optional

# -- blobs and names ------------------------------------------------------------------------------


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
    unpack: str | None = None  #: the kind its url's archive is unpacked as, or None


def _one(source: Connection | Catalog, sql: str, params: tuple[Any, ...]) -> Any:
    """One row of ``sql``: inside the caller's transaction, or a lone read on the catalog."""
    if isinstance(source, Catalog):
        return source.lookup(sql, params)
    return source.execute(sql, params).fetchone()


def find_blob(source: Connection | Catalog, digest: str) -> BlobRow | None:
    """The blob's row, or None."""
    row = _one(source, "SELECT digest, size, last_access FROM blobs WHERE digest = ?", (digest,))
    return None if row is None else BlobRow._make(row)


def find_name(source: Connection | Catalog, name: str) -> NameRow | None:
    """The name's row joined with its blob's size and last access, or None."""
    row = _one(
        source,
        "SELECT n.name, n.digest, n.pinned, n.url, n.sha256, n.expected_size, b.size,"
        " b.last_access, n.unpack FROM names n LEFT JOIN blobs b ON b.digest = n.digest"
        " WHERE n.name = ?",
        (name,),
    )
    return None if row is None else without_credentials(NameRow._make(row))


class RowWithUrl(Protocol):
    """A row with a ``url`` column (names, entries, damaged blobs)."""

    @property
    def url(self) -> str | None: ...

    def _replace(self, *, url: str | None = ...) -> Self: ...


Row = TypeVar("Row", bound=RowWithUrl)


def without_credentials(row: Row) -> Row:
    """``row`` with its URL redacted: a catalog written before cas stripped credentials may
    still hold some, and they must not be shown, logged or pushed from there either."""
    if row.url is None or "@" not in row.url:
        return row
    return row._replace(url=redact(row.url))


# The hot path's rows carry the tree's file count (NULL for a file), so a view is chosen
# without a second query.
_BLOB_BY_NAME = (
    "SELECT b.digest, b.size, b.last_access, t.files FROM names n"
    " JOIN blobs b ON b.digest = n.digest LEFT JOIN trees t ON t.digest = b.digest"
    " WHERE n.name = ?"
)
_BLOB_BY_DIGEST = (
    "SELECT b.digest, b.size, b.last_access, t.files FROM blobs b"
    " LEFT JOIN trees t ON t.digest = b.digest WHERE b.digest = ?"
)


def stored_blob(catalog: Catalog, ref: str) -> tuple[str, int, float, int | None] | None:
    """(digest, size, last_access, files of a tree or None) of the stored blob a name or a
    digest refers to, or None: the hot path of look-ups, one lone SELECT."""
    if len(ref) == 64 and is_digest(ref):
        return catalog.lookup(_BLOB_BY_DIGEST, (ref.lower(),))  # type: ignore[no-any-return]
    return catalog.lookup(_BLOB_BY_NAME, (ref,))  # type: ignore[no-any-return]


#: The candidates an ambiguous digest prefix's error names; past these, only their number.
PREFIX_CANDIDATES = 5

# Digests are lowercase hex and "g" sorts after every hex digit, so the digests that begin with
# a prefix are exactly those in [prefix, prefix + "g"): a range of the primary key, no scan.
_BLOBS_BY_PREFIX = (
    "SELECT (SELECT count(*) FROM blobs WHERE digest >= ?1 AND digest < ?2),"
    " (SELECT group_concat(digest, ' ') FROM (SELECT digest FROM blobs"
    " WHERE digest >= ?1 AND digest < ?2 ORDER BY digest LIMIT ?3))"
)


class PrefixMatches(NamedTuple):
    matched: int  #: stored blobs whose digest begins with the prefix
    digests: list[str]  #: the first of them in digest order, at most ``PREFIX_CANDIDATES``


def blobs_with_prefix(source: Connection | Catalog, prefix: str) -> PrefixMatches:
    """The stored blobs whose digest begins with ``prefix`` (lowercase hex digits): one row,
    so that it also runs alone on the catalog (``Catalog.lookup``)."""
    upper = prefix + "g"
    matched, digests = _one(source, _BLOBS_BY_PREFIX, (prefix, upper, PREFIX_CANDIDATES))
    return PrefixMatches(matched, sorted(digests.split(" ")) if digests else [])


def record_blobs(conn: Connection, blobs: list[tuple[str, int]], now: float) -> None:
    """Insert the rows of (digest, size) blobs, or mark existing ones as just accessed (at
    ``now``, also when the stored time is later: written before the clock went back)."""
    conn.executemany(
        "INSERT INTO blobs (digest, size, created, last_access) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (digest) DO UPDATE SET last_access = excluded.last_access",
        [(digest, size, now, now) for digest, size in blobs],
    )


_SET_NAME = (
    "INSERT INTO names (name, digest, url, sha256, expected_size, created, updated, floating,"
    " unpack) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, url = excluded.url,"
    " sha256 = excluded.sha256, expected_size = excluded.expected_size,"
    " updated = excluded.updated, floating = excluded.floating, unpack = excluded.unpack"
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
    floating: bool = False,
    unpack: str | None = None,
) -> None:
    """Point ``name`` at ``digest`` with the given source; a pin is kept. ``floating``: fetched
    from ``url`` without an expected digest, so it follows the URL's content (``follow``).
    ``unpack``: the kind the archive at ``url`` is unpacked as. The catalog never holds the
    credentials a URL may carry (cas/urls.py)."""
    conn.execute(_SET_NAME, (name, digest, redact_optional(url), sha256, expected_size, now, now,
                             int(floating and url is not None), unpack))


def set_names(conn: Connection, names: list[tuple[str, str]], now: float) -> None:
    """Point each (name, digest) name at its digest, without a source; pins are kept."""
    conn.executemany(
        _SET_NAME, [(name, digest, None, None, None, now, now, 0, None) for name, digest in names]
    )


def delete_name(conn: Connection, name: str) -> bool:
    """Delete a name; whether it existed."""
    return conn.execute("DELETE FROM names WHERE name = ?", (name,)).rowcount > 0


def names_of(conn: Connection, digest: str) -> list[str]:
    """Every name pointing at ``digest``."""
    return [name for (name,) in conn.execute(
        "SELECT name FROM names WHERE digest = ? ORDER BY name", (digest,)
    )]


def delete_blob(conn: Connection, digest: str) -> bool:
    """Delete a blob's row; whether it existed. Its file goes later (``unlinkable``)."""
    return conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,)).rowcount > 0


class EntryRow(NamedTuple):
    name: str | None
    digest: str
    size: int | None
    last_access: float | None
    pinned: int
    url: str | None
    files: int | None = None  #: a tree's file count; None for a file
    tree_size: int | None = None  #: a tree's total size


def entries(conn: Connection) -> list[EntryRow]:
    """Every name with its blob, then every blob without a name, for listings; a tree is one
    entry (its members, unless named, are not listed)."""
    return list(map(lambda row: without_credentials(EntryRow._make(row)),
        conn.execute(
            "SELECT n.name, n.digest, b.size, b.last_access, n.pinned, n.url, t.files, t.size"
            " FROM names n LEFT JOIN blobs b ON b.digest = n.digest"
            " LEFT JOIN trees t ON t.digest = b.digest"
            " UNION ALL"
            " SELECT NULL, b.digest, b.size, b.last_access, 0, NULL, t.files, t.size"
            " FROM blobs b LEFT JOIN trees t ON t.digest = b.digest"
            " WHERE NOT EXISTS (SELECT 1 FROM names n WHERE n.digest = b.digest)"
            " AND NOT EXISTS (SELECT 1 FROM tree_entries e WHERE e.digest = b.digest)"
            " ORDER BY 1 NULLS LAST, 2"
        )
    ))


# -- leases and pins -------------------------------------------------------------------------------


def insert_lease(conn: Connection, digest: str, host: str, pid: int, started: float,
                 now: float, expires: float) -> int:
    """Record a lease on ``digest``; return its id."""
    cursor = conn.execute(
        "INSERT INTO leases (digest, host, pid, started, created, expires)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (digest, host, pid, started, now, expires),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def renew_leases(conn: Connection, ids: list[int], expires: float) -> set[int]:
    """Extend the given leases; return the ids that still existed."""
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    conn.execute(f"UPDATE leases SET expires = ? WHERE id IN ({marks})", (expires, *ids))
    return {lease_id for (lease_id,) in conn.execute(
        f"SELECT id FROM leases WHERE id IN ({marks})", tuple(ids)
    )}


def delete_leases(conn: Connection, ids: list[int]) -> int:
    """Delete leases by id; return how many went."""
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return conn.execute(f"DELETE FROM leases WHERE id IN ({marks})", tuple(ids)).rowcount


def delete_leases_of(conn: Connection, digest: str) -> int:
    """Delete every lease on ``digest``; return how many went."""
    return conn.execute("DELETE FROM leases WHERE digest = ?", (digest,)).rowcount


def delete_expired_leases(conn: Connection, now: float) -> int:
    """Delete every lease past its expiry; return how many went."""
    return conn.execute("DELETE FROM leases WHERE expires <= ?", (now,)).rowcount


class LeaseRow(NamedTuple):
    id: int
    pid: int
    started: float


def leases_of_host(conn: Connection, place: str, now: float) -> list[LeaseRow]:
    """Unexpired leases held by processes of ``place`` (the ``host`` column holds a holder's
    place, cas/storage/processes.py)."""
    return list(map(LeaseRow._make, conn.execute(
        "SELECT id, pid, started FROM leases WHERE host = ? AND expires > ?", (place, now)
    )))


#: The one definition of a live lease, as SQL over ``leases``: not expired at ``:now``, and not
#: among ``:dead`` (a JSON array of the ids of leases whose holder is provably gone, from
#: ``leases.dead_leases``). Cleanup, ``rm``, ``stats`` and ``ls`` all count leases with it.
LIVE_LEASE = "expires > :now AND id NOT IN (SELECT value FROM json_each(:dead))"


def _live(now: float, dead: list[int]) -> dict[str, object]:
    import json  # here: a read of one blob never counts leases

    return {"now": now, "dead": json.dumps(dead)}


def live_leases(conn: Connection, digest: str, now: float, dead: list[int]) -> int:
    """How many live leases (``LIVE_LEASE``) hold ``digest``."""
    row = conn.execute(
        f"SELECT count(*) FROM leases WHERE digest = :digest AND {LIVE_LEASE}",
        {"digest": digest, **_live(now, dead)},
    ).fetchone()
    return int(row[0])


def live_lease_counts(conn: Connection, now: float, dead: list[int]) -> dict[str, int]:
    """digest -> how many live leases (``LIVE_LEASE``) hold it, for the leased blobs only."""
    return {str(digest): int(count) for digest, count in conn.execute(
        f"SELECT digest, count(*) FROM leases WHERE {LIVE_LEASE} GROUP BY digest",
        _live(now, dead),
    )}


def damaged_digests(conn: Connection) -> set[str]:
    """Digests that verify found missing or damaged and that are not stored again."""
    return {str(digest) for (digest,) in conn.execute(
        "SELECT digest FROM damaged d WHERE NOT EXISTS"
        " (SELECT 1 FROM blobs b WHERE b.digest = d.digest)"
    )}


def set_pinned(conn: Connection, digest: str, name: str | None, pinned: bool) -> int:
    """Pin or unpin ``name``, or every name of ``digest`` when name is None; return the count."""
    if name is not None:
        return conn.execute(
            "UPDATE names SET pinned = ? WHERE name = ?", (int(pinned), name)
        ).rowcount
    return conn.execute(
        "UPDATE names SET pinned = ? WHERE digest = ?", (int(pinned), digest)
    ).rowcount


def stored_totals(conn: Connection) -> tuple[int, int]:
    """Bytes and blobs stored, kept exact by triggers (schema.sql)."""
    values: dict[str, int] = dict(conn.execute(
        "SELECT name, value FROM counters WHERE name IN ('stored_bytes', 'stored_blobs')"
    ).fetchall())
    return int(values.get("stored_bytes", 0)), int(values.get("stored_blobs", 0))


def evict(conn: Connection, digests: list[str]) -> None:
    """Delete the rows of evicted blobs, and the names that cannot bring them back.

    A name with a source stays, so that the fixture can be fetched again; one without goes.
    """
    if not digests:
        return
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS evicting (digest TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM temp.evicting")
    conn.executemany(
        "INSERT INTO temp.evicting (digest) VALUES (?)", [(digest,) for digest in digests]
    )
    conn.execute(
        "DELETE FROM names WHERE url IS NULL AND digest IN (SELECT digest FROM temp.evicting)"
    )
    conn.execute("DELETE FROM blobs WHERE digest IN (SELECT digest FROM temp.evicting)")
    conn.execute("DELETE FROM temp.evicting")


def without_rows(conn: Connection, digests: list[str]) -> list[str]:
    """Those of ``digests`` (a few thousand at most) that have no blob row: the only files
    that may be unlinked."""
    if not digests:
        return []
    marks = ",".join("?" * len(digests))
    present = {digest for (digest,) in conn.execute(
        f"SELECT digest FROM blobs WHERE digest IN ({marks})", tuple(digests)
    )}
    return [digest for digest in digests if digest not in present]


# -- counters and cleanup times ------------------------------------------------------------------


def counter_values(conn: Connection) -> dict[str, int]:
    """Every row of the counters table: name -> value."""
    return {
        str(name): int(value)
        for name, value in conn.execute("SELECT name, value FROM counters")
    }


class UsageRow(NamedTuple):
    bytes: int
    blobs: int
    names: int
    live_leases: int


def usage(conn: Connection, now: float, dead: list[int]) -> UsageRow:
    """Stored bytes and blobs, names, and live leases (``LIVE_LEASE``), in one row."""
    return UsageRow._make(conn.execute(
        "SELECT (SELECT coalesce(sum(size), 0) FROM blobs) AS bytes,"
        " (SELECT count(*) FROM blobs) AS blobs,"
        " (SELECT count(*) FROM names) AS names,"
        f" (SELECT count(*) FROM leases WHERE {LIVE_LEASE}) AS live_leases",
        _live(now, dead),
    ).fetchone())


def record_cleanup(conn: Connection, now: float) -> None:
    """Note that a cleanup ran at ``now``."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('last_cleanup_at', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (int(now),),
    )


def last_cleanup(conn: Connection) -> float:
    """When cleanup last ran (Unix seconds), 0 if never."""
    row = conn.execute("SELECT value FROM counters WHERE name = 'last_cleanup_at'").fetchone()
    return float(row[0] or 0) if row else 0.0


# -- downloads: hash aliases and sources ---------------------------------------------------------


def find_alias(conn: Connection, algorithm: str, value: str) -> str | None:
    """The BLAKE3 digest of the content whose ``algorithm`` checksum is ``value``, if seen."""
    row = conn.execute(
        "SELECT digest FROM aliases WHERE algorithm = ? AND value = ?", (algorithm, value)
    ).fetchone()
    return str(row[0]) if row is not None else None


def record_alias(conn: Connection, algorithm: str, value: str, digest: str) -> None:
    """Remember that the content ``digest`` has the ``algorithm`` checksum ``value``."""
    conn.execute(
        "INSERT INTO aliases (algorithm, value, digest) VALUES (?, ?, ?)"
        " ON CONFLICT (algorithm, value) DO UPDATE SET digest = excluded.digest",
        (algorithm, value, digest),
    )


def find_source(conn: Connection, url: str) -> str | None:
    """The digest last fetched from ``url``, if any."""
    row = conn.execute("SELECT digest FROM sources WHERE url = ?", (url,)).fetchone()
    return str(row[0]) if row is not None else None


def record_source(conn: Connection, url: str, digest: str, now: float,
                  etag: str | None = None, last_modified: str | None = None) -> None:
    """Remember that ``url`` (without its credentials) gave the content ``digest``, which its
    server identified by ``etag`` and ``last_modified``; count one more check."""
    conn.execute(
        "INSERT INTO sources (url, digest, fetched, etag, last_modified, checks)"
        " VALUES (?, ?, ?, ?, ?, 1)"
        " ON CONFLICT (url) DO UPDATE SET digest = excluded.digest, fetched = excluded.fetched,"
        " etag = excluded.etag, last_modified = excluded.last_modified, checks = checks + 1",
        (redact(url), digest, now, etag, last_modified),
    )
