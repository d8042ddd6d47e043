"""gc: cleanup of catalogs of 100,000 and 1,000,000 blobs freeing 20 %, phase by phase.

The catalog and the files are made directly (rows inserted in one transaction, empty files
created under blobs/), since a million puts would take far longer than the cleanup measured.
Every blob has the same nominal size and a distinct last access, so freeing 20 % of the bytes
removes exactly the 20 % least recently used. The gc runs in a child process, which reports the
phase timings that ``Store.gc`` records and its own peak RSS; the peer removes a second tree
holding the same 20 % of files with ``xargs -0 rm -f``.

A store built the way users build one (real puts: files that hold bytes, a catalog grown by many
transactions) is measured too, since removing a file that holds a block costs the filesystem far
more than removing an empty one: 100,000 small distinct contents put with ``put_many``, then in
each round a fresh copy of it is cleaned by ``Store.gc`` in a child process while
``xargs -0 rm -f`` removes a copy of the same victim files, in alternating order, after a sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from harness import Context, Row, SuiteResult, Target, median, peak_rss
from harness import remove as remove_path

import cas
import cas.ops.cleanup
import cas.ops.eviction
from cas.storage.layout import Layout, shard_of
from cas.values import MAX_DURATION

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000)
#: Rounds at the smaller size, whose phases take a tenth of a second: one sample of them is
#: noise, and the growth rows divide by it. The larger size runs once (a minute to build).
SMALL_ROUNDS = 3
BLOB_SIZE = 1000  # nominal bytes per row; the files themselves are empty
SHARE = 0.2

#: Blobs put for the store built by real puts, and the rounds on fresh copies of it.
REAL_SIZE = 100_000
QUICK_REAL_SIZE = 500
REAL_ROUNDS = 3
#: Seconds allowed for the catalog work of a gc freeing 20 % of 100,000 blobs: what the rows on
#: the store of inserted rows and empty files measured for it. The target is
#: gc within 1.5x of removing the same files plus this.
CATALOG_ALLOWANCE = 0.35

BUILD_CHILD = """
import sys, cas
root, count = sys.argv[1], int(sys.argv[2])
with cas.Store.open(root, durable=False) as store:
    for start in range(0, count, 10_000):
        store.put_many([f"fixture {i:010d} ".encode() * 6
                        for i in range(start, min(count, start + 10_000))])
"""

# Grace period 0: the blobs were all put a moment ago. Store.gc alone is timed (closing the
# store writes the cleanup-run counter and checkpoints the catalog; that is reported apart).
REAL_GC_CHILD = """
import json, sys, time, cas
store = cas.Store.open(sys.argv[1], grace_period=0)
start = time.perf_counter()
plan = store.gc(max_size=int(sys.argv[2]))
took = time.perf_counter() - start
store.close()
closed = time.perf_counter() - start - took
print(json.dumps({"victims": plan.removed, "gc": took, "close": closed, **plan.timings}))
"""

GC_CHILD = """
import json, sys, cas
with cas.Store.open(sys.argv[1]) as store:
    plan = store.gc(max_size=int(sys.argv[2]))
