"""small: many named 4 KiB blobs: ``Store.put``, ``Store.put_many`` and ``Store.path`` against
diskcache's set and get.

Both libraries get the same names and bytes, a fresh folder each round, and the same shuffled
look-up order. A cProfile pass over cas's side shows where its time goes.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import diskcache  # type: ignore[import-untyped]
from harness import Context, Row, SuiteResult, Target, median, round_order
from harness import remove as remove_path

import cas

COUNT = 10_000
QUICK_COUNT = 1_000
BLOB_SIZE = 4096
ROUNDS = 5
PROFILE_COUNT = 1_000
WARM_FILES = 20_000
LOOKUP_PASSES = 3


def _rate(count: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


#: Contenders of the put phase: cas one by one and in batches, with and without fsyncs, the
#: peer with the target, and two for context.
PUTTERS = ("cas", "cas durable=false", "cas put_many", "cas put_many durable=false",
           "diskcache", "diskcache FULL", "plain files")
#: Contenders of the look-up phase.
READERS = ("cas", "diskcache")


class _Round:
    """One round's fresh stores, filled and read with the same names, bytes and order."""

    def __init__(self, folder: Path, names: list[str], blobs: list[bytes]) -> None:
        self.names = names
        self.blobs = blobs
        self.lookups = random.Random(len(names)).sample(names, len(names))
        self.folder = folder
        self.store = cas.Store.open(folder / "cas")
        self.fast_store = cas.Store.open(folder / "cas-fast", durable=False)
        self.batch_store = cas.Store.open(folder / "cas-batch")
        self.fast_batch_store = cas.Store.open(folder / "cas-batch-fast", durable=False)
        self.cache = diskcache.Cache(str(folder / "diskcache"))
        # As durable as cas's catalog: every commit fsyncs the WAL.
        self.durable_cache = diskcache.Cache(str(folder / "diskcache-full"), sqlite_synchronous=2)

    def put(self, contender: str) -> float:
        """Store every blob under its name; return operations per second."""
        count = len(self.names)
        if contender in ("cas", "cas durable=false"):
            put = (self.store if contender == "cas" else self.fast_store).put
            return _rate(count, lambda: [put(b, name=n) for n, b in self._pairs()])
        if contender in ("cas put_many", "cas put_many durable=false"):
            batch = self.batch_store if contender == "cas put_many" else self.fast_batch_store
            return _rate(count, lambda: batch.put_many(dict(self._pairs())))
        if contender == "plain files":
            return _rate(count, lambda: _write_files(self.folder / "files", self.blobs))
        cache = self.cache if contender == "diskcache" else self.durable_cache
        cache_set = cache.set
        return _rate(count, lambda: [cache_set(n, b) for n, b in self._pairs()])

    def look_up(self, contender: str) -> tuple[float, float, float]:
        """Look every name up in shuffled order, once, then ``LOOKUP_PASSES`` times more, then
        once while another process writes to the same store; return the rates of the first
        pass, of the others (their median) and of the busy one, in operations per second.

        In the first pass nothing is remembered yet (cas reads each name's row afresh, as after
        any commit) and this VM may have evicted the store's pages and inodes from its caches
        while the other contenders wrote; the later passes look up what was just read.
        """
        look, folder = {
            "cas": (self.store.path, self.store.root),
            "diskcache": (self.cache.get, Path(self.cache.directory)),
        }[contender]

        def one_pass() -> float:
            return _rate(len(self.names), lambda: [look(n) for n in self.lookups])

        first = one_pass()
        again = median([one_pass() for _ in range(LOOKUP_PASSES)])
        with _busy_writer(contender, folder):
            busy = one_pass()
        return first, again, busy

    def check(self) -> None:
        """Every store gives back the right bytes (untimed)."""
        name, blob = self.names[-1], self.blobs[-1]
        found = [
            self.store.path(name).read_bytes(),
            self.batch_store.path(name).read_bytes(),
            self.cache.get(name),
            self.durable_cache.get(name),
        ]
        if any(content != blob for content in found):
            raise AssertionError(f"a look-up of {name!r} returned the wrong content")

    def close(self) -> None:
        self.store.close()
        self.fast_store.close()
        self.batch_store.close()
        self.fast_batch_store.close()
        self.cache.close()
        self.durable_cache.close()

    def _pairs(self) -> Iterable[tuple[str, bytes]]:
        return zip(self.names, self.blobs, strict=True)


