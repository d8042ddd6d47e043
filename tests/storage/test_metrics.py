"""Metrics (SPEC "Metrics"): counters in the catalog, stats, Prometheus output, health checks."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cas
from cas.storage.catalog import Catalog
from cas.storage.counters import Counter
from cas.storage.layout import PUT_PREFIX, Layout
from cas.storage.metrics import DEBRIS_MAX_FILES, Stats

from tests.conftest import run_cas

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test, and the processes it starts, without the caller's CAS_* variables."""
    for variable in list(os.environ):
        if variable.startswith("CAS_"):
            monkeypatch.delenv(variable)


def catalog_of(root: Path) -> Catalog:
    """The catalog of an existing store, opened the way the store opens it."""
    return Catalog(Layout(root).catalog, Layout(root).setup_lock)


def add(root: Path, counts: dict[Counter, int]) -> None:
    """Add to counters through the public counting API, as download or gc code does."""
    catalog = catalog_of(root)
    for counter, amount in counts.items():
        catalog.count(counter, amount)
    catalog.close()


def data_version(watcher: sqlite3.Connection) -> int:
    """SQLite's count of commits made by other connections, as this one sees it."""
    return int(watcher.execute("PRAGMA data_version").fetchone()[0])


# -- counting --------------------------------------------------------------------------------------


def test_hits_and_misses(store: cas.Store, root: Path) -> None:
    """A served ref is a hit; an unknown name or digest, or a blob whose file is gone, a miss."""
    digest = store.put(b"kept", name="kept")
    gone = store.put(b"gone", name="gone")
    store.path("kept")
    store.read_bytes(digest)
    with open(store.path(digest), "rb"):
        pass
    for ref in ("unknown", "f" * 64):
        with pytest.raises(cas.NotFound):
            store.path(ref)
    os.unlink(store.path(gone))  # damage from outside: the row stays, the file goes
    with pytest.raises(cas.IntegrityError):
        store.path("gone")
    counters = store.stats().counters
    assert (counters[Counter.HITS], counters[Counter.MISSES]) == (4, 3)


def test_dedup_saves_the_bytes_already_stored(store: cas.Store, tmp_path: Path) -> None:
    """Putting stored content again, as bytes, file or stream, counts its size as saved."""
    data = b"fixture " * 1000
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    store.put(data)
    store.put(data, name="again")
    store.put(source)
    with open(source, "rb") as stream:
        store.put(stream)
    store.put(b"other content")
    assert store.stats().counters[Counter.DEDUP_SAVED_BYTES] == 3 * len(data)


def test_refetched_fixture_is_one_miss(root: Path) -> None:
    """Reading an evicted fixture that comes back from its source is one miss and no hit."""
    from tests.httpserver import Server

    body = b"payload " * 100
    with Server() as server, cas.Store.open(root, grace_period=0) as store:
        store.fetch(server.add("/f.bin", body), name="f")
        store.gc(max_size=0)
        assert store.read_bytes("f") == body
        counters = store.stats().counters
    assert (counters[Counter.HITS], counters[Counter.MISSES]) == (0, 1)
    assert counters[Counter.DOWNLOADS_SUCCEEDED] == 2
    assert counters[Counter.DOWNLOADED_BYTES] == 2 * len(body)


def test_reads_write_nothing_until_close(root: Path) -> None:
    """Counting reads commits nothing to the catalog until the store closes (guarantee 6)."""
    with cas.Store.open(root) as store:
        digest = store.put(b"x" * 100, name="x")
    store = cas.Store.open(root)
    watcher = sqlite3.connect(Layout(root).catalog)
    try:
        before = data_version(watcher)
        for _ in range(50):
            store.path("x")
            store.read_bytes(digest)
        for _ in range(5):
            with pytest.raises(cas.NotFound):
                store.path("nothing")
        assert data_version(watcher) == before
        store.close()
        assert data_version(watcher) != before
    finally:
        watcher.close()
    with cas.Store.open(root) as store:
        counters = store.stats().counters
    assert (counters[Counter.HITS], counters[Counter.MISSES]) == (100, 5)


