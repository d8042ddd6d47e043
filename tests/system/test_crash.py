"""Crash safety (SPEC guarantee 5): SIGKILL at random points of put, fetch and gc, and after
each kill, a check of the store from outside.

A zygote process (tests/system/crash_child.py) forks one worker at a time that opens the store
and does random work on it, weighted towards one operation (the "focus"); the harness kills it with
SIGKILL after a random delay, reads which operation it interrupted, and checks the store with
plain sqlite3 and BLAKE3, never through cas:

- the catalog passes ``PRAGMA integrity_check``;
- every file under ``blobs/`` holds the bytes its name says (no wrong blob);
- every blob row has its file, of its size;
- every name points at a stored blob, or has a source to fetch it from (no unexplained
  dangling name), and points at the right content (names carry their digest or source);
- what remains is explained: files without rows (published but not recorded, or recorded as
  gone but not unlinked), staging debris and leases of the killed process.

Every 25 kills, and at the end, ``Store.verify`` runs and must find no damage. Kills per run:
CRASH_KILLS (default 300, split between the three focuses). Counts are printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cas
from cas.ops.verify import VerifyReport
from cas.storage.layout import DOWNLOAD_PREFIX, LOCKS, Layout

from tests.httpserver import Server
from tests.system.crash_child import RESOURCES, resource

KILLS = int(os.environ.get("CRASH_KILLS", "300"))
FOCUSES = ("put", "fetch", "gc")
REPO = Path(__file__).resolve().parents[2]
#: Kill delays, seconds after the fork: from inside Store.open to a few dozen operations in.
DELAYS = (0.0, 0.12)
VERIFY_EVERY = 25


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """Serves /r<k> (crash_child.resource), throttled so that kills land inside downloads."""
    with Server() as running:
        for k in range(RESOURCES):
            running.add(f"/r{k}", resource(k), chunk=16384, delay=0.002)
            running.add(f"/u{k}", resource(k))
        yield running


class Zygote:
    """The child process that forks workers on demand."""

    def __init__(self, root: Path, base_url: str, focus: str, log: Path) -> None:
        self.phase_file = root.parent / "phase"
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.system.crash_child", str(root), base_url, focus,
             str(self.phase_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=REPO,
        )  # fmt: skip
        assert self._read() == ["ready"]

    def _read(self) -> list[str]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the zygote died; see its log"
        return line.split()

    def kill_one(self, seed: int, delay: float) -> str:
        """Fork a worker, SIGKILL it after ``delay`` seconds; return what it was doing."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"go {seed}\n")
        self.process.stdin.flush()
        word, pid = self._read()
        assert word == "pid"
        time.sleep(delay)
        phase = self.phase_file.read_bytes().decode().strip() or "open"
        with contextlib.suppress(ProcessLookupError):  # died by itself: told apart below
            os.kill(int(pid), signal.SIGKILL)
        word, _, status = self._read()
        assert word == "exit"
        assert os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL, (
            f"the worker died before it was killed (status {status}):"
            f" {self.log_path.read_text()[-3000:]}"
        )
        return phase

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._log.close()


def check(root: Path, sources: dict[str, str]) -> Counter[str]:
    """The store as seen from outside (module docstring); returns what was found, by kind."""
    found: Counter[str] = Counter()
    files: dict[str, int] = {}
    for shard in sorted(Layout(root).blobs.iterdir()) if Layout(root).blobs.exists() else []:
        for path in shard.iterdir():
            data = path.read_bytes()
            files[path.name] = len(data)
            if blake3.blake3(data).hexdigest() != path.name:
                found["wrong blobs"] += 1
    db = sqlite3.connect(Layout(root).catalog, timeout=30)
    try:
        if db.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
            found["damaged catalogs"] += 1
            return found
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:
            found["killed while the catalog was first set up (explained)"] += 1
            return found
        rows = dict(db.execute("SELECT digest, size FROM blobs").fetchall())
        names = db.execute("SELECT name, digest, url FROM names").fetchall()
        leases = db.execute("SELECT count(*) FROM leases").fetchone()[0]
    finally:
        db.close()
    found["rows without files"] += sum(1 for d, size in rows.items() if files.get(d) != size)
    found["files without rows (explained)"] += sum(1 for d in files if d not in rows)
    for name, digest, url in names:
        if digest not in rows and url is None:
            found["unexplained dangling names"] += 1
        elif digest != sources.get(name, digest) or (
                name.startswith("p/") and not digest.startswith(name.split("/")[1])):
            found["names at wrong content"] += 1
        elif digest not in rows:
            found["evicted named fixtures (explained)"] += 1
    found["leases left (explained)"] += leases
    found["staging debris (explained)"] += sum(
        1 for entry in Layout(root).tmp.iterdir() if entry.name != LOCKS
    )
    return found


DAMAGE = ("damaged catalogs", "wrong blobs", "rows without files", "unexplained dangling names",
          "names at wrong content")


def verify_clean(root: Path) -> VerifyReport:
    """A full verify through cas: it may tidy up what a kill left, but finds no damage."""
    with cas.Store.open(root, max_cache_size=384 * 1024, grace_period=0) as store:
        report = store.verify()
    bad = [f for f in report.findings if f.kind in ("missing", "corrupt", "stray", "damaged",
                                                    "dangling", "catalog")]
    assert not bad, bad
    return report


@pytest.mark.slow
@pytest.mark.parametrize("focus", FOCUSES)
def test_sigkill_at_random_points_leaves_a_consistent_store(
    tmp_path: Path, server: Server, focus: str
) -> None:
    """Hundreds of SIGKILLs during put, fetch and gc leave no damaged catalog, no wrong blob,
    no row without its file and no unexplained dangling name."""
    kills = max(1, KILLS // len(FOCUSES))
    root = tmp_path / "store"
    sources = {f"f/{k}": blake3.blake3(resource(k)).hexdigest() for k in range(RESOURCES)}
    rng = random.Random(f"crash-{focus}")
    zygote = Zygote(root, server.base_url, focus, tmp_path / "zygote.log")
    phases: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    tidied: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for kill in range(kills):
            phases[zygote.kill_one(rng.randrange(2**32), rng.uniform(*DELAYS))] += 1
            if not Layout(root).catalog.exists():
                continue  # killed before the catalog was created
            found = check(root, sources)
            totals.update(found)
            assert not any(found[kind] for kind in DAMAGE), (kill, dict(found))
            if (kill + 1) % VERIFY_EVERY == 0:
                tidied.update(verify_clean(root).counts)
    finally:
        zygote.close()
    report = verify_clean(root)
    tidied.update(report.counts)
    after = check(root, sources)
    assert not any(after[kind] for kind in DAMAGE), dict(after)
    assert after["staging debris (explained)"] == 0 or all(
        entry.name.startswith(DOWNLOAD_PREFIX)
        for entry in Layout(root).tmp.iterdir() if entry.name != LOCKS
    ), "only resumable partial downloads may stay after verify"
    print(
        f"\ncrash harness, focus {focus}: {kills} kills in {time.monotonic() - started:.1f}s;"
        f" interrupted: {dict(sorted(phases.items()))};"
        f" damage: {({kind: totals[kind] for kind in DAMAGE})};"
        f" explained leftovers over all checks: "
        f"{ {k: v for k, v in totals.items() if k not in DAMAGE} };"
        f" verify tidied: { {k: v for k, v in tidied.items() if v} }"
    )
    # Proof that the kills hit the operation under test; loose, since load shifts the timing.
    assert phases[focus] >= kills // 10, f"too few kills landed in {focus}: {dict(phases)}"