print(json.dumps({"victims": plan.removed, **plan.timings}))
"""


def _digest(index: int) -> str:
    """A digest for row ``index``: spread over the 256 shard folders, as real ones are."""
    return hashlib.sha256(index.to_bytes(8, "little")).hexdigest()


def _build(root: Path, count: int, ctx: Context) -> list[str]:
    """A store of ``count`` rows and files; return the paths of the oldest 20 %."""
    cas.Store.open(root).close()
    now = time.time() - count - 3600  # every access older than the grace period
    db = sqlite3.connect(Layout(root).catalog, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO blobs (digest, size, created, last_access) VALUES (?, ?, ?, ?)",
        ((_digest(i), BLOB_SIZE, now, now + i) for i in range(count)),
    )
    db.execute("COMMIT")
    db.close()
    layout = Layout(root)
    for shard in range(256):
        layout.shard(f"{shard:02x}").mkdir(exist_ok=True)
    for index in range(count):
        digest = _digest(index)
        os.close(os.open(layout.blob(digest), os.O_CREAT | os.O_WRONLY, 0o444))
    # max_size is one byte below the total, so low water frees one blob more than 20 %.
    victims = int(count * SHARE) + 1
    ctx.log(f"  built {count:,} blobs in {root}")
    return [str(layout.blob(_digest(i))) for i in range(victims)]


def _peer_tree(folder: Path, victims: list[str], store_root: Path) -> list[str]:
    """The same victim files, in the same layout, under another folder."""
    copies = []
    for path in victims:
        relative = Path(path).relative_to(store_root)
        copy = folder / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(copy, os.O_CREAT | os.O_WRONLY, 0o444))
        copies.append(str(copy))
    return copies


def _sqlite_delete(root: Path, copy: Path, count: int) -> float:
    """The peer of the catalog update: the same deletion, by the same statements as
    ``cas.storage.queries.evict``, in one transaction of bare sqlite3 on a copy of the catalog."""
    shutil.copyfile(Layout(root).catalog, copy)
    digests = [(_digest(i),) for i in range(int(count * SHARE) + 1)]
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # as cas's catalog
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TEMP TABLE evicting (digest TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO temp.evicting (digest) VALUES (?)", digests)
        db.execute("DELETE FROM names WHERE url IS NULL AND digest IN"
                   " (SELECT digest FROM temp.evicting)")
        db.execute("DELETE FROM blobs WHERE digest IN (SELECT digest FROM temp.evicting)")
        db.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        db.close()


def _rm(paths: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", "rm", "-f"], input="\0".join(paths).encode(), check=True)
    return time.perf_counter() - start


def _round(ctx: Context, count: int) -> dict[str, float]:
    """Build a store of ``count`` blobs and its peers' copies, then time one gc freeing 20 %
    and the peers doing the same; return the timings, the victims and the gc's peak RSS."""
    folder = ctx.scratch / f"gc-{count}"
    remove_path(folder)
    folder.mkdir(parents=True)
    root = folder / "store"
    victims = _build(root, count, ctx)
    copies = _peer_tree(folder / "peer", victims, root)
    delete_time = _sqlite_delete(root, folder / "peer.db", count)
    if not ctx.quick:
        time.sleep(2)  # let the file creation settle before timing removals
    # max_size just below the total: low water (0.8) of it frees 20 %.
    peak, output = peak_rss(ctx.python, GC_CHILD, [str(root), str(count * BLOB_SIZE - 1)])
    timings = json.loads(output.splitlines()[-1])
    rm_time = _rm(copies)
    assert timings["victims"] == len(victims), timings
    left = sum(1 for _ in Layout(root).blobs.rglob("*") if _.is_file())
    assert left == count - len(victims), left
    remove_path(folder)
    return {**timings, "rm": rm_time, "delete": delete_time, "rss": peak}


def _victims_of(root: Path, max_size: int) -> list[str]:
    """The digests a gc of the store at ``root`` down from ``max_size`` removes, by cas's own
    policy (``cas.ops.eviction.victims``), so that the peer removes exactly the same files."""
    limits = cas.ops.eviction.Limits(cas.Settings(max_cache_size=max_size, max_age=MAX_DURATION,
                                                  grace_period=0.0))
    db = sqlite3.connect(Layout(root).catalog)
    try:
        stored = db.execute("SELECT value FROM counters WHERE name = 'stored_bytes'").fetchone()[0]
        chosen = cas.ops.eviction.victims(db, limits, limits.excess(stored), time.time() + 1, [])
        return [victim[0] for victim in chosen]
    finally:
        db.close()


def _copy_victims(source: Path, folder: Path, digests: list[str]) -> list[str]:
    """Copies of the victims' files (same bytes, same layout) under ``folder``; their paths."""
    copies = []
    for digest in digests:
        copy = folder / shard_of(digest) / digest
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Layout(source).blob(digest), copy)
        copies.append(str(copy))
    return copies