def test_counts_ride_along_the_next_write(root: Path) -> None:
    """Waiting counts are committed with the next write transaction, not in one of their own."""
    with cas.Store.open(root) as store:
        store.put(b"x", name="x")
        store.path("x")
        watcher = sqlite3.connect(Layout(root).catalog)
        try:
            store.put(b"y")  # one write transaction: carries the hit
            row = watcher.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone()
            assert row == (1,)
        finally:
            watcher.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_write_its_parents_counts(root: Path) -> None:
    """Counts waiting in the parent at a fork are the parent's: a child that writes and then
    exits at once (as multiprocessing's fork workers do) does not count them a second time."""
    with cas.Store.open(root) as store:
        store.put(b"content", name="n")
        for _ in range(5):
            store.path("n")
        pid = os.fork()
        if pid == 0:  # the child: one write of its own, then an exit without cleanup
            status = 0
            try:
                store.put(b"the child's")
            except BaseException:
                status = 1
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    with cas.Store.open(root) as store:
        assert store.stats().counters[Counter.HITS] == 5


def test_counts_are_written_at_exit_without_close(root: Path) -> None:
    """A process that never closes its store still writes its counts when it exits."""
    cas.Store.open(root).close()
    script = (
        "import sys, cas\n"
        "store = cas.Store.open(sys.argv[1])\n"
        "store.put(b'content', name='n')\n"
        "for _ in range(3): store.path('n')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(root)], check=True, timeout=60)
    with cas.Store.open(root) as store:
        assert store.stats().counters[Counter.HITS] == 3


def test_unknown_counter_is_refused(root: Path) -> None:
    """Counting under a name that is not a Counter raises instead of inventing a row."""
    cas.Store.open(root).close()
    catalog = catalog_of(root)
    try:
        with pytest.raises(ValueError, match="hitz"):
            catalog.count("hitz")  # type: ignore[arg-type]
    finally:
        catalog.close()


# -- across processes -----------------------------------------------------------------------------

WORKERS = 4
LOOPS, READS, MISSES, STEPS = 20, 5, 7, 30
SHARED = b"shared fixture " * 1000
WORKER = f"""
import sys, time
from pathlib import Path
import cas
from cas.storage.catalog import Catalog
from cas.storage.layout import Layout
from cas.storage.counters import Counter
root, index, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
own = f"own content of worker {{index}} ".encode() * (index + 1)
with cas.Store.open(root) as store:
    store.put({SHARED!r}, name="shared")
    store.put(own)
    store.put(own)
    for loop in range({LOOPS}):
        store.put(f"{{index}}-{{loop}}".encode())  # a write that carries waiting counts
        for _ in range({READS}):
            store.path("shared")
    for n in range({MISSES}):
        try:
            store.path(f"missing/{{index}}/{{n}}")
        except cas.NotFound:
            pass
catalog = Catalog(Layout(root).catalog, Layout(root).setup_lock)
for step in range(1, {STEPS} + 1):
    for counter in Counter:
        catalog.count(counter, step)
    if step % 7 == 0:
        catalog.flush()
catalog.close()
"""


def test_counters_add_up_across_processes(root: Path, tmp_path: Path) -> None:
    """Four processes counting at once on one store lose and double no increment."""
    cas.Store.open(root).close()
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(index), str(go)])
        for index in range(WORKERS)
    ]
    time.sleep(0.5)
    go.touch()
    assert [worker.wait(timeout=300) for worker in workers] == [0] * WORKERS

    raw = WORKERS * STEPS * (STEPS + 1) // 2  # each worker adds 1 + 2 + ... + STEPS to each
    own = sum(len(f"own content of worker {i} ".encode() * (i + 1)) for i in range(WORKERS))
    expected = dict.fromkeys(Counter, raw)
    expected[Counter.HITS] += WORKERS * LOOPS * READS
    expected[Counter.MISSES] += WORKERS * MISSES
    expected[Counter.DEDUP_SAVED_BYTES] += (WORKERS - 1) * len(SHARED) + own
    with cas.Store.open(root) as store:
        stats = store.stats()
    assert dict(stats.counters) == expected
    assert stats.usage.blobs == 1 + WORKERS + WORKERS * LOOPS
    assert stats.usage.names == 1


