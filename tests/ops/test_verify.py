"""Verification (cas/ops/verify.py): what ``Store.verify`` and ``cas verify`` find, fix and report,
quick and full, within a budget, and repair from recorded sources. Damage is made for real on
disk, from outside, as a person or another program would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cas
from cas.storage.layout import LOCKS, Layout, put_name, shard_of
from cas.storage.processes import staging_tag

from tests.conftest import run_cas
from tests.httpserver import Server


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def digest_of(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def blob_path(root: Path, digest: str) -> Path:
    return Layout(root).blob(digest)


def edit_in_place(path: Path, offset: int = 0) -> None:
    """Flip one byte of a read-only file, as someone with a text editor would."""
    path.chmod(0o644)
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(0o444)


def catalog_rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(Layout(root).catalog)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def kinds(report: cas.ops.verify.VerifyReport) -> dict[str, int]:
    return {kind: count for kind, count in report.counts.items() if count}


def test_clean_store_finds_nothing_and_records_verification(store: cas.Store, root: Path) -> None:
    """A full verify of a sound store finds nothing and records each blob's verification."""
    digests = [store.put(os.urandom(1000 + i)) for i in range(5)]
    report = store.verify()
    assert kinds(report) == {}
    assert not report.damaged
    assert (report.checked, report.hashed) == (5, 5)
    rows = dict(catalog_rows(root, "SELECT digest, signature FROM blobs WHERE verified > 0"))
    assert set(rows) == set(digests)
    info = os.lstat(blob_path(root, digests[0]))
    assert rows[digests[0]] == f"{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def test_full_verify_reports_progress_in_bytes(store: cas.Store) -> None:
    """The progress callback is told bytes hashed, ending at the total."""
    for size in (10, 70_000, 200_000):
        store.put(os.urandom(size))
    seen: list[tuple[int, int | None]] = []
    store.verify(progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (270_010, 270_010)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_quick_finds_missing_and_wrong_size_without_hashing(store: cas.Store, root: Path) -> None:
    """Quick mode finds a deleted blob and a truncated one by stat alone."""
    gone = store.put(b"deleted from outside", name="gone")
    short = store.put(b"truncated from outside", name="short")
    kept = store.put(b"kept")
    os.unlink(blob_path(root, gone))
    path = blob_path(root, short)
    path.chmod(0o644)
    os.truncate(path, 3)
    report = store.verify(full=False)
    assert report.hashed == 0
    assert kinds(report) == {"missing": 1, "corrupt": 1, "mode": 1}
    assert report.damaged
    assert {f.subject for f in report.remaining} == {gone, short}
    assert store.read_bytes(kept) == b"kept"


def test_quick_rehashes_only_files_changed_since_verified(store: cas.Store, root: Path) -> None:
    """After a full verify, quick mode rehashes exactly the file edited since (same size)."""
    digests = [store.put(os.urandom(5000)) for _ in range(4)]
    store.verify()
    time.sleep(0.01)  # a new mtime even on coarse clocks
    edit_in_place(blob_path(root, digests[2]), 100)
    report = store.verify(full=False)
    assert report.hashed == 1
    assert [f.subject for f in report.findings if f.kind == "corrupt"] == [digests[2]]


def test_orphan_file_is_adopted_and_a_wrong_one_quarantined(store: cas.Store, root: Path) -> None:
    """A right file without a row is adopted; a wrong one goes to quarantine/, not deleted."""
    store.put(b"something")
    right = os.urandom(3000)
    blob_path(root, digest_of(right)).parent.mkdir(exist_ok=True)
    blob_path(root, digest_of(right)).write_bytes(right)
    wrong_name = digest_of(b"what the name says")
    blob_path(root, wrong_name).parent.mkdir(exist_ok=True)
    blob_path(root, wrong_name).write_bytes(b"other bytes")
    report = store.verify()
    assert kinds(report) == {"orphan": 1, "stray": 1, "mode": 2}
    assert not report.damaged
    assert store.read_bytes(digest_of(right)) == right
    assert not blob_path(root, wrong_name).exists()
    assert [p.read_bytes() for p in Layout(root).quarantine.iterdir()] == [b"other bytes"]
    assert oct(Layout(root).quarantine.stat().st_mode & 0o777) == "0o700"


def test_strays_under_blobs_are_quarantined(store: cas.Store, root: Path) -> None:
    """Anything under blobs/ that is not a blob file in its shard is moved aside."""
    digest = store.put(b"x")
    (Layout(root).blobs / "notes.txt").write_text("a person's note")
    (Layout(root).blobs / "ZZ").mkdir()
    misplaced = digest_of(b"misplaced")
    (Layout(root).shard(digest) / "not-a-digest").write_bytes(b"junk")
    shard = "00" if shard_of(misplaced) != "00" else "01"
    (Layout(root).blobs / shard).mkdir(exist_ok=True)
    (Layout(root).blobs / shard / misplaced).write_bytes(b"misplaced")
    report = store.verify()
    assert kinds(report) == {"stray": 4}
    assert len(list(Layout(root).quarantine.iterdir())) == 4
    assert store.read_bytes(digest) == b"x"


def test_wrong_modes_are_fixed(store: cas.Store, root: Path) -> None:
    """A blob file made writable or unreadable is made 0444 again."""
    a = store.put(b"a")
    b = store.put(b"b")
    blob_path(root, a).chmod(0o666)
    blob_path(root, b).chmod(0o400)
    report = store.verify(full=False)
    assert kinds(report) == {"mode": 2}
    assert {blob_path(root, d).stat().st_mode & 0o777 for d in (a, b)} == {0o444}


def test_debris_of_dead_writers_goes_and_live_writers_stay(store: cas.Store, root: Path) -> None:
    """Staging files of a killed process go at once; this live process's stay."""
    dead_tag = subprocess.run(
        [sys.executable, "-c",
         "from cas.storage.processes import staging_tag; print(staging_tag())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Layout(root).tmp / put_name(dead_tag, "abc123")).write_bytes(b"half a put")
    live = Layout(root).tmp / put_name(staging_tag(), "def456")
    live.write_bytes(b"a put in progress")
    report = store.verify()
    assert kinds(report) == {"debris": 1}
    assert sorted(p.name for p in Layout(root).tmp.iterdir()) == sorted([LOCKS, live.name])


def test_dead_leases_are_reclaimed(root: Path) -> None:
    """A lease whose holder was SIGKILLed is removed by verify."""
    with cas.Store.open(root) as store:
        digest = store.put(b"leased by a process that dies")
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, cas\n"
         "store = cas.Store.open(sys.argv[1])\n"
         "store.lease(sys.argv[2])\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n", str(root), digest],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with cas.Store.open(root) as store:
        report = store.verify()
        assert kinds(report) == {"lease": 1}
        assert catalog_rows(root, "SELECT count(*) FROM leases") == [(0,)]
        store.remove(digest)  # no longer refused as in use


def test_budget_checks_least_recently_verified_first(store: cas.Store, root: Path) -> None:
    """With a budget, each run hashes the never or least recently verified blobs first and the
    next run continues where it stopped; every run makes progress, however small its budget."""
    for _ in range(30):
        store.put(os.urandom(1 << 20))
    runs = 0
    while True:
        before = dict(catalog_rows(root, "SELECT digest, verified FROM blobs"))
        order = sorted(before, key=lambda d: (before[d] or -1.0, d))
        report = store.verify(budget=0.001)
        after = dict(catalog_rows(root, "SELECT digest, verified FROM blobs"))
        runs += 1
        hashed = {digest for digest in after if after[digest] != before[digest]}
        assert report.hashed >= 1
        assert hashed == set(order[: report.hashed])
        assert report.pending == 30 - report.hashed
        if all(after.values()):
            break
    assert runs >= 2


def test_budget_must_be_positive(store: cas.Store) -> None:
    """A budget that is not a positive number of seconds is a UsageError."""
    for bad in (0, -1, float("nan"), "10m", True):
        with pytest.raises(cas.UsageError, match="budget"):
            store.verify(budget=bad)  # type: ignore[arg-type]


def test_repair_fetches_a_damaged_fixture_again(root: Path, server: Server) -> None:
    """A named fixture deleted or edited from outside is fetched again from its source by a
    later `verify --repair`; until then damage remains (exit status 4)."""
    body = os.urandom(50_000)
    url = server.add("/fixture.bin", body)
    with cas.Store.open(root) as store:
        digest = store.fetch(url, name="data/fixture.bin")
    edit_in_place(blob_path(root, digest), 7)
    found = run_cas("verify", root=root)
    assert found.returncode == 4
    assert "data/fixture.bin" in found.stdout.decode()
    assert found.stderr.decode().startswith("cas: error: damage remains")
    again = run_cas("verify", root=root)  # still not repaired: still damage
    assert again.returncode == 4
    assert "--repair" in again.stdout.decode()
    repaired = run_cas("verify", "--repair", "--json", root=root)
    assert repaired.returncode == 0, repaired.stderr
    document = json.loads(repaired.stdout)
    assert document["damaged"] is False
    assert [f["kind"] for f in document["findings"]] == ["damaged"]
    assert "fetched again" in document["findings"][0]["action"]
    with cas.Store.open(root) as store:
        assert store.read_bytes("data/fixture.bin") == body
        assert kinds(store.verify()) == {}


def test_repair_reports_a_source_that_fails(root: Path, server: Server) -> None:
    """When the source is gone, --repair says so and the damage remains."""
    url = server.add("/vanishing.bin", os.urandom(4000))
    with cas.Store.open(root, retries=0) as store:
        digest = store.fetch(url, name="vanishing")
        os.unlink(blob_path(root, digest))
        server.update("/vanishing.bin", body=b"different now")
        report = store.verify(repair=True)
    assert report.damaged
    (finding,) = report.remaining
    assert finding.kind == "missing" and "failed" in finding.action


def test_put_again_restores_a_lost_blob(store: cas.Store, root: Path) -> None:
    """A lost blob without a source stays reported until the same content is put again."""
    data = b"only copy"
    digest = store.put(data, name="precious")
    os.unlink(blob_path(root, digest))
    assert store.verify().damaged
    assert store.verify().damaged
    with pytest.raises(cas.NotFound, match="precious"):
        store.path("precious")
    store.put(data)
    assert kinds(store.verify()) == {}
    assert store.read_bytes("precious") == data


def test_catalog_rebuilt_from_blobs_after_moving_it_aside(root: Path) -> None:
    """The documented way out of a damaged catalog: move it aside, verify adopts every blob."""
    with cas.Store.open(root) as store:
        digests = [store.put(os.urandom(2000)) for _ in range(6)]
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{Layout(root).catalog}{suffix}").exists():
            os.rename(f"{Layout(root).catalog}{suffix}", f"{root / 'aside.db'}{suffix}")
    with cas.Store.open(root) as store:
        report = store.verify()
        assert kinds(report) == {"orphan": 6}
        assert all(store.read_bytes(d) for d in digests)


def test_verification_failures_are_counted(store: cas.Store, root: Path) -> None:
    """Blobs found missing or damaged add to the verification_failures counter."""
    a = store.put(b"a" * 100)
    b = store.put(b"b" * 100)
    os.unlink(blob_path(root, a))
    edit_in_place(blob_path(root, b))
    store.verify()
    assert store.stats().counters[cas.Counter.VERIFICATION_FAILURES] == 2


def test_cli_verify_clean_store_json_and_quiet_stderr(root: Path) -> None:
    """`cas verify --json` of a sound store: exit 0, one JSON document, nothing on stderr (no
    progress bar off a terminal)."""
    with cas.Store.open(root) as store:
        store.put(os.urandom(100_000))
    done = run_cas("verify", "--json", root=root)
    assert done.returncode == 0
    assert done.stderr == b""
    document = json.loads(done.stdout)
    assert document["hashed"] == 1 and document["damaged"] is False
    quick = run_cas("verify", "--quick", root=root)
    assert quick.returncode == 0 and quick.stdout.decode().startswith("quick verify: 1 blobs")


def test_cli_verify_budget_and_bad_budget(root: Path) -> None:
    """`--budget 10m` is accepted; a bad duration is a usage error (exit 2)."""
    with cas.Store.open(root) as store:
        store.put(b"x")
    assert run_cas("verify", "--budget", "10m", root=root).returncode == 0
    bad = run_cas("verify", "--budget", "soon", root=root)
    assert bad.returncode == 2 and bad.stderr.decode().startswith("cas: error: --budget")


def test_verify_hashes_on_every_core() -> None:
    """Hashing threads: one more than the usable cores (so both cores of the CI machine stay
    busy while a thread waits in open or mmap), at most 8."""
    from cas.ops.verify import workers

    assert workers() == min(8, len(os.sched_getaffinity(0)) + 1) >= 2


@pytest.mark.parametrize("proc", [True, False])
def test_hashing_with_and_without_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       proc: bool) -> None:
    """Files are hashed right through /proc/self/fd and, where /proc is missing, through
    Python's mmap or reads."""
    import cas.storage.hashing

    monkeypatch.setattr(cas.storage.hashing, "_PROC_FD", proc)
    for size in (0, 1, 1000, 65536, 300_000):
        data = os.urandom(size)
        (tmp_path / "f").write_bytes(data)
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            assert cas.storage.hashing.hash_fd(fd, size) == digest_of(data)
        finally:
            os.close(fd)