#: How the busy writer commits one small write with the library's own API, at the durability
#: of diskcache's defaults (no fsync), between pauses of ``BUSY_PAUSE`` seconds.
_BUSY_WRITES = {
    "cas": (
        "import cas\n"
        "store = cas.Store.open(FOLDER, durable=False)\n"
        "digest = store.put(b'busy')\n"
        "write = lambda i: store.tag('busy', digest)\n"
    ),
    "diskcache": (
        "import diskcache\n"
        "cache = diskcache.Cache(FOLDER)\n"
        "write = lambda i: cache.set('busy', i)\n"
    ),
}
BUSY_PAUSE = 0.0002


@contextlib.contextmanager
def _busy_writer(contender: str, folder: Path) -> Iterator[None]:
    """Another process committing small writes meanwhile, pausing ``BUSY_PAUSE`` s after each."""
    script = (
        _BUSY_WRITES[contender].replace("FOLDER", repr(str(folder)))
        + "import time\nwrite(0)\nprint('ready', flush=True)\ni = 1"
        + f"\nwhile True:\n    write(i)\n    i += 1\n    time.sleep({BUSY_PAUSE})\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        if writer.stdout is None or writer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the busy writer of {contender} did not start")
        yield
    finally:
        writer.kill()
        writer.wait()


def _write_files(folder: Path, blobs: list[bytes]) -> None:
    """Create, write and rename one file per blob, without fsync: the filesystem's floor."""
    staging, final = folder / "tmp", folder / "blobs"
    staging.mkdir(parents=True)
    final.mkdir()
    for index, blob in enumerate(blobs):
        name = f"{index:05d}"
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        os.rename(staging / name, final / name)