# -- stats and their formats ----------------------------------------------------------------------


@pytest.fixture
def busy_root(root: Path) -> Path:
    """A store with known work: puts, hits, misses, a live and an expired lease, every counter."""
    with cas.Store.open(root) as store:
        digest = store.put(b"a" * 1000, name="a")
        store.put(b"b" * 500, name="b")
        store.put(b"a" * 1000)
        for _ in range(9):
            store.path("a")
        with pytest.raises(cas.NotFound):
            store.path("c")
    add(root, {counter: 10 + index for index, counter in enumerate(Counter)})
    now = time.time()
    with sqlite3.connect(Layout(root).catalog) as db:  # a holder on another host: never judged
        db.executemany(
            "INSERT INTO leases (digest, host, pid, started, created, expires)"
            " VALUES (?, 'elsewhere', 1, 0, ?, ?)",
            [(digest, now, now + 3600), (digest, now - 7200, now - 3600)],
        )
    db.close()
    return root


def test_stats_object(busy_root: Path) -> None:
    """``store.stats()`` reports storage use, water marks and ratios computed from the counters."""
    with cas.Store.open(busy_root, max_cache_size="10KB", low_water=0.5) as store:
        stats = store.stats()
    assert isinstance(stats, Stats)
    assert (stats.usage.bytes, stats.usage.blobs, stats.usage.names) == (1500, 2, 2)
    assert stats.usage.live_leases == 1
    assert (stats.max_cache_size, stats.low_water_bytes) == (10_000, 5_000)
    assert stats.usage_ratio == 0.15
    hits, misses = stats.counters[Counter.HITS], stats.counters[Counter.MISSES]
    assert (hits, misses) == (10 + 9, 11 + 1)
    assert stats.hit_ratio == hits / (hits + misses)
    assert stats.download_success_rate == 12 / (12 + 13)
    assert stats.counters[Counter.DEDUP_SAVED_BYTES] == 17 + 1000


def test_prometheus_reads_back_as_json(busy_root: Path) -> None:
    """``--prometheus`` parses with prometheus_client into exactly the values of ``--json``."""
    as_json = run_cas("stats", "--json", root=busy_root)
    as_text = run_cas("stats", "--prometheus", root=busy_root)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    document = json.loads(as_json.stdout)
    storage, marks = document["storage"], document["water_marks"]
    debris = document["staging_debris"]
    expected = {f"cas_{name}_total": value for name, value in document["counters"].items()}
    expected |= {
        "cas_storage_bytes": storage["bytes"],
        "cas_storage_blobs": storage["blobs"],
        "cas_names": storage["names"],
        "cas_live_leases": storage["live_leases"],
        "cas_storage_usage_ratio": storage["usage_ratio"],
        "cas_max_cache_size_bytes": marks["high"],
        "cas_low_water_bytes": marks["low"],
        "cas_hit_ratio": document["hit_ratio"],
        "cas_download_success_ratio": document["download_success_rate"],
        "cas_staging_debris_files": debris["files"],
        "cas_staging_debris_bytes": debris["bytes"],
        "cas_staging_files": document["staging"]["files"],
        "cas_staging_bytes": document["staging"]["bytes"],
        "cas_quarantine_files": document["quarantine"]["files"],
        "cas_quarantine_bytes": document["quarantine"]["bytes"],
        "cas_trees": document["trees"],
        "cas_views": document["views"]["count"],
        "cas_view_copied_bytes": document["views"]["copied_bytes"],
    }
    parsed, kinds = {}, {}
    for family in text_string_to_metric_families(as_text.stdout.decode()):
        for sample in family.samples:
            parsed[sample.name] = sample.value
            kinds[sample.name] = family.type
    assert parsed == expected
    assert {name for name, kind in kinds.items() if kind == "counter"} == {
        f"cas_{counter}_total" for counter in Counter
    }
    assert parsed["cas_hits_total"] == 19 and parsed["cas_live_leases"] == 1


