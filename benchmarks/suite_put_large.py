"""put-large: ``Store.put`` of one large file against ``cp`` + ``sync`` and ``b3sum`` of it.

cas fsyncs every blob it stores, so the copy it is held against is fsynced too: the peer is
``cp SRC DST && sync DST`` (coreutils' ``sync FILE`` fsyncs that one file). Peak memory of the
same put is measured in a child process of its own.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from harness import (
    Context,
    GiB,
    MiB,
    Row,
    SuiteResult,
    Target,
    add_b3sum,
    interleave,
    median,
    peak_rss,
)
from harness import remove as remove_path

import cas

SIZE = GiB
QUICK_SIZE = 64 * MiB
ROUNDS = 5

#: The child whose peak RSS is measured: open a store, put the file if given, print the digest.
_RSS_CHILD = """
import sys, cas
with cas.Store.open(sys.argv[1]) as store:
    if len(sys.argv) > 2:
        print(store.put(sys.argv[2]))
"""


def make_input(path: Path, size: int) -> None:
    """Write ``size`` random bytes to ``path`` once; later runs reuse the file."""
    if path.is_file() and path.stat().st_size == size:
        return
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def read_through(path: Path) -> None:
    """Read the whole file once so that every contender finds it in the page cache."""
    with open(path, "rb", buffering=0) as source:
        while source.read(16 * MiB):
            pass


def run(ctx: Context) -> SuiteResult:
    """Time put, cp + sync and b3sum of the same file, round by round; then put's peak RSS."""
    size = QUICK_SIZE if ctx.quick else SIZE
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    rounds = ctx.rounds_or(ROUNDS)
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    source = ctx.scratch / f"input-{size}.bin"
    store_root = ctx.scratch / "store"
    copy = ctx.scratch / "copy.bin"
    notes: list[str] = []

    ctx.log(f"put-large: input of {label} at {source}")
    make_input(source, size)
    read_through(source)
    for leftover in (store_root, copy, ctx.scratch / "rss-store"):
        remove_path(leftover)
    digests: set[str] = set()

    # Each contender deletes its own previous output right before it writes, with no pause:
    # memory left free for a few seconds goes back to the host (free page reporting), and
    # writing into it again is 2-3x slower, so a pause would penalise whoever goes first.
    def put() -> float:
        remove_path(store_root)
        with cas.Store.open(store_root) as store:
            start = time.perf_counter()
            digests.add(store.put(source))
            return time.perf_counter() - start

    def cp_sync() -> float:
        remove_path(copy)
        start = time.perf_counter()
        subprocess.run(["cp", str(source), str(copy)], check=True)
        subprocess.run(["sync", str(copy)], check=True)
        return time.perf_counter() - start

    def b3sum() -> float:
        start = time.perf_counter()
        result = subprocess.run(["b3sum", str(source)], check=True, capture_output=True)
        digests.add(result.stdout.split()[0].decode())
        return time.perf_counter() - start

    contenders = {"cas put": put, "cp + sync": cp_sync}
    add_b3sum(contenders, b3sum, notes)
    ctx.log(f"put-large: {rounds} rounds after a warm-up round")
    samples = interleave(contenders, rounds, ctx.log)
    if len(digests) != 1:
        raise AssertionError(f"cas put and b3sum disagree on the digest: {sorted(digests)}")
    remove_path(store_root)
    remove_path(copy)

    ctx.log("put-large: peak RSS of a put in a child process")
    rss_root = ctx.scratch / "rss-store"
    baseline, _ = peak_rss(ctx.python, _RSS_CHILD, [str(rss_root)])
    remove_path(rss_root)
    rss, digest = peak_rss(ctx.python, _RSS_CHILD, [str(rss_root), str(source)])
    remove_path(rss_root)
    if digest.strip() not in digests:
        raise AssertionError(f"the child stored {digest!r}, not {sorted(digests)}")

    put_time = median(samples["cas put"])
    rows = [
        Row(
            f"put of a {label} file, wall time",
            "s",
            put_time,
            "cp + sync",
            median(samples["cp + sync"]),
            Target("<=", 1.5),
            note=f"cas {size / MiB / put_time:,.0f} MiB/s",
            cas_samples=tuple(samples["cas put"]),
            peer_samples=tuple(samples["cp + sync"]),
        )
    ]
    if "b3sum" in samples:
        rows.append(
            Row(
                f"put of a {label} file, wall time",
                "s",
                put_time,
                "b3sum",
                median(samples["b3sum"]),
                note="context: b3sum only reads and hashes (multithreaded, mmap)",
                cas_samples=tuple(samples["cas put"]),
                peer_samples=tuple(samples["b3sum"]),
            )
        )
    rows.append(
        Row(
            f"peak RSS of the {label} put (child process)",
            "bytes",
            rss,
            target=Target("<", 100 * MiB, on="value"),
            note=f"the same child without the put peaks at {baseline / MiB:.1f} MiB",
        )
    )
    notes += [
        f"Input: {label} of random bytes in the scratch folder, generated once and kept; read "
        "once before timing so that it is in the page cache.",
        "Peer for the target: `cp SRC DST && sync DST` (coreutils `sync FILE` fsyncs that file), "
        "because cas fsyncs every blob before publishing it. cp 9.x copies with "
        "copy_file_range (or a reflink where the filesystem has them).",
        "Every round writes for real: the put gets a new store, and each contender deletes its "
        "previous output right before writing, without a pause (freed memory is handed back to "
        "the host within seconds on this VM, and writing into it again is 2-3x slower).",
        "Peak RSS is the high-water mark (VmHWM) of one child process that opens a new store and "
        "puts the file, as the child reads it at its end; it includes the interpreter and the "
        "imports. (The parent's `ru_maxrss` of the child would not do: subprocess spawns with "
        "vfork and Linux counts the parent's RSS at exec in the child's maximum.)",
    ]
    return SuiteResult(rows, notes)
