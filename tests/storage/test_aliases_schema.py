"""The aliases table once rebuilt by a schema version: SHA-256, SHA-1 and MD5 rows, by length.

A catalog of version 5 keeps its SHA-256 aliases through the migration (the table is rebuilt,
since SQLite cannot alter a CHECK), and the new table refuses a value whose length does not
fit its algorithm, or an algorithm it does not know.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import cas
from cas.storage.layout import Layout
from cas.storage.schema import SCHEMA_VERSIONS


def _catalog_at(root: Path, version: int) -> None:
    root.mkdir(parents=True)
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    for _, statements in SCHEMA_VERSIONS[:version]:
        for statement in statements:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def test_version_5_aliases_survive_the_rebuild(root: Path) -> None:
    """SHA-256 aliases written at version 5 are still there, and served, after migrating."""
    _catalog_at(root, 5)
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    db.execute("INSERT INTO aliases VALUES ('sha256', ?, ?)", ("1" * 64, "a" * 64))
    with pytest.raises(sqlite3.IntegrityError):  # version 5 knows no md5
        db.execute("INSERT INTO aliases VALUES ('md5', ?, ?)", ("1" * 32, "a" * 64))
    db.close()
    with cas.Store.open(root):
        pass
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    assert db.execute("SELECT * FROM aliases").fetchall() == [("sha256", "1" * 64, "a" * 64)]
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type='table'")]
    assert "aliases" in tables and "aliases_rebuilt" not in tables
    db.close()


@pytest.mark.parametrize(
    ("algorithm", "length", "ok"),
    [("md5", 32, True), ("sha1", 40, True), ("sha256", 64, True), ("md5", 40, False),
     ("sha1", 32, False), ("sha256", 40, False), ("sha512", 128, False), ("blake3", 64, False)],
)
def test_the_table_checks_each_algorithm_length(root: Path, algorithm: str, length: int,
                                                ok: bool) -> None:
    """Only md5 (32 hex), sha1 (40) and sha256 (64) rows are accepted."""
    with cas.Store.open(root):
        pass
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    insert = "INSERT INTO aliases VALUES (?, ?, ?)"
    if ok:
        db.execute(insert, (algorithm, "1" * length, "a" * 64))
    else:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(insert, (algorithm, "1" * length, "a" * 64))
    db.close()
