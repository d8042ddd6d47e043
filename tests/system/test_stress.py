"""Stress: many processes doing random put, lease, read, gc and remove on one small store.

The store's limit is far below what is written, so cleanup runs all the time, concurrently with
everything else. Only InUse is an expected error. The run's length is STRESS_SECONDS
(default 30), with STRESS_WORKERS processes (default 6).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
import time
import traceback
from collections import Counter
from pathlib import Path

import blake3
import pytest

import cas
from cas.storage.layout import Layout

SECONDS = float(os.environ.get("STRESS_SECONDS", "30"))
WORKERS = int(os.environ.get("STRESS_WORKERS", "6"))
LIMIT = 200_000  # bytes; each worker alone writes megabytes
GRACE = min(20.0, SECONDS / 2)  # seconds; blobs older than this are evicted as the run goes
SHARED = [os.urandom(random.Random(i).randint(100, 20_000)) for i in range(30)]


def _worker(root: str, seed: int, seconds: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    violations: list[str] = []
    try:
        # The grace period must outlast a wait for the write lock, which reaches seconds with
        # six processes writing flat out: a blob put, then leased, must still be there.
        store = cas.Store.open(root, max_cache_size=LIMIT, grace_period=GRACE,
                               cleanup_interval=1, lease_ttl=60)
        # Counted from here, not from the spawn: on a loaded machine the start of six
        # interpreters can take longer than the grace period, and the run would evict nothing.
        until = time.time() + seconds
        held: list[tuple[cas.ops.leases.Lease, bytes]] = []
        while time.time() < until:
            action = rng.choice(["put", "put", "lease", "read", "read", "release", "gc",
                                 "remove", "remove_leased"])
            if action == "put" or (action in ("read", "release", "remove_leased") and not held):
                shared = rng.random() < 0.5
                data = rng.choice(SHARED) if shared else os.urandom(rng.randint(16, 30_000))
                digest = store.put(data, name=f"w{seed}/{counts['put']}")
                counts["put"] += 1
                if rng.random() < 0.5:  # leased within the grace period: it cannot be gone
                    held.append((store.lease(digest), data))
                    counts["lease"] += 1
            elif action == "lease":
                data = os.urandom(rng.randint(16, 5000))
                held.append((store.lease(store.put(data)), data))
                counts["lease"] += 1
            elif action == "read":
                lease, data = rng.choice(held)
                content = lease.path.read_bytes()
                if content != data or blake3.blake3(content).hexdigest() != lease.digest:
                    violations.append(f"leased blob {lease.digest} has wrong content")
                counts["read"] += 1
            elif action == "release":
                lease, _ = held.pop(rng.randrange(len(held)))
                lease.release()
                counts["release"] += 1
            elif action == "gc":
                store.gc()
                counts["gc"] += 1
            elif action == "remove":
                digest = store.put(os.urandom(rng.randint(16, 3000)))
                if store.remove(digest) != [digest]:
                    violations.append(f"remove of {digest} removed nothing")
                counts["remove"] += 1
            else:
                lease, _ = rng.choice(held)
                try:
                    store.remove(lease.digest)
                    violations.append(f"remove of leased {lease.digest} succeeded")
                except cas.InUse:
                    counts["in_use"] += 1
        for lease, data in held:
            if lease.path.read_bytes() != data:
                violations.append(f"leased blob {lease.digest} changed")
        store.close()
        results.put((dict(counts), violations, None))
    except BaseException:
        results.put((dict(counts), violations, traceback.format_exc()))


def _check_store(root: Path) -> list[str]:
    """Every row has its file with the right bytes, every file its row, totals add up."""
    problems = []
    files = {p.name: p for p in Layout(root).blobs.rglob("*") if p.is_file()}
    db = sqlite3.connect(Layout(root).catalog)
    rows = dict(db.execute("SELECT digest, size FROM blobs"))
    counters = dict(db.execute("SELECT name, value FROM counters"))
    leases = db.execute("SELECT count(*) FROM leases").fetchone()[0]
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    problems += [f"row without file: {d}" for d in set(rows) - set(files)]
    problems += [f"file without row: {d}" for d in set(files) - set(rows)]
    for digest, path in files.items():
        if blake3.blake3(path.read_bytes()).hexdigest() != digest:
            problems.append(f"wrong content: {digest}")
    if counters["stored_bytes"] != sum(rows.values()):
        problems.append(f"stored_bytes {counters['stored_bytes']} != {sum(rows.values())}")
    if leases:
        problems.append(f"{leases} leases left after every worker closed")
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    return problems


@pytest.mark.slow
def test_stress_many_processes_one_small_store(tmp_path: Path) -> None:
    """6 processes, 30 s of random work on a store 1/50 of the data: no violations, no errors
    but the documented InUse."""
    root = tmp_path / "store"
    cas.Store.open(root).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(str(root), seed, SECONDS, results))
               for seed in range(WORKERS)]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=SECONDS + 300) for _ in workers]
    for process in workers:
        process.join(timeout=60)
    totals: Counter[str] = Counter()
    for counts, _, _ in outcomes:
        totals.update(counts)
    errors = [error for _, _, error in outcomes if error]
    violations = [v for _, found, _ in outcomes for v in found] + _check_store(root)
    with cas.Store.open(root) as store:
        stored = sum(entry.size or 0 for entry in store.entries() if entry.name is None
                     or entry.present)
        evicted = store.stats().counters["evictions"]
    print(f"\nstress: {WORKERS} workers, {SECONDS:.0f}s: {dict(sorted(totals.items()))}; "
          f"{len(violations)} violations, {len(errors)} errors; {evicted} blobs evicted, "
          f"{stored} bytes left (limit {LIMIT})")
    assert errors == [], errors[0]
    assert violations == []
    assert totals["gc"] > 0 and totals["in_use"] > 0 and totals["read"] > 0
    assert evicted > 0