def test_undefined_ratios_are_left_out(root: Path) -> None:
    """Before any read or download, the ratios are null in JSON and absent from Prometheus."""
    with cas.Store.open(root) as store:
        stats = store.stats()
    assert stats.as_dict()["hit_ratio"] is None and stats.download_success_rate is None
    names = {f.name for f in text_string_to_metric_families(stats.prometheus())}
    assert "cas_hit_ratio" not in names and "cas_download_success_ratio" not in names
    assert "cas_storage_bytes" in names


def test_stats_table(busy_root: Path) -> None:
    """``cas stats`` prints a readable table with storage use, hit ratio and success rate."""
    done = run_cas("stats", root=busy_root)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert re.search(r"^stored\s+1\.5 KiB in 2 blobs$", text, flags=re.M)
    assert re.search(r"^live leases\s+1$", text, flags=re.M)
    assert re.search(r"^hit ratio\s+61\.3%$", text, flags=re.M)  # 19 / 31
    assert re.search(r"^download success rate\s+48\.0%$", text, flags=re.M)  # 12 / 25


def test_json_and_prometheus_exclude_each_other(root: Path) -> None:
    """Asking for two formats at once is a usage error."""
    done = run_cas("stats", "--json", "--prometheus", root=root)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("cas: error:")


# -- health ---------------------------------------------------------------------------------------


def old_files(folder: Path, count: int, age: float = 2 * 86400) -> None:
    """Leave ``count`` staging files in ``folder``, last changed ``age`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.time() - age
    for index in range(count):
        path = folder / f"{PUT_PREFIX}debris-{index}"
        path.write_bytes(b"partial")
        os.utime(path, (stamp, stamp))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("none", None),
        ("over the size limit", "over its size limit"),
        ("verification failures", "2 verification failures recorded"),
        ("old staging debris", "staging debris piling up"),
        ("old files under tmp/locks", None),
        ("fresh staging files", None),
    ],
)
def test_stats_check(root: Path, damage: str, reason: str | None) -> None:
    """``cas stats --check`` exits 1 with a one-line reason exactly when the store is unhealthy."""
    with cas.Store.open(root) as store:
        store.put(b"z" * 2000)
    env = {}
    if damage == "over the size limit":
        env["CAS_MAX_CACHE_SIZE"] = "1KiB"
    elif damage == "verification failures":
        add(root, {Counter.VERIFICATION_FAILURES: 2})
    elif damage == "old staging debris":
        old_files(Layout(root).tmp, DEBRIS_MAX_FILES + 1)
    elif damage == "old files under tmp/locks":
        old_files(Layout(root).locks, DEBRIS_MAX_FILES + 1)
    elif damage == "fresh staging files":
        old_files(Layout(root).tmp / "downloads", DEBRIS_MAX_FILES + 1, age=60)
    done = run_cas("stats", "--check", root=root, env=env)
    errors = done.stderr.decode().splitlines()
    if reason is None:
        assert done.returncode == 0, errors
        assert errors == []
    else:
        assert done.returncode == 1
        assert len(errors) == 1
        assert errors[0].startswith("cas: error: store is unhealthy: ") and reason in errors[0]


# -- logging ---------------------------------------------------------------------------------------


def test_library_never_prints() -> None:
    """Only the command line writes to stdout; the library reports through the ``cas`` logger."""
    printing = re.compile(r"^\s*print\(|sys\.std(out|err)\.write", re.M)
    offenders = [
        path.name
        for path in (REPO / "cas").glob("*.py")
        if path.name != "cli.py" and printing.search(path.read_text())
    ]
    assert offenders == []
