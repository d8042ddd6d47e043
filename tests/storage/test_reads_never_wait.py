"""Reads never wait for the write lock (guarantee 6).

Another process holds the catalog's write lock (a plain sqlite3 connection inside BEGIN
IMMEDIATE). `cas path` and `cas cat` must still finish: what they would record on exit (last
access, hit counters) is written when the lock is free and dropped when it is not. The 20 s
subprocess timeout is a failure bound (the old code waited up to the 300 s write deadline), not
a timing assert.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import cas
from cas.storage.counters import Counter
from cas.storage.layout import Layout
from cas.storage.pending import ACCESS_GRANULARITY

from tests.clock import Clock

BOUND = 20.0  # seconds: a read that takes this long is waiting for the lock


@contextmanager
def write_lock_held(root: Path) -> Iterator[None]:
    """Hold the catalog's write lock from a connection of this process, as another writer."""
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None, timeout=5)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def _old_store(root: Path) -> str:
    """A store with one named blob last accessed long ago, so a read notes a touch."""
    long_ago = Clock(time.time() - 10 * ACCESS_GRANULARITY)
    with cas.Store.open(root, clock=long_ago) as store:
        return store.put(b"read me while someone writes", name="fixture")


def _cas(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cas", "--root", str(root), *args],
                          capture_output=True, timeout=BOUND)


@pytest.mark.parametrize("command", ["path", "cat"])
def test_cli_read_finishes_while_another_process_holds_the_write_lock(
    root: Path, command: str
) -> None:
    digest = _old_store(root)
    with write_lock_held(root):
        result = _cas(root, command, "fixture")  # raises TimeoutExpired when it waits
    assert result.returncode == 0, result.stderr
    if command == "cat":
        assert result.stdout == b"read me while someone writes"
    else:
        assert Path(result.stdout.decode().strip()).parent.name == digest  # the name's view


def _within_bound(work: Callable[[], object]) -> None:
    """Run ``work`` in a thread and fail if it is still waiting after ``BOUND`` seconds."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), "a read waited for the write lock"


def _last_access(root: Path, digest: str) -> float:
    db = sqlite3.connect(Layout(root).catalog)
    try:
        return float(db.execute("SELECT last_access FROM blobs WHERE digest = ?",
                                (digest,)).fetchone()[0])
    finally:
        db.close()


def test_due_touches_under_a_held_lock_wait_for_a_later_write(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read is due to write its touches (granularity 0): with the lock held elsewhere the
    reads return at once and keep them, and the process's next write records them."""
    monkeypatch.setattr(cas.storage.catalog, "ACCESS_GRANULARITY", 0.0)
    digest = _old_store(root)
    stale = _last_access(root, digest)
    with cas.Store.open(root) as store:
        with write_lock_held(root):
            _within_bound(lambda: [store.read_bytes("fixture") for _ in range(3)])
        assert _last_access(root, digest) == stale  # nothing was written while locked
        store.put(b"a later write", name="later")
        assert _last_access(root, digest) > stale
        assert store.stats().counters[Counter.HITS] == 3


def test_a_close_that_finds_the_lock_held_drops_what_it_would_record(root: Path) -> None:
    digest = _old_store(root)
    stale = _last_access(root, digest)
    store = cas.Store.open(root)
    assert store.read_bytes("fixture") == b"read me while someone writes"
    with write_lock_held(root):
        _within_bound(store.close)
    assert _last_access(root, digest) == stale
    with cas.Store.open(root) as store:
        assert store.stats().counters[Counter.HITS] == 0
        assert store.read_bytes("fixture") == b"read me while someone writes"
