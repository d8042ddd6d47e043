"""How `cas sync` schedules a manifest: many fixtures in flight at once (never more than
``jobs``), the largest started first with the smallest beside them, a total bar of the bytes of
them all, and the same report and failure handling as ever. Against a real, slow HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cas
from cas.ops import manifest, schedule
from cas.ops.record import Fetched
from cas.transfer.request import Progress
from cas.values import SYNC_JOBS

from tests.conftest import run_cas
from tests.httpserver import Server, serve
from tests.transfer.test_http import _b3, fast


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _body(index: int, size: int) -> bytes:
    return bytes([index % 251]) * size


def _write_manifest(path: Path, server: Server, sizes: list[int | None], *,
                    delay: float = 0.0, chunk: int = 1024) -> Path:
    """A manifest of fixtures ``f00``, ``f01``, … of these sizes (None: no ``size`` key), each
    served at ``/fNN`` in ``chunk``-byte writes ``delay`` seconds apart."""
    lines = []
    for index, size in enumerate(sizes):
        body = _body(index, size or 3000)
        url = server.add(f"/f{index:02}", body, chunk=chunk, delay=delay)
        lines.append(f'[fixtures."f{index:02}"]\nurl = "{url}"\nblake3 = "{_b3(body)}"\n')
        if size is not None:
            lines.append(f"size = {size}\n")
    path.write_text("".join(lines))
    return path


class InFlight:
    """Samples, from a thread of its own, how many requests the server is answering at once."""

    def __init__(self, server: Server, sizes: dict[str, int]) -> None:
        self._server = server
        self._sizes = sizes
        self._done = threading.Event()
        self.most = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            now = sum(
                1 for seen in self._server.seen() if seen.sent < self._sizes.get(seen.path, 0)
            )
            self.most = max(self.most, now)

    def __enter__(self) -> InFlight:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def _slow_many(tmp_path: Path, server: Server, count: int) -> tuple[Path, dict[str, int]]:
    """``count`` small fixtures, each taking about 1.2 s to serve."""
    path = _write_manifest(tmp_path / "many.toml", server, [4096] * count, delay=0.3)
    return path, {f"/f{index:02}": 4096 for index in range(count)}


# -- concurrency ------------------------------------------------------------------------------


def test_sync_runs_the_default_jobs_at_once(root: Path, server: Server, tmp_path: Path) -> None:
    """Store.sync of many small fixtures from a slow server has SYNC_JOBS requests in flight at
    once (the server sees them), never more, and stores every fixture."""
    path, sizes = _slow_many(tmp_path, server, 2 * SYNC_JOBS)
    with cas.Store.open(root, downloader=fast(root)) as store, InFlight(server, sizes) as seen:
        digests = store.sync(path)
    assert seen.most == SYNC_JOBS
    assert sorted(digests) == [f"f{index:02}" for index in range(2 * SYNC_JOBS)]
    assert all(server.requests(p) == 1 for p in sizes)


def test_cli_sync_jobs_bounds_the_requests_in_flight(root: Path, server: Server,
                                                     tmp_path: Path) -> None:
    """`cas sync --jobs 5` has exactly five requests in flight at its busiest."""
    path, sizes = _slow_many(tmp_path, server, 12)
    with InFlight(server, sizes) as seen:
        result = run_cas("sync", str(path), "--jobs", "5", root=root)
    assert result.returncode == 0, result.stderr
    assert seen.most == 5
    assert "12 fetched, 0 already present, 0 failed" in result.stderr.decode()


def test_cli_sync_help_shows_the_default_jobs(root: Path) -> None:
    result = run_cas("sync", "--help", root=root)
    assert f"[default: {SYNC_JOBS};" in result.stdout.decode()


# -- order ------------------------------------------------------------------------------------


@given(st.lists(st.one_of(st.none(), st.integers(0, 100)), max_size=30))
def test_order_is_largest_first_with_unknown_sizes_ahead(sizes: list[int | None]) -> None:
    """``order`` is a permutation: unknown sizes first in their order, then sizes descending,
    ties in their given order."""
    items = list(enumerate(sizes))
    ordered = schedule.order(items, lambda item: item[1])
    assert sorted(ordered) == sorted(items)
    unknown = [item for item in ordered if item[1] is None]
    assert ordered[: len(unknown)] == [item for item in items if item[1] is None]
    known = ordered[len(unknown) :]
    assert known == sorted(known, key=lambda item: (-(item[1] or 0), item[0]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=25), st.integers(1, 9))
def test_run_yields_every_outcome_once_with_at_most_jobs_at_once(sizes: list[int],
                                                                  jobs: int) -> None:
    """``schedule.run`` hands back each item once with its result, or the exception its work
    raised (multiples of 7 raise here), and never runs more than ``jobs`` at once."""
    lock = threading.Lock()
    running = most = 0

    def work(item: tuple[int, int]) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.001)
        with lock:
            running -= 1
        if item[1] % 7 == 0:
            raise ValueError(item)
        return item[1] * 2

    items = list(enumerate(sizes))
    ordered = schedule.order(items, lambda item: item[1])
    outcomes = dict(schedule.run(ordered, work, jobs=jobs, stop=threading.Event()))
    assert sorted(outcomes) == sorted(items)
    for (index, size), outcome in outcomes.items():
        if size % 7 == 0:
            assert isinstance(outcome, ValueError) and outcome.args == ((index, size),)
        else:
            assert outcome == size * 2
    assert most <= jobs


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7, 8, 16, 33])
def test_a_quarter_of_the_threads_take_the_large_end(threads: int) -> None:
    assert schedule.large_lane(threads) == max(1, threads // 4)


SIZES = [3000, None, 9000, 1000, 5000, 2000, 7000, 4000]


def test_one_job_fetches_largest_first(root: Path, server: Server, tmp_path: Path) -> None:
    """With one job, the server sees the fixture of unknown size first, then by size down."""
    path = _write_manifest(tmp_path / "m.toml", server, SIZES)
    with cas.Store.open(root, downloader=fast(root)) as store:
        store.sync(path, jobs=1)
    expected = ["/f01", "/f02", "/f06", "/f04", "/f07", "/f00", "/f05", "/f03"]
    assert [seen.path for seen in server.seen()] == expected


def test_cli_sync_starts_the_largest_and_the_smallest_together(root: Path, server: Server,
                                                                tmp_path: Path) -> None:
    """`cas sync --jobs 4`: one job starts from the large end (unknown size, then 9000), three
    from the small end (1000, 2000, 3000), at once; the ends meet in the middle."""
    path = _write_manifest(tmp_path / "m.toml", server, SIZES, delay=0.05, chunk=500)
    result = run_cas("sync", str(path), "--jobs", "4", root=root)
    assert result.returncode == 0, result.stderr
    first = {seen.path for seen in server.seen()[:4]}
    assert first == {"/f01", "/f03", "/f05", "/f00"}
    assert len(server.seen()) == len(SIZES)


# -- the report, failures and the total bar -----------------------------------------------------


class Recorded:
    """A total bar that records what it is told."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.reports: list[tuple[int, int | None]] = []
        self.ended = 0
        self.closed = False
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        with self._lock:
            self.reports.append((done, total))

    def advance(self) -> None:
        self.ended += 1

    def close(self) -> None:
        self.closed = True


