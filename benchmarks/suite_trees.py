"""trees: a folder of 10,000 small files as a tree: materializing ``path(tree)`` against
``cp -r`` of the same folder, ``put`` of the folder, and what a second tree sharing 90 % of its
files adds to ``blobs/``.

Materializing lays out the tree's read-only folder under ``views/``: a folder per folder and a
hard link per file (no byte is copied). ``cp -r`` copies every byte of the same files from the
page cache. Each round gets a fresh destination (cp) or has the view removed beforehand (cas),
untimed; rounds alternate the order of the contenders.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from harness import Context, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path

import cas
from cas.storage.folder import remove_tree
from cas.storage.layout import Layout

FILES = 10_000
QUICK_FILES = 1_000
FOLDERS = 100
ROUNDS = 7
SHARED = 0.9


def _build(folder: Path, files: int) -> int:
    """A folder of ``files`` small files (0.5 to 4 KiB, random bytes) in ``FOLDERS`` folders,
    kept between runs; return its size in bytes."""
    marker = folder / ".complete"
    if not marker.exists():
        remove_path(folder)
        sizes = random.Random(files)
        for index in range(files):
            path = folder / f"d{index % FOLDERS:03}" / f"f{index:05}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(sizes.randint(512, 4096)))
        marker.write_text("")
    marker.unlink()
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    marker.write_text("")
    return total


def run(ctx: Context) -> SuiteResult:
    files = QUICK_FILES if ctx.quick else FILES
    rounds = ctx.rounds_or(ROUNDS)
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    source = ctx.scratch / f"src-{files}"
    ctx.log(f"trees: a folder of {files:,} files at {source}")
    total = _build(source, files)
    (ctx.scratch / "plain").mkdir(exist_ok=True)
    for path in source.rglob("*"):  # into the page cache
        if path.is_file():
            path.read_bytes()
    root = ctx.scratch / "store"
    remove_path(root)
    with cas.Store.open(root) as store:
        digest = store.put(source, name="bench/tree")
    view = Layout(root).view(digest, "tree")

    def cp() -> float:
        target = ctx.scratch / "plain" / "copy"
        remove_path(target)
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(source), str(target)], check=True)
        return time.perf_counter() - start

    def materialize() -> float:
        with cas.Store.open(root) as store:
            if view.exists():
                fd = os.open(view.parent, os.O_RDONLY)
                try:
                    remove_tree(view.name, fd)
                finally:
                    os.close(fd)
            start = time.perf_counter()
            shown = store.path("bench/tree")
            elapsed = time.perf_counter() - start
        assert shown == view
        return elapsed

    def put() -> float:
        fresh = ctx.scratch / "put-store"
        remove_path(fresh)
        with cas.Store.open(fresh) as store:
            start = time.perf_counter()
            store.put(source, name="bench/tree")
            return time.perf_counter() - start

    ctx.log(f"trees: {rounds} rounds after a warm-up round")
    samples = interleave({"cp -r": cp, "cas path(tree)": materialize, "cas put DIR": put},
                         rounds, ctx.log)
    copied = ctx.scratch / "plain" / "copy"
    check = sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file())
    shown = sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file())
    assert shown == [name for name in check if name != ".complete"] or shown == check

    # A second tree sharing 90 % of its files: what blobs/ grows by.
    second = ctx.scratch / "second"
    remove_path(second)
    shutil.copytree(source, second)
    changed = [p for p in sorted(second.rglob("*.bin"))][: int(files * (1 - SHARED))]
    for path in changed:
        path.write_bytes(os.urandom(path.stat().st_size))
    new_bytes = sum(path.stat().st_size for path in changed)
    with cas.Store.open(root) as store:
        before = store.stats().usage.bytes
        second_digest = store.put(second, name="bench/second")
        growth = store.stats().usage.bytes - before
    record = Layout(root).blob(second_digest).stat().st_size
    remove_path(second)
    remove_path(ctx.scratch / "put-store")
    remove_path(root)

    label = f"{files:,} files of 0.5-4 KiB ({total / 2**20:.0f} MiB) in {FOLDERS} folders"
    rows = [
        Row(f"path(tree) materializing {label}, wall time", "s",
            median(samples["cas path(tree)"]), "cp -r", median(samples["cp -r"]),
            Target("<=", 1.5), note="a folder per folder, a hard link per file, renamed into "
            "place; cp -r copies every byte", cas_samples=tuple(samples["cas path(tree)"]),
            peer_samples=tuple(samples["cp -r"])),
        Row(f"put of the folder ({label}), wall time", "s", median(samples["cas put DIR"]),
            "cp -r", median(samples["cp -r"]),
            note="context: hashing and copying each file into blobs/ (put_many batches: one "
            "transaction and one syncfs per 1,000 files), then the tree's record",
            cas_samples=tuple(samples["cas put DIR"]), peer_samples=tuple(samples["cp -r"])),
        Row(f"blobs/ growth for a second tree sharing {SHARED:.0%} of its files, its record"
            " aside", "bytes", float(growth - record), "the new files' bytes", float(new_bytes),
            Target("<=", 1.0), note="only the changed files are stored again"),
        Row("the second tree's record (one blob: paths, sizes, modes, digests)", "bytes",
            float(record), "the new files' bytes", float(new_bytes),
            note=f"context: {record / files:.0f} bytes per file, 64 of them the digest"),
    ]
    notes = [
        f"Input: {label}, random bytes, kept between runs and read once before timing (the "
        "page cache holds it).",
        "`cas path(tree)` is `Store.path(name)` of a stored tree whose view was removed "
        "beforehand (untimed), so it builds the whole view: mkdir of each folder, os.link of "
        "each file relative to folder descriptors, chmod 0555 of the folders, and the rename "
        "into views/. `cp -r` is GNU cp into a fresh folder. `cas put DIR` is `Store.put` of "
        "the folder into a fresh store.",
    ]
    return SuiteResult(rows, notes)
