"""gc unlinks in short transactions, however many files and however slow each removal is.

Each unlink transaction stops after ``UNLINK_CHUNK`` files or after holding the write lock
``UNLINK_HOLD`` seconds (here 0: one slice per transaction, the worst case for the bookkeeping),
and the eviction counters are written with the rows' deletion.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import cas
import cas.ops.cleanup
from cas.storage.counters import Counter
from cas.storage.layout import Layout

from tests.conftest import blob_files


@hsettings(max_examples=15)
@given(count=st.integers(min_value=0, max_value=40), pinned=st.integers(min_value=0, max_value=5),
       slice_=st.integers(min_value=1, max_value=7), chunk=st.integers(min_value=1, max_value=9))
def test_every_victim_file_goes_and_every_kept_one_stays(
    tmp_path_factory: pytest.TempPathFactory, count: int, pinned: int, slice_: int, chunk: int
) -> None:
    root = tmp_path_factory.mktemp("chunks") / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cas.ops.cleanup, "UNLINK_SLICE", slice_)
        patch.setattr(cas.ops.cleanup, "UNLINK_CHUNK", chunk)
        patch.setattr(cas.ops.cleanup, "UNLINK_HOLD", 0.0)
        with cas.Store.open(root, grace_period=0) as store:
            digests = store.put_many([f"blob {i}".encode() for i in range(count)])
            kept = set()
            for index in range(min(pinned, count)):
                store.tag(f"pinned/{index}", digests[index])
                store.pin(f"pinned/{index}")
                kept.add(digests[index])
            plan = store.gc(max_size=0)
            assert plan.removed == len(set(digests) - kept)
            assert {path.name for path in blob_files(root)} == kept
            stats = store.stats()
            assert stats.counters[Counter.EVICTIONS] == plan.removed
            assert stats.counters[Counter.EVICTED_BYTES] == plan.freed


def test_eviction_counts_are_committed_with_the_rows(root: Path) -> None:
    """Another process sees the eviction counters as soon as gc returns, before any close."""
    with cas.Store.open(root, grace_period=0) as store:
        store.put_many([b"one", b"two", b"three"])
        plan = store.gc(max_size=0)
        db = sqlite3.connect(Layout(root).catalog)
        try:
            values = dict(db.execute("SELECT name, value FROM counters"))
        finally:
            db.close()
        assert values["evictions"] == plan.removed == 3
        assert values["evicted_bytes"] == plan.freed == 11