def _settle(ctx: Context) -> None:
    """Write everything out and let the filesystem's background work finish before timing
    (a quick run checks the suite, not its figures: no pause)."""
    os.sync()
    if not ctx.quick:
        time.sleep(1)


def _real_puts(ctx: Context) -> tuple[list[Row], list[str]]:
    """gc on a store built by real puts against ``rm`` of the same files, interleaved rounds."""
    count = QUICK_REAL_SIZE if ctx.quick else REAL_SIZE
    rounds = ctx.rounds_or(REAL_ROUNDS)
    folder = ctx.scratch / "gc-real"
    remove_path(folder)
    folder.mkdir(parents=True)
    built = folder / "built"
    ctx.log(f"  putting {count:,} blobs into {built}")
    subprocess.run([ctx.python, "-c", BUILD_CHILD, str(built), str(count)], check=True)
    db = sqlite3.connect(Layout(built).catalog)
    total = db.execute("SELECT value FROM counters WHERE name = 'stored_bytes'").fetchone()[0]
    db.close()
    max_size = total - 1  # low water (0.8) of it: the oldest 20 % of the bytes go
    digests = _victims_of(built, max_size)
    samples: dict[str, list[float]] = {"gc": [], "rm": [], "remove": [], "close": []}

    def gc() -> None:
        store = folder / "store"
        remove_path(store)
        subprocess.run(["cp", "-a", str(built), str(store)], check=True)
        _settle(ctx)
        output = subprocess.run([ctx.python, "-c", REAL_GC_CHILD, str(store), str(max_size)],
                                check=True, capture_output=True, text=True).stdout
        timings = json.loads(output.splitlines()[-1])
        assert timings["victims"] == len(digests), (timings, len(digests))
        for key in ("gc", "remove", "close"):
            samples[key].append(timings[key])
        remove_path(store)

    def rm() -> None:
        peer = folder / "peer"
        remove_path(peer)
        copies = _copy_victims(built, peer, digests)
        _settle(ctx)
        samples["rm"].append(_rm(copies))
        assert not any(os.path.lexists(path) for path in copies[:100])
        remove_path(peer)

    for index in range(rounds):
        for contender in ([gc, rm] if index % 2 == 0 else [rm, gc]):
            contender()
            _settle(ctx)
        ctx.log(f"  round {index + 1}/{rounds}: gc {samples['gc'][-1]:.3f}s,"
                f" rm {samples['rm'][-1]:.3f}s")
    remove_path(folder)
    label = f"{count:,} blobs built by puts"
    allowed = [each + CATALOG_ALLOWANCE for each in samples["rm"]]
    rows = [
        Row(f"gc of {label}: Store.gc wall time", "s", median(samples["gc"]),
            peer=f"xargs -0 rm -f of the same {len(digests):,} files, plus {CATALOG_ALLOWANCE} s",
            peer_value=median(allowed), target=Target("<=", 1.5),
            cas_samples=tuple(samples["gc"]), peer_samples=tuple(allowed)),
        Row(f"gc of {label}: remove the files", "s", median(samples["remove"]),
            peer="xargs -0 rm -f", peer_value=median(samples["rm"]),
            cas_samples=tuple(samples["remove"]), peer_samples=tuple(samples["rm"])),
        Row(f"gc of {label}: closing the store after it", "s", median(samples["close"]),
            note="context: writes the cleanup-run counter and checkpoints the catalog"),
    ]
    notes = [
        f"Store built by real puts: {count:,} distinct contents of 114 bytes put with "
        "`put_many` (durable=False for the build only), then in each of "
        f"{rounds} rounds a fresh `cp -a` copy is cleaned by `Store.gc(max_size=total - 1)` "
        f"(grace period 0) in a child process, removing {len(digests):,} blobs; the peer "
        "removes copies of the same files with `xargs -0 rm -f`. Everything is synced and "
        "left to settle for a second before each contender, whose order alternates; medians.",
        f"The target allows gc 1.5x of the peer's time plus {CATALOG_ALLOWANCE} s, the catalog "
        "work that the rows on inserted rows and empty files measure for the same gc. Removing "
        "a file whose data has been written out frees its block (here ext4 mounted with "
        "`discard`): 75-110 µs a file on this machine when quiet, against 4-5 µs for an empty "
        "file or one whose data is still only in the page cache, which is why these stores "
        "are synced before every contender.",
    ]
    return rows, notes