def run(ctx: Context) -> SuiteResult:
    """Interleave puts, then look-ups, round by round; then profile cas's side."""
    count = QUICK_COUNT if ctx.quick else COUNT
    rounds = ctx.rounds_or(ROUNDS)
    names = [f"bench/blob-{index:05d}.bin" for index in range(count)]
    blobs = [os.urandom(BLOB_SIZE) for _ in names]
    # Folders are never deleted between rounds: creating files right after deleting thousands
    # is slow on ext4, so every round has a folder of its own and all go at the end.
    remove_path(ctx.scratch)
    ctx.scratch.mkdir(parents=True)
    os.sync()
    time.sleep(1)

    warm = max(100, count // 10)
    ctx.log(f"small: warm-up with {WARM_FILES:,} files and {warm} blobs per contender, then "
            f"{rounds} rounds of {count}")
    # Creating the first ten thousand files or so after a quiet spell runs up to 10x slower on
    # this VM (the kernel's memory for inodes and pages is handed back to the host when idle);
    # these files, kept to the end, take that cost out of the timed rounds.
    _write_files(ctx.scratch / "warm-files", blobs[:1] * (WARM_FILES if not ctx.quick else 1000))
    warmup = _Round(ctx.scratch / "warm-up", names[:warm], blobs[:warm])
    for contender in PUTTERS:
        warmup.put(contender)
    for contender in READERS:
        warmup.look_up(contender)
    warmup.close()

    puts: dict[str, list[float]] = {contender: [] for contender in PUTTERS}
    gets: dict[str, list[float]] = {contender: [] for contender in READERS}
    first_gets: dict[str, list[float]] = {contender: [] for contender in READERS}
    busy_gets: dict[str, list[float]] = {contender: [] for contender in READERS}
    for index in range(rounds):
        trial = _Round(ctx.scratch / f"round-{index}", names, blobs)
        for contender in round_order(PUTTERS, index):
            puts[contender].append(trial.put(contender))
        for contender in round_order(READERS, index + 1):
            first, again, busy = trial.look_up(contender)
            first_gets[contender].append(first)
            gets[contender].append(again)
            busy_gets[contender].append(busy)
        trial.check()
        trial.close()
        ctx.log(
            f"  round {index + 1}/{rounds}: puts "
            + ", ".join(f"{name} {puts[name][-1]:,.0f}/s" for name in PUTTERS)
            + "; look-ups "
            + ", ".join(f"{name} {first_gets[name][-1]:,.0f}/s then {gets[name][-1]:,.0f}/s,"
                        f" busy {busy_gets[name][-1]:,.0f}/s" for name in READERS)
        )

    profile_count = min(count, PROFILE_COUNT)
    ctx.log(f"small: profiling {profile_count} cas puts and look-ups")
    details = _profile(ctx.scratch / "profile", names[:profile_count], blobs[:profile_count])
    remove_path(ctx.scratch)

    def put_row(contender: str, peer: str, label: str, target: Target | None = None,
                note: str = "") -> Row:
        how = {
            "cas": "",
            "cas durable=false": ", durable=false",
            "cas put_many": ", put_many",
            "cas put_many durable=false": ", put_many, durable=false",
        }[contender]
        return Row(
            f"put of {count:,} named {BLOB_SIZE // 1024} KiB blobs{how}",
            "ops/s",
            median(puts[contender]),
            label,
            median(puts[peer]),
            target,
            note=note,
            cas_samples=tuple(puts[contender]),
            peer_samples=tuple(puts[peer]),
        )

    def get_row(rates: dict[str, list[float]], what: str, target: Target | None = None,
                note: str = "") -> Row:
        return Row(f"look-up of {count:,} names (Store.path){what}", "ops/s",
                   median(rates["cas"]), "diskcache Cache.get", median(rates["diskcache"]),
                   target, note=note, cas_samples=tuple(rates["cas"]),
                   peer_samples=tuple(rates["diskcache"]))

    rows = [
        put_row("cas durable=false", "diskcache", "diskcache Cache.set", Target(">=", 0.5),
                note="one put per call at diskcache's durability: no fsync, the catalog at "
                "synchronous=NORMAL"),
        put_row("cas put_many", "diskcache", "diskcache Cache.set", Target(">=", 0.5),
                note="cas at its default durability, the puts as one put_many call: per 1,000 "
                "blobs a transaction, a syncfs and an fsync per shard folder"),
        put_row("cas", "diskcache", "diskcache Cache.set",
                note="context: one put per call at cas's default durability, three fsyncs per "
                "new blob (file, folder, WAL); the 0.5 target cannot hold for any store that "
                "fsyncs per put here, see the next row"),
        put_row(
            "cas",
            "diskcache FULL",
            "diskcache Cache.set, synchronous=FULL",
            note="context: diskcache made durable (one fsync per set) against cas's default",
        ),
        put_row("cas put_many durable=false", "diskcache", "diskcache Cache.set",
                note="context: batches without fsyncs"),
        put_row(
            "cas durable=false",
            "plain files",
            "create + write + rename of plain files",
            note="context: one 4 KiB file per blob, no fsync, no catalog: the floor of "
            "one-file-per-blob storage on this filesystem",
        ),
        get_row(gets, "", Target(">=", 1.0),
                note=f"the median of {LOOKUP_PASSES} passes after the first"),
        get_row(busy_gets, ", another process writing",
                note="context: one pass while another process commits a small write to the "
                f"same store, pausing {BUSY_PAUSE * 1e3:.1f} ms after each, through the "
                "library's API without fsync (cas: a tag; diskcache: a set); each commit makes "
                "the reader's SQLite page cache start over, and cas's remembered rows too"),
        get_row(first_gets, ", first pass",
                note="context: the first pass over the names, with nothing remembered"),
    ]
    notes = [
        f"{count:,} distinct random blobs of {BLOB_SIZE:,} bytes named `bench/blob-NNNNN.bin`, "
        "given as bytes; look-ups by name in one shuffled order, the same for both.",
        "Targets compare like with like. diskcache's defaults never fsync (values under 32 "
        "KiB live inside its SQLite file; WAL with synchronous=NORMAL), so one put per call is "
        "held to the target at that durability (`durable=false`: no fsync, synchronous="
        "NORMAL), and cas's default durability is held to it in put_many, the call made for "
        "many puts. By default cas fsyncs each new blob's file, its folder and the catalog's "
        "WAL (synchronous=FULL); put_many syncs the filesystem once per batch of 1,000 "
        "(syncfs), fsyncs each shard folder it renamed into, and commits once. One fsync "
        "costs about 200 µs on this VM, so even diskcache with one fsync per set "
        "(synchronous=FULL, a context row) runs at about a third of its default.",
        "Each round opens new stores. Look-ups go through the stores filled by one put per "
        "call at each library's default.",
        "The order of contenders is reversed every round, after an untimed warm-up of a tenth "
        "of the count; folders are not deleted between rounds (file creation is slow right "
        "after mass deletion), only at the end.",
    ]
    return SuiteResult(rows, notes, details)


# -- where cas's time goes -----------------------------------------------------------------------

_GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("os.fsync", lambda file, func: "fsync" in func),
    ("sqlite3 (C calls, COMMIT included)", lambda file, func: "sqlite3." in func),
    ("other system calls (os.*)", lambda file, func: "posix." in func or "built-in method" in func),
    ("SQLAlchemy (Python)", lambda file, func: "/sqlalchemy/" in file),
    ("cas (Python)", lambda file, func: f"{os.sep}cas{os.sep}" in file),
]


