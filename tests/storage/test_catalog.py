"""The catalog file: schema versions, migrations, refusals, and transaction control."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import cas
from cas.storage.layout import Layout
from cas.storage.schema import LATEST_VERSION, SCHEMA_VERSIONS

from tests.clock import Clock


def _make_catalog_at(root: Path, version: int) -> None:
    root.mkdir(parents=True)
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    for _, statements in SCHEMA_VERSIONS[:version]:
        for statement in statements:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def test_schema_comes_from_schema_sql() -> None:
    """The versions the code applies are exactly the sections of schema.sql at the root."""
    text = (Path(__file__).resolve().parents[2] / "schema.sql").read_text()
    headers = [line for line in text.splitlines() if line.startswith("-- version:")]
    assert len(headers) == LATEST_VERSION == len(SCHEMA_VERSIONS)
    for _, statements in SCHEMA_VERSIONS:
        for statement in statements:
            assert statement in text


def test_new_catalog_is_wal_at_latest_version(store: cas.Store) -> None:
    """A new catalog is in WAL mode and records the latest schema version."""
    db = sqlite3.connect(Layout(store.root).catalog)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    db.close()


@pytest.mark.parametrize("version", range(1, LATEST_VERSION))
def test_older_catalog_is_migrated_forward(root: Path, version: int) -> None:
    """A catalog of an older version keeps its rows and is brought to the latest version."""
    _make_catalog_at(root, version)
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    db.execute(
        "INSERT INTO blobs (digest, size, created, last_access) VALUES (?, 0, 0, 0)", ("a" * 64,)
    )
    db.close()
    with cas.Store.open(root) as store:
        assert [entry.digest for entry in store.entries()] == ["a" * 64]
    db = sqlite3.connect(Layout(root).catalog)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    db.close()


def test_newer_catalog_is_refused(root: Path) -> None:
    """A catalog from a newer cas is refused with an error naming both versions, untouched."""
    _make_catalog_at(root, LATEST_VERSION)
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    db.close()
    before = Layout(root).catalog.read_bytes()
    with pytest.raises(cas.CatalogError, match=f"version {LATEST_VERSION + 1}.*upgrade"):
        cas.Store.open(root)
    assert Layout(root).catalog.read_bytes() == before


def test_not_a_database_is_refused(root: Path) -> None:
    """A catalog.db that is not SQLite is reported, and left as it was."""
    root.mkdir()
    Layout(root).catalog.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(cas.CatalogError, match="not a usable SQLite catalog"):
        cas.Store.open(root)
    assert Layout(root).catalog.read_bytes() == b"this is not a database at all" * 100


def test_commit_is_visible_from_a_fresh_connection(store: cas.Store) -> None:
    """A put is committed: an independent connection sees its row at once."""
    digest = store.put(b"committed", name="c")
    db = sqlite3.connect(Layout(store.root).catalog)
    assert db.execute("SELECT digest FROM names WHERE name = 'c'").fetchone() == (digest,)
    db.close()


def test_last_access_is_coarse(store: cas.Store) -> None:
    """Reading a blob accessed within the granularity writes nothing to the catalog."""
    store.put(b"fresh", name="f")
    db = sqlite3.connect(Layout(store.root).catalog)
    before = db.execute("SELECT last_access FROM blobs").fetchone()
    for _ in range(10):
        store.path("f")
    store.close()
    assert db.execute("SELECT last_access FROM blobs").fetchone() == before
    db.close()


def test_stale_last_access_is_written_at_close(root: Path) -> None:
    """A read of a blob not accessed for longer than the granularity is recorded by close."""
    with cas.Store.open(root, clock=Clock(1000)) as store:
        store.put(b"stale", name="s")  # at 1000 s after the epoch
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    with cas.Store.open(root) as store:
        store.path("s")
        assert db.execute("SELECT last_access FROM blobs").fetchone() == (1000,)
    assert db.execute("SELECT last_access FROM blobs").fetchone()[0] > 1000
    db.close()


# -- remembered look-ups: never older than a fresh SELECT -----------------------------------------

_RETAG = """
import sys, cas
with cas.Store.open(sys.argv[1]) as store:
    store.tag("moving", store.put(sys.argv[2].encode()))
"""


def test_look_up_sees_another_process_retag_at_once(store: cas.Store) -> None:
    """A name moved by another process resolves to its new blob on the very next look-up,
    however often it was looked up before."""
    first = store.put(b"first", name="moving")
    for _ in range(3):
        assert store.path("moving").parent.name == first
    for content in ("second", "third"):
        subprocess.run([sys.executable, "-c", _RETAG, str(store.root), content], check=True,
                       timeout=60)
        assert store.path("moving").read_bytes() == content.encode()


def test_look_up_sees_a_commit_made_outside_cas(store: cas.Store) -> None:
    """Any commit to catalog.db, by any connection, is seen by the next look-up."""
    store.put(b"a", name="a")
    digest_b = store.put(b"b", name="b")
    assert store.path("a").read_bytes() == b"a"
    db = sqlite3.connect(Layout(store.root).catalog, isolation_level=None)
    db.execute("UPDATE names SET digest = ? WHERE name = 'a'", (digest_b,))
    db.close()
    assert store.path("a").read_bytes() == b"b"


def test_look_up_sees_this_store_own_changes(store: cas.Store) -> None:
    """Tag, untag and remove through the same store are seen by its next look-up."""
    one, two = store.put(b"one", name="n"), store.put(b"two")
    assert store.path("n").parent.name == one
    store.tag("n", two)
    assert store.path("n").parent.name == two
    store.untag("n")
    with pytest.raises(cas.NotFound):
        store.path("n")
    assert store.path(one).name == one
    store.remove(one)
    with pytest.raises(cas.NotFound):
        store.path(one)


def test_look_up_of_a_name_added_by_another_store(root: Path) -> None:
    """A miss is remembered only until the next commit: a name added elsewhere is found."""
    with cas.Store.open(root) as reader, cas.Store.open(root) as writer:
        with pytest.raises(cas.NotFound):
            reader.path("late")
        writer.put(b"late", name="late")
        assert reader.path("late").read_bytes() == b"late"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_looks_up_on_its_own_connection(store: cas.Store) -> None:
    """A child forked after look-ups reads the catalog afresh on a connection of its own, and
    the parent sees the child's change at its next look-up."""
    old, new = store.put(b"old", name="moving"), store.put(b"new")
    assert store.path("moving").parent.name == old
    # SQLite forbids carrying a connection across fork(): the child must open its own.
    parents = store._catalog._lookups.connection
    assert parents is not None
    pid = os.fork()
    if pid == 0:  # the child: a look-up, a retag, a look-up; then an exit without cleanup
        status = 1
        try:
            if store.path("moving").parent.name == old:
                store.tag("moving", new)
                status = 0 if store.path("moving").parent.name == new else 2
            if store._catalog._lookups.connection is parents:
                status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.path("moving").parent.name == new