def run(ctx: Context) -> SuiteResult:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    rows: list[Row] = []
    measured: dict[int, dict[str, float]] = {}
    for count in sizes:
        repeat = SMALL_ROUNDS if count == sizes[0] and not ctx.quick else 1
        rounds = [_round(ctx, count) for _ in range(repeat)]
        timings = measured[count] = {key: median([each[key] for each in rounds])
                                     for key in rounds[0]}
        victims = int(timings["victims"])
        label = f"{count:,} blobs"
        rows += [
            Row(f"gc of {label}: choose {victims:,} victims", "s", timings["choose"],
                target=Target("<", 0.5, on="value") if count == 1_000_000 else None),
            Row(f"gc of {label}: update the catalog", "s", timings["update"],
                target=Target("<", 3.0, on="value") if count == 1_000_000 else None),
            Row(f"gc of {label}: update the catalog", "s", timings["update"],
                peer="sqlite3: the same DELETEs, one transaction", peer_value=timings["delete"],
                note="context: cas deletes in batches of "
                f"{cas.ops.cleanup.GC_BATCH:,} victims, each its own transaction"),
            Row(f"gc of {label}: remove the files", "s", timings["remove"],
                peer="xargs -0 rm -f", peer_value=timings["rm"],
                target=Target("<=", 1.2) if count == 1_000_000 else None),
            Row(f"gc of {label}: peak RSS of the gc process", "bytes", timings["rss"]),
        ]
    small, large = sizes
    growth = large / small
    peers = {"update": "delete", "remove": "rm"}  # phases that have a peer, measured alike
    for phase in ("choose", "update", "remove"):
        ratio = measured[large][phase] / measured[small][phase]
        bound, note = growth, f"linear would be {growth:g}x"
        if phase in peers:
            # Random digests spread deletions over every page of the table and every folder,
            # and this VM writes large volumes of fresh pages more slowly: the peer doing the
            # same work grows faster than linear too, so the bound is the larger of the two.
            peer_growth = measured[large][peers[phase]] / measured[small][peers[phase]]
            bound = max(growth, peer_growth)
            note += f"; the peer grew {peer_growth:.2f}x"
        rows.append(Row(f"gc growth {small:,} -> {large:,} blobs: {phase}", "x", ratio,
                        target=Target("<=", bound * 1.25, on="value"), note=note))
    rows.append(Row(f"gc growth {small:,} -> {large:,} blobs: peak RSS", "x",
                    measured[large]["rss"] / measured[small]["rss"],
                    target=Target("<=", 1.25, on="value"),
                    note="memory not growing with the catalog: victims go in batches of "
                    f"{cas.ops.cleanup.GC_BATCH:,} and the report lists the first "
                    f"{cas.ops.eviction.REPORT_LIMIT:,} by name"))
    notes = [
        "Rows are inserted and empty files created directly, then `Store.gc(max_size=...)` runs "
        "in a child process; its phase timings come from `Plan.timings`.",
        f"`remove the files` is cas's unlink phase: chunks of up to "
        f"{cas.ops.cleanup.UNLINK_CHUNK:,}"
        f" files or {cas.ops.cleanup.UNLINK_HOLD * 1000:g} ms, each checked under "
        "the catalog's write lock to have no row before it is unlinked (a concurrent put of "
        "the same content keeps its file). The peer removes the same files, in the same "
        "layout, with `xargs -0 rm -f`.",
        f"{SMALL_ROUNDS} rounds at {sizes[0]:,} blobs, each on a store built afresh, and their "
        f"medians; one round at {sizes[1]:,} (building a million files takes a minute).",
    ]
    real_rows, real_notes = _real_puts(ctx)
    return SuiteResult(rows + real_rows, notes + real_notes)
