"""A last access in the future (the clock went back) ages like any other.

The future time is written with plain sqlite3, as a catalog written before the clock was set
back holds it. Every writer of last access clamps it to its current time: a touch, a put of the
same content, and cleanup (which also lists such a blob among what it kept, as recently used).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import cas
from cas.storage.layout import Layout

YEAR = 365 * 86400.0


def _set_last_access(root: Path, digest: str, when: float) -> None:
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    try:
        db.execute("UPDATE blobs SET last_access = ? WHERE digest = ?", (when, digest))
    finally:
        db.close()


def _last_access(root: Path, digest: str) -> float | None:
    db = sqlite3.connect(Layout(root).catalog)
    try:
        row = db.execute("SELECT last_access FROM blobs WHERE digest = ?", (digest,)).fetchone()
    finally:
        db.close()
    return None if row is None else float(row[0])


@hsettings(max_examples=10)
@given(ahead=st.floats(min_value=1.0, max_value=100 * YEAR))
def test_cleanup_clamps_a_future_last_access_and_then_evicts_it(
    tmp_path_factory: pytest.TempPathFactory, ahead: float
) -> None:
    root = tmp_path_factory.mktemp("future") / "store"
    with cas.Store.open(root, grace_period=0) as store:
        digest = store.put(b"written before the clock went back")
        _set_last_access(root, digest, time.time() + ahead)
        first = store.gc(max_size=0)
        assert first.removed == 0  # clamped to now: within the grace period this instant
        assert [item.digest for item in first.kept] == [digest]
        assert first.kept[0].reason == "recent"
        clamped = _last_access(root, digest)
        assert clamped is not None and clamped <= time.time()
        time.sleep(0.01)
        second = store.gc(max_size=0)
        assert [item.digest for item in second.victims] == [digest]
    assert _last_access(root, digest) is None


def test_a_dry_run_lists_a_future_blob_as_kept(root: Path) -> None:
    with cas.Store.open(root, grace_period=0) as store:
        digest = store.put(b"from the future")
        _set_last_access(root, digest, time.time() + YEAR)
        plan = store.gc(max_size=0, dry_run=True)
        assert [item.digest for item in plan.kept] == [digest]
        assert plan.kept[0].last_access <= time.time()


def test_a_read_clamps_a_future_last_access(root: Path) -> None:
    with cas.Store.open(root) as store:
        digest = store.put(b"read after the clock went back", name="n")
    _set_last_access(root, digest, time.time() + YEAR)
    with cas.Store.open(root) as store:
        store.path("n")
        store.flush()
    when = _last_access(root, digest)
    assert when is not None and when <= time.time()


def test_a_put_clamps_a_future_last_access(root: Path) -> None:
    with cas.Store.open(root) as store:
        digest = store.put(b"put again after the clock went back")
        _set_last_access(root, digest, time.time() + YEAR)
        store.put(b"put again after the clock went back")
    when = _last_access(root, digest)
    assert when is not None and when <= time.time()
