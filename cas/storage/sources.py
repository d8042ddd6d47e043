"""The SQL of refresh: what identified a URL's last content, and the names that follow it.

``queries.record_source`` records a URL's content with its validators; this module reads them
back for a conditional request, counts a revalidation (a 304), and moves the floating names of
a URL to its new content (schema.sql, version 6).
"""

from __future__ import annotations

from typing import NamedTuple

from cas.storage.catalog import Connection
from cas.urls import redact


class SourceRow(NamedTuple):
    """What a URL gave last: its content, that content's validators, and the times it was
    downloaded or revalidated (``checks``)."""

    digest: str
    etag: str | None
    last_modified: str | None
    checks: int


def find_source_row(conn: Connection, url: str) -> SourceRow | None:
    """The ``sources`` row of ``url``, if any."""
    row = conn.execute(
        "SELECT digest, etag, last_modified, checks FROM sources WHERE url = ?", (url,)
    ).fetchone()
    return SourceRow(*row) if row is not None else None


def count_check(conn: Connection, url: str) -> None:
    """Count one more check of ``url``: its server said its content is unchanged (304)."""
    conn.execute("UPDATE sources SET checks = checks + 1 WHERE url = ?", (redact(url),))


def follow(conn: Connection, url: str, digest: str, size: int, now: float) -> None:
    """Point the floating names whose source is ``url`` at ``digest``, its new content."""
    conn.execute(
        "UPDATE names SET digest = ?, expected_size = ?, updated = ?"
        " WHERE url = ? AND floating = 1 AND digest != ?",
        (digest, size, now, redact(url), digest),
    )