def test_total_bar_sums_the_bytes_of_every_transfer(root: Path, server: Server,
                                                    tmp_path: Path) -> None:
    """The total bar hears the bytes of all transfers: its total is unknown (None) until every
    size is known, done never goes past it, and it ends at the sum of the sizes, one advance a
    fixture."""
    path = _write_manifest(tmp_path / "m.toml", server, SIZES, chunk=700)
    bars: list[Recorded] = []

    def total_bar(count: int) -> Recorded:
        bars.append(Recorded(count))
        return bars[-1]

    with cas.Store.open(root, downloader=fast(root)) as store:
        report = store.sync_report(path, jobs=3, total_bar=total_bar)
    assert len(report.fetched) == len(SIZES)
    (bar,) = bars
    everything = sum(size or 3000 for size in SIZES)
    assert (bar.count, bar.ended, bar.closed) == (len(SIZES), len(SIZES), True)
    assert bar.reports[-1] == (everything, everything)
    assert all(total in (None, everything) for _, total in bar.reports)  # f01 has no size
    assert all(total is None or done <= total for done, total in bar.reports)
    done = [done for done, _ in bar.reports]
    assert done == sorted(done)  # no transfer restarted here


def test_failures_are_reported_and_the_others_stored(root: Path, server: Server,
                                                     tmp_path: Path) -> None:
    """One missing fixture among many concurrent ones: the report names it, the rest are
    stored, and the total bar still ends every fixture."""
    path = _write_manifest(tmp_path / "m.toml", server, SIZES)
    text = path.read_text().replace("/f04", "/gone")
    path.write_text(text)
    bars: list[Recorded] = []
    with cas.Store.open(root, downloader=fast(root)) as store:
        report = store.sync_report(path, total_bar=lambda n: bars.append(Recorded(n)) or bars[-1])
        assert list(report.failed) == ["f04"]
        assert report.summary() == "7 fetched, 0 already present, 1 failed"
        with pytest.raises(cas.CasError, match="1 of 8 fixtures failed: f04"):
            store.sync(path)
    assert bars[0].ended == len(SIZES)


def test_an_unexpected_error_stops_the_sync_and_is_raised(tmp_path: Path, server: Server) -> None:
    """A fetch that raises something other than a CasError (a bug) ends the sync with it: no
    fixture starts after it, and the running ones are waited for."""
    path = _write_manifest(tmp_path / "m.toml", server, [None] * 12)
    started: list[str] = []
    lock = threading.Lock()

    def fetch(url: str, *, name: str | None, blake3: str | None, sha256: str | None,
              size: int | None, progress: Progress | None, **_: object) -> Fetched:
        with lock:
            started.append(url)
        if url.endswith("/f00"):
            raise RuntimeError("a bug")
        time.sleep(0.05)
        return Fetched(blake3 or "", 0, downloaded=True)

    with pytest.raises(RuntimeError, match="a bug"):
        manifest.sync(fetch, path, jobs=2)
    count = len(started)
    time.sleep(0.2)
    assert len(started) == count < 12
