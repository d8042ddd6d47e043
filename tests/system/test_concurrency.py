"""Many processes on one store: each blob stored once, no "database is locked" for callers."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import traceback
from pathlib import Path

import blake3

import cas
from cas.storage.layout import Layout

from tests.conftest import blob_files

WORKERS = 6
ROUNDS = 40


def _content(index: int) -> bytes:
    return (b"content-%d-" % index) * (1 + index * 37)


def _putter(root: str, worker: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        with cas.Store.open(root) as store:
            for step in range(ROUNDS):
                # Half the contents are shared by every worker, half belong to this one.
                shared = _content(step % 10)
                own = _content(1000 + worker * ROUNDS + step)
                if step % 2:
                    store.put(shared, name=f"shared/{step % 10}")
                    store.put(own, name=f"own/{worker}/{step}")
                else:  # a batch: one transaction and shared syncs for both
                    store.put_many({f"shared/{step % 10}": shared, f"own/{worker}/{step}": own})
                assert store.read_bytes(f"shared/{step % 10}") == shared
        results.put(("ok", worker))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_processes_putting_same_and_different_content(tmp_path: Path) -> None:
    """6 processes put shared and private contents at once, one by one and in batches: one
    file and row per content."""
    root = tmp_path / "store"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_putter, args=(str(root), worker, results))
        for worker in range(WORKERS)
    ]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for process in workers:
        process.join(timeout=60)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert errors == [], errors[0]

    expected = {blake3.blake3(_content(i)).hexdigest() for i in range(10)}
    expected |= {
        blake3.blake3(_content(1000 + w * ROUNDS + s)).hexdigest()
        for w in range(WORKERS)
        for s in range(ROUNDS)
    }
    files = blob_files(root)
    assert sorted(path.name for path in files) == sorted(expected)
    with cas.Store.open(root) as store:
        entries = store.entries()
        assert {entry.digest for entry in entries} == expected
        assert len([entry for entry in entries if entry.name]) == 10 + WORKERS * ROUNDS
        for path in files:
            assert blake3.blake3(path.read_bytes()).hexdigest() == path.name


def _opener(root: str, barrier: multiprocessing.synchronize.Barrier,  # type: ignore[name-defined]
            results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        barrier.wait()
        with cas.Store.open(root) as store:
            store.put(os.urandom(16))
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc())


def test_simultaneous_first_opens(tmp_path: Path) -> None:
    """12 processes opening a new store at the same instant all succeed, in WAL mode."""
    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        root = tmp_path / f"store{attempt}"
        barrier = context.Barrier(12)
        results = context.Queue()
        workers = [context.Process(target=_opener, args=(str(root), barrier, results))
                   for _ in range(12)]
        for process in workers:
            process.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for process in workers:
            process.join(timeout=30)
        assert [o for o in outcomes if o != "ok"] == []
        with sqlite3.connect(Layout(root).catalog) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 12


def _reader(root: str, ref: str, count: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with cas.Store.open(root) as store:
        for _ in range(count):
            store.path(ref)
        # Closing writes the batched counters and access times, which may wait for the lock.
        results.put("done")


def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """While another connection holds the write lock, path() look-ups still complete."""
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        store.put(b"read me", name="r")
    holder = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        reader = context.Process(target=_reader, args=(str(root), "r", 200, results))
        reader.start()
        # The busy timeout is 30 s: a read that queued behind the lock would not finish in 20 s.
        assert results.get(timeout=20) == "done"
        reader.join(timeout=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
