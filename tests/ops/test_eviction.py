"""Leases, pins and cleanup: what goes, what stays, and why."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

import cas
from cas.storage.layout import PUT_PREFIX, Layout

from tests.clock import Clock
from tests.conftest import blob_files, run_cas, run_cas_process


@pytest.fixture
def aged(root: Path) -> tuple[cas.Store, list[str]]:
    """A store with ten 1000-byte blobs named b0..b9, b0 the least recently used: blob i was
    put 3600 - i seconds before now (the store's clock moved on since)."""
    now = time.time()
    clock = Clock(now - 3600)
    store = cas.Store.open(root, grace_period=600, max_cache_size=10**9, clock=clock)
    digests = []
    for index in range(10):
        digests.append(store.put(bytes([index]) * 1000, name=f"b{index}"))
        clock.advance(1)
    clock.now = now
    return store, digests


def test_size_cleanup_frees_down_to_low_water_in_lru_order(
    aged: tuple[cas.Store, list[str]],
) -> None:
    """Above max_size, the least recently used blobs go until the store is at low_water."""
    store, digests = aged
    plan = store.gc(max_size=5000)  # low_water 0.8: down to 4000 bytes
    assert [item.digest for item in plan.victims] == digests[:6]
    assert [item.names for item in plan.victims] == [(f"b{i}",) for i in range(6)]
    assert {item.reason for item in plan.victims} == {"size"}
    assert plan.stored_before == 10000 and plan.stored_after == 4000
    assert sorted(path.name for path in blob_files(store.root)) == sorted(digests[6:])
    assert [entry.name for entry in store.entries()] == [f"b{i}" for i in range(6, 10)]


def test_the_clock_seam_moves_last_access_and_lease_expiry(root: Path) -> None:
    """A store opened with ``clock`` reads the wall time from it: a blob leaves its grace
    period, and a lease not renewed expires, when that clock says so."""
    clock = Clock()
    with cas.Store.open(root, grace_period=60, lease_ttl=100, clock=clock) as store:
        kept = store.put(b"leased")
        gone = store.put(b"not leased")
        lease = store.lease(kept)
        assert store.gc(max_size=0).removed == 0  # both are recent
        clock.advance(61)
        assert [item.digest for item in store.gc(max_size=0).victims] == [gone]
        assert [item.reason for item in store.gc(max_size=0).kept] == ["leased"]
        clock.advance(100)  # the lease was not renewed within its ttl on this clock
        assert [item.digest for item in store.gc(max_size=0).victims] == [kept]
        lease.release()


def test_below_the_limit_nothing_goes(aged: tuple[cas.Store, list[str]]) -> None:
    """A store under its size limit and age limit loses nothing."""
    store, _ = aged
    assert store.gc(max_size=10000).victims == []
    assert len(blob_files(store.root)) == 10


def test_age_cleanup(aged: tuple[cas.Store, list[str]]) -> None:
    """Blobs not accessed for max_age go, whatever the size."""
    store, digests = aged
    plan = store.gc(max_age=3600 - 4.5)
    assert [item.digest for item in plan.victims] == digests[:5]
    assert {item.reason for item in plan.victims} == {"age"}


def test_leased_pinned_and_recent_stay(aged: tuple[cas.Store, list[str]]) -> None:
    """Leased, pinned and recently accessed blobs survive a cleanup to zero, and are reported."""
    store, digests = aged
    store.pin("b1")
    recent = store.put(b"fresh" * 200, name="fresh")
    with store.lease("b0") as path:
        plan = store.gc(max_size=0)
        assert path.read_bytes() == bytes([0]) * 1000
    kept = {item.digest: item.reason for item in plan.kept}
    assert kept == {digests[0]: "leased", digests[1]: "pinned", recent: "recent"}
    assert {item.digest for item in plan.victims} == set(digests[2:])
    assert sorted(p.name for p in blob_files(store.root)) == sorted([*digests[:2], recent])
    store.unpin("b1")
    # b0 was accessed when it was leased, so it is recent now: only b1 goes.
    assert [item.digest for item in store.gc(max_size=0).victims] == [digests[1]]


def test_dry_run_removes_nothing_and_matches(aged: tuple[cas.Store, list[str]]) -> None:
    """A dry run reports exactly what the real run then removes, and removes nothing."""
    store, _ = aged
    dry = store.gc(max_size=5000, dry_run=True)
    assert len(blob_files(store.root)) == 10 and len(store.entries()) == 10
    real = store.gc(max_size=5000)
    assert dry.victims == real.victims


@pytest.mark.parametrize("dry_run", [False, True])
def test_batches_and_a_bounded_report(aged: tuple[cas.Store, list[str]],
                                      monkeypatch: pytest.MonkeyPatch, dry_run: bool) -> None:
    """A cleanup goes in batches down to low water, though the store is under max_size after
    the first; the report lists the first victims by name and counts them all."""
    monkeypatch.setattr(cas.ops.cleanup, "GC_BATCH", 2)
    monkeypatch.setattr(cas.ops.eviction, "REPORT_LIMIT", 3)
    store, digests = aged
    store.pin("b9")
    plan = store.gc(max_size=9500, dry_run=dry_run)  # low water 7600 bytes: 3 blobs go
    assert plan.removed == 3 and plan.freed == 3000 and plan.stored_after == 7000
    assert [(item.digest, item.names) for item in plan.victims] == [
        (digests[i], (f"b{i}",)) for i in range(3)
    ]
    left = 10 if dry_run else 7
    assert len(blob_files(store.root)) == left
    plan = store.gc(max_size=0, dry_run=dry_run)
    assert plan.removed == left - 1 and len(plan.victims) == 3
    assert [item.reason for item in plan.kept] == ["pinned"]


def test_cli_gc_says_how_many_more_than_listed(aged: tuple[cas.Store, list[str]]) -> None:
    """`cas gc` counts every removed blob, in text and in JSON."""
    store, _ = aged
    store.close()
    done = run_cas("gc", "--max-size", "0", "--dry-run", "--json", root=store.root)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["removed_count"] == len(report["removed"]) == 10
    assert report["freed_bytes"] == 10000


def test_named_source_survives_eviction_unsourced_name_goes(root: Path) -> None:
    """Eviction drops names that cannot bring their blob back, keeps ones with a source."""
    with cas.Store.open(root, grace_period=0) as store:
        local = store.put(b"local", name="local")
        store.put(b"remote", name="remote")
        db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
        db.execute("UPDATE names SET url = 'http://127.0.0.1:9/remote' WHERE name = 'remote'")
        db.close()
        store.gc(max_size=0)
        names = {entry.name: entry.present for entry in store.entries()}
    assert names == {"remote": False}
    assert local not in {p.name for p in blob_files(root)}


def test_remove_refuses_a_leased_blob(store: cas.Store) -> None:
    """remove raises InUse for a leased blob unless forced; release makes it removable."""
    digest = store.put(b"held", name="held")
    lease = store.lease("held")
    with pytest.raises(cas.InUse):
        store.remove(digest)
    with pytest.raises(cas.InUse):
        store.remove("held")
    assert store.read_bytes("held") == b"held"
    lease.release()
    lease.release()
    assert store.remove("held") == [digest]


def test_remove_force_takes_a_leased_blob(store: cas.Store) -> None:
    """--force removes a leased blob."""
    digest = store.put(b"forced")
    with store.lease(digest):
        assert store.remove(digest, force=True) == [digest]


def test_cli_rm_of_leased_blob_exits_5(root: Path) -> None:
    """`cas rm` of a blob leased by `cas lease` in another process exits 5 with one line."""
    with cas.Store.open(root) as store:
        store.put(b"cli", name="cli")
    result = run_cas_process("lease", "cli", "--", sys.executable, "-m", "cas", "--root", str(root),
                             "rm", "cli", root=root)
    assert result.returncode == 5
    assert result.stderr.decode().splitlines()[-1].startswith("cas: error:")
    assert run_cas("cat", "cli", root=root).stdout == b"cli"


def test_cli_lease_exits_with_command_status(root: Path) -> None:
    """`cas lease REF -- COMMAND` runs the command and exits with its status."""
    with cas.Store.open(root) as store:
        store.put(b"x", name="x")
    assert run_cas_process("lease", "x", "--", "sh", "-c", "exit 7", root=root).returncode == 7
    assert run_cas_process("lease", "x", "sh", root=root).returncode == 2
    with cas.Store.open(root) as store, sqlite3.connect(Layout(root).catalog) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_lease_renew_and_expiry(root: Path) -> None:
    """renew pushes the expiry out; a lease of another host past its expiry protects nothing."""
    with cas.Store.open(root, lease_ttl=100, grace_period=0) as store:
        digest = store.put(b"renewed")
        lease = store.lease(digest)
        db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
        before = db.execute("SELECT expires FROM leases").fetchone()[0]
        time.sleep(0.05)
        lease.renew()
        assert db.execute("SELECT expires FROM leases").fetchone()[0] > before
        db.execute("UPDATE leases SET host = 'elsewhere', expires = ?", (time.time() + 3600,))
        assert store.gc(max_size=0).victims == []  # a live lease of another host is respected
        db.execute("UPDATE leases SET expires = ?", (time.time() - 1,))
        assert [item.digest for item in store.gc(max_size=0).victims] == [digest]
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
        db.close()


def _hold_lease(root: str, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = cas.Store.open(root, grace_period=0)
    store.lease("victim")
    ready.put(os.getpid())
    time.sleep(600)


def test_killed_holder_lease_is_reclaimed(root: Path) -> None:
    """A lease whose holder was SIGKILLed stops protecting its blob at the next gc."""
    with cas.Store.open(root, grace_period=0) as store:
        digest = store.put(b"victim", name="victim")
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    holder = context.Process(target=_hold_lease, args=(str(root), ready))
    holder.start()
    ready.get(timeout=60)
    with cas.Store.open(root, grace_period=0) as store:
        assert store.gc(max_size=0).victims == []
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(timeout=30)
        assert [item.digest for item in store.gc(max_size=0).victims] == [digest]
    assert blob_files(root) == []


def test_put_over_the_limit_cleans_up(root: Path) -> None:
    """A put that takes the store over max_cache_size triggers cleanup down to low water."""
    with cas.Store.open(root, max_cache_size=10_000, grace_period=0) as store:
        for index in range(11):
            store.put(os.urandom(1000), name=f"n{index}")
        store.wait_for_cleanup()  # it runs in the background, so the put returned at once
        stored = sum(entry.size or 0 for entry in store.entries())
    assert stored <= 10_000
    assert len(blob_files(root)) == stored // 1000


def test_maintenance_thread_cleans_periodically(root: Path) -> None:
    """store.maintenance runs cleanup in the background every interval."""
    with cas.Store.open(root, grace_period=0, max_age=0.2) as store:
        store.put(b"old")
        with store.maintenance(interval=1):  # the shortest interval
            deadline = time.monotonic() + 20
            while blob_files(root) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert blob_files(root) == []


def test_gc_clears_old_staging_debris(store: cas.Store) -> None:
    """Staging files older than a day go with the next gc; fresh ones and locks stay."""
    old = Layout(store.root).tmp / f"{PUT_PREFIX}old"
    fresh = Layout(store.root).tmp / f"{PUT_PREFIX}fresh"
    old.write_bytes(b"debris")
    fresh.write_bytes(b"in progress")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    store.gc()
    assert not old.exists() and fresh.exists() and Layout(store.root).locks.is_dir()


def test_pin_a_digest_without_name_is_a_usage_error(store: cas.Store) -> None:
    """Only names are pinned; a nameless blob gets a clear error."""
    digest = store.put(b"nameless")
    with pytest.raises(cas.UsageError, match="no name"):
        store.pin(digest)


def test_cli_gc_lists_names(root: Path) -> None:
    """`cas gc --dry-run` lists victims by name, and --json is one document."""
    with cas.Store.open(root, clock=Clock(time.time() - 86400 * 60)) as store:
        store.put(b"gc me", name="fixtures/gc-me")  # 60 days ago
    result = run_cas("gc", "--dry-run", root=root)
    assert result.returncode == 0
    assert "fixtures/gc-me" in result.stdout.decode()
    import json

    document = json.loads(run_cas("gc", "--json", root=root).stdout)
    assert document["removed"][0]["names"] == ["fixtures/gc-me"]
    assert document["removed"][0]["reason"] == "age"