def _group(file: str, func: str) -> str:
    for label, matches in _GROUPS:
        if matches(file, func):
            return label
    return "other Python"


def _profile(folder: Path, names: list[str], blobs: list[bytes]) -> str:
    """cProfile of cas's puts and look-ups, summed by layer, plus the top functions."""
    sections = ["### Where cas's time goes (cProfile)", ""]
    sections.append(
        f"{len(names):,} puts and {len(names):,} look-ups in a new store, under cProfile (which "
        "inflates Python-heavy code, so read shares, not absolute times)."
    )
    with cas.Store.open(folder) as store:
        for title, work in (
            ("put", lambda: [store.put(b, name=n) for n, b in zip(names, blobs, strict=True)]),
            ("path", lambda: [store.path(n) for n in names]),
        ):
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.runcall(work)
            wall = time.perf_counter() - start
            sections += ["", *_profile_tables(title, pstats.Stats(profiler), wall, len(names))]
    return "\n".join(sections)


def _profile_tables(title: str, stats: pstats.Stats, wall: float, count: int) -> list[str]:
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    by_group: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in entries.items():
        label = _group(file, func)
        by_group[label] = by_group.get(label, 0.0) + tottime
    lines = [
        f"`{title}`: {wall / count * 1e6:,.0f} µs per call under the profiler.",
        "",
        "| layer | share of time |",
        "| --- | ---: |",
    ]
    for label, seconds in sorted(by_group.items(), key=lambda item: -item[1]):
        lines.append(f"| {label} | {seconds / total:.0%} |")
    lines += ["", "| function (own time) | calls | share |", "| --- | ---: | ---: |"]
    top = sorted(entries.items(), key=lambda item: -item[1][2])[:8]
    for (file, line, func), (_cc, calls, tottime, _ct, _callers) in top:
        where = func if file == "~" else f"{_short(file)}:{line} {func}"
        lines.append(f"| `{where}` | {calls:,} | {tottime / total:.0%} |")
    return lines


def _short(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    if "/cas/" in file:
        return "cas/" + file.rsplit("/cas/", 1)[1]
    return os.path.basename(file)
