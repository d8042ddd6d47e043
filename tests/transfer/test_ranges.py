"""Parallel ranged downloads against a real server that misbehaves range by range.

Files here are 16 MiB with ``parallel_min_size`` 4 MiB and 4 connections, so the file comes in
pieces of 2 MiB: the first response brings [0, 2 MiB), and ranged requests the rest. A scripted
reply with ``at=`` answers only the range starting at that byte.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from random import Random

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.errors import DownloadError, IntegrityError
from cas.storage.layout import PARTIAL_SUFFIX, SIDECAR_SUFFIX, Layout
from cas.storage.staging import staging_usage
from cas.transfer.http import Downloader
from cas.transfer.partial import _spans
from cas.transfer.spans import Spans

from tests.conftest import blob_files, run_cas
from tests.httpserver import Reply, Seen, Server, serve

MiB = 1 << 20
SIZE = 16 * MiB
PIECE = 2 * MiB
BODY = os.urandom(SIZE)
NEW = os.urandom(SIZE)
AT = 3 * PIECE  #: a range in the middle of the file


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def ranged(root: Path, **options: object) -> Downloader:
    """A downloader with test-sized timeouts, 4 connections and parallel_min_size 4 MiB."""
    settings: dict[str, object] = {
        "timeout": 5.0, "retries": 3, "backoff_factor": 0.01, "backoff_max": 0.05,
        "retry_after_max": 2, "connections": 4, "parallel_min_size": 4 * MiB, **options,
    }  # fmt: skip
    layout = Layout(root)
    return Downloader(layout.tmp, layout.locks, **settings)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def rstore(root: Path) -> Iterator[cas.Store]:
    with cas.Store.open(root, downloader=ranged(root)) as store:
        yield store


def span(seen: Seen) -> tuple[int, int]:
    """The [start, end) a ranged request asked for."""
    assert seen.range is not None
    first, last = seen.range.removeprefix("bytes=").split("-")
    return int(first), int(last) + 1


def plain(server: Server, path: str) -> list[Seen]:
    """The requests without Range: each is a download from zero."""
    return [s for s in server.seen(path) if s.range is None]


def covered(seen: list[Seen]) -> Spans:
    """The union of the 206 answers' spans, checked disjoint (each byte sent once)."""
    spans = Spans()
    for s in sorted((s for s in seen if s.status == 206), key=span):
        start, _ = span(s)
        spans.add(start, start + s.sent)
    return spans


def partials(root: Path) -> list[Path]:
    tmp = Layout(root).tmp
    return [p for p in tmp.iterdir() if p.is_file()] if tmp.exists() else []


def assert_holds(root: Path, *contents: bytes) -> None:
    """blobs/ holds exactly ``contents``, each under its digest; no partial is left over."""
    files = blob_files(root)
    assert sorted(p.name for p in files) == sorted(_b3(c) for c in contents)
    for path in files:
        assert _b3(path.read_bytes()) == path.name
    assert partials(root) == []


# -- ranges on a well-behaved origin ---------------------------------------------------------------


def test_a_large_file_comes_in_ranges(rstore: cas.Store, server: Server) -> None:
    """One plain GET brings the first piece; ranged requests with If-Range bring the rest, each
    byte once, over several connections; the progress reports add every connection up."""
    url = server.add("/big", BODY)
    reports: list[tuple[int, int | None]] = []
    digest = rstore.fetch(url, progress=lambda done, total: reports.append((done, total)))
    assert digest == _b3(BODY)
    first, *rest = server.seen("/big")
    assert first.range is None and first.status == 200
    assert rest and all(s.headers["if-range"] == '"v1"' and s.status == 206 for s in rest)
    assert covered(rest).items == [[PIECE, SIZE]]
    assert server.connections >= 2
    assert reports[-1] == (SIZE, SIZE)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert_holds(rstore.root, BODY)


@pytest.mark.parametrize(("size", "options"), [(3 * MiB, {}), (SIZE, {"connections": 1})],
                         ids=["below-parallel_min_size", "one-connection"])
def test_small_files_and_one_connection_get_one_stream(root: Path, server: Server, size: int,
                                                       options: dict[str, object]) -> None:
    url = server.add("/f", BODY[:size])
    with cas.Store.open(root, downloader=ranged(root, **options)) as store:
        assert store.fetch(url) == _b3(BODY[:size])
    assert [(s.range, s.sent) for s in server.seen("/f")] == [(None, size)]


def test_accept_ranges_none_gets_one_stream(rstore: cas.Store, server: Server) -> None:
    url = server.add("/f", BODY, Reply(headers={"Accept-Ranges": "none"}))
    assert rstore.fetch(url) == _b3(BODY)
    assert [(s.range, s.sent) for s in server.seen("/f")] == [(None, SIZE)]


# -- ranges that misbehave -------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False], ids=["connection-reset", "short-body"])
def test_a_range_cut_short_resumes_where_it_stopped(rstore: cas.Store, server: Server,
                                                    reset: bool) -> None:
    url = server.add("/f", BODY, Reply(at=AT, cut_after=100_000, reset=reset))
    assert rstore.fetch(url) == _b3(BODY)
    assert len(plain(server, "/f")) == 1  # no restart
    # A reset discards what the client's kernel held unread: the resume may start a little
    # before the cut then, never at the range's start.
    again = [s for s in server.seen("/f") if s.range and AT < span(s)[0] <= AT + 100_000]
    assert [span(s)[1] for s in again] == [AT + PIECE]
    if not reset:
        assert [span(s) for s in again] == [(AT + 100_000, AT + PIECE)]
        assert covered(server.seen("/f")).items == [[PIECE, SIZE]]
    else:  # the bytes the reset dropped are sent twice, nothing else
        (resumed,) = again
        others = [s for s in server.seen("/f") if s.range and s is not resumed
                  and span(s)[0] != AT]  # fmt: skip
        cut = [s for s in server.seen("/f") if s.range and span(s)[0] == AT]
        assert [s.sent for s in cut] == [100_000]
        assert covered([*others, resumed]).items == [[PIECE, AT], [span(resumed)[0], SIZE]]
    assert_holds(rstore.root, BODY)


def test_a_206_of_less_than_asked_is_continued_without_a_retry(
    rstore: cas.Store, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A server may answer a range with fewer bytes than asked (its Content-Range says so):
    the rest is asked for at once, without counting as a failure."""
    url = server.add("/f", BODY, Reply(at=AT, cap=100_000))
    assert rstore.fetch(url) == _b3(BODY)
    at = [span(s) for s in server.seen("/f") if s.range and AT <= span(s)[0] < AT + PIECE]
    assert at == [(AT, AT + PIECE), (AT + 100_000, AT + PIECE)]
    assert "interrupted" not in caplog.text and len(plain(server, "/f")) == 1
    assert_holds(rstore.root, BODY)


def test_a_200_to_a_range_request_keeps_the_first_stream(rstore: cas.Store,
                                                         server: Server) -> None:
    """An origin that ignores Range: the first response goes on alone to the end (nothing is
    fetched twice); the ranged requests' whole-file answers are abandoned."""
    url = server.add("/f", BODY, ranges=False)
    assert rstore.fetch(url) == _b3(BODY)
    first, *rest = server.seen("/f")
    assert first.range is None and first.sent == SIZE
    assert 1 <= len(rest) <= 3 and all(s.status == 200 and s.range for s in rest)
    assert_holds(rstore.root, BODY)


@pytest.mark.parametrize("honours_if_range", [True, False], ids=["if-range", "ignores-if-range"])
def test_a_file_changed_between_ranges_restarts_from_zero(rstore: cas.Store, server: Server,
                                                          honours_if_range: bool) -> None:
    """The file changes (new ETag) while its ranges are fetched: a 200 of the new file to
    If-Range, or a 206 of it with the new ETag from a server ignoring If-Range, is detected;
    the download starts again and stores the new file whole, never a mix."""
    url = server.add("/f", BODY, Reply(at=AT, change={"body": NEW, "etag": '"v2"'},
                                       ignore_if_range=not honours_if_range))
    assert rstore.fetch(url) == _b3(NEW)
    assert len(plain(server, "/f")) == 2
    changed = next(s for s in server.seen("/f") if s.range and span(s)[0] == AT)
    assert changed.status == (200 if honours_if_range else 206)
    assert_holds(rstore.root, NEW)


@pytest.mark.parametrize("expected", ["blake3", "sha256"])
def test_an_undetectable_change_never_publishes_with_an_expected_hash(
    rstore: cas.Store, server: Server, expected: str
) -> None:
    """A server that changes the file and keeps its ETag: the ranges mix two versions, which
    only the expected hash can tell. Nothing is published, nothing kept."""
    url = server.add("/f", BODY, Reply(at=AT, change={"body": NEW}))
    digest = {"blake3": _b3(BODY), "sha256": hashlib.sha256(BODY).hexdigest()}
    with pytest.raises(IntegrityError):
        rstore.fetch(url, **{expected: digest[expected]})  # type: ignore[arg-type]
    assert blob_files(rstore.root) == [] and partials(rstore.root) == []


def test_a_416_to_a_range_restarts_from_zero(rstore: cas.Store, server: Server) -> None:
    url = server.add("/f", BODY, Reply(at=AT, status=416,
                                       headers={"Content-Range": f"bytes */{SIZE}"}))
    assert rstore.fetch(url) == _b3(BODY)
    assert 416 in [s.status for s in server.seen("/f")]
    assert len(plain(server, "/f")) == 2
    assert_holds(rstore.root, BODY)


def test_a_206_at_the_wrong_offset_restarts_from_zero(rstore: cas.Store, server: Server) -> None:
    url = server.add("/f", BODY, Reply(at=AT, range_start=AT + 5))
    assert rstore.fetch(url) == _b3(BODY)
    assert len(plain(server, "/f")) == 2
    assert_holds(rstore.root, BODY)


def test_a_503_is_retried_for_its_range_alone(rstore: cas.Store, server: Server) -> None:
    url = server.add("/f", BODY, Reply(at=AT, status=503, headers={"Retry-After": "0"}))
    assert rstore.fetch(url) == _b3(BODY)
    at = [s.status for s in server.seen("/f") if s.range and span(s)[0] == AT]
    assert at == [503, 206]
    assert len(plain(server, "/f")) == 1
    assert_holds(rstore.root, BODY)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_final_status_to_a_range_is_not_retried(rstore: cas.Store, server: Server,
                                                  status: int) -> None:
    url = server.add("/f", BODY, Reply(at=AT, status=status))
    with pytest.raises(DownloadError, match=f"HTTP {status}.*not retried"):
        rstore.fetch(url)
    assert [s.status for s in server.seen("/f") if s.range and span(s)[0] == AT] == [status]
    assert blob_files(rstore.root) == []


def test_a_failed_parallel_download_resumes_its_spans(rstore: cas.Store, server: Server) -> None:
    """After a download fails (a 404 on one range), the next one asks only for what is
    missing: the spans written are in the partial's sidecar."""
    url = server.add("/f", BODY, Reply(at=AT, status=404))
    with pytest.raises(DownloadError):
        rstore.fetch(url)
    recorded = Spans(_recorded(rstore.root))
    assert recorded.size > 0
    before = len(server.seen("/f"))
    assert rstore.fetch(url) == _b3(BODY)
    again = server.seen("/f")[before:]
    assert again and all(s.range and s.status == 206 for s in again)  # no download from zero
    assert sum(s.sent for s in again) == SIZE - recorded.size
    assert_holds(rstore.root, BODY)


def test_an_expected_sha256_is_computed_over_the_ranges(rstore: cas.Store,
                                                        server: Server) -> None:
    url = server.add("/f", BODY)
    assert rstore.fetch(url, sha256=hashlib.sha256(BODY).hexdigest(), size=SIZE) == _b3(BODY)
    assert any(s.range for s in server.seen("/f"))
    assert_holds(rstore.root, BODY)


def test_an_interrupted_parallel_download_keeps_its_spans(rstore: cas.Store,
                                                          server: Server) -> None:
    """Ctrl-C (as ``cas sync`` delivers it, through the progress callback) stops every
    connection; the partial records what was written, and the next fetch asks for the rest.
    (The origin is slow enough, some 10 MB/s over 8 connections, that a loaded machine's late
    progress call still stops the download well before its end.)"""
    url = server.add("/f", BODY, chunk=64 * 1024, delay=0.05)

    def stop(done: int, _: int | None) -> None:
        if done >= SIZE // 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rstore.fetch(url, progress=stop)
    recorded = Spans(_recorded(rstore.root))
    assert SIZE // 3 <= recorded.size < SIZE
    # The partial has its final size but counts, for cleanup and stats, for what it holds.
    layout = Layout(rstore.root)
    assert recorded.size <= staging_usage(layout.tmp, layout.locks)[1] < SIZE
    server.update("/f", delay=0.0)
    before = len(server.seen("/f"))
    assert rstore.fetch(url) == _b3(BODY)
    again = server.seen("/f")[before:]
    assert all(s.range and s.status == 206 for s in again)
    assert sum(s.sent for s in again) == SIZE - recorded.size
    assert_holds(rstore.root, BODY)


def test_a_parallel_partial_of_an_origin_that_stopped_answering_ranges(
    rstore: cas.Store, server: Server
) -> None:
    """A parallel partial is resumed with ranges; if the origin now ignores them, the download
    starts again as one stream (once), and stores the whole file."""
    url = server.add("/f", BODY, Reply(at=AT, status=404))
    with pytest.raises(DownloadError):
        rstore.fetch(url)
    assert _recorded(rstore.root)
    server.update("/f", ranges=False)
    before = len(server.seen("/f"))
    assert rstore.fetch(url) == _b3(BODY)
    again = server.seen("/f")[before:]
    assert [s.range is None for s in again].count(True) == 1  # one stream from zero
    assert again[-1].range is None and again[-1].sent == SIZE
    assert_holds(rstore.root, BODY)


# -- across processes ------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import cas
    root, url, go = sys.argv[1:4]
    while not pathlib.Path(go).exists():
        time.sleep(0.002)
    with cas.Store.open(root, connections=4, parallel_min_size="4MiB") as store:
        print(store.fetch(url), flush=True)
""")


def _child(root: Path, url: str, go: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), url, str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _recorded(root: Path) -> list[list[int]]:
    """The spans the sidecar of the one parallel partial in tmp/ records as written."""
    for path in Layout(root).tmp.glob(f"*{SIDECAR_SUFFIX}"):
        try:
            done = json.loads(path.read_text()).get("done")
        except (OSError, ValueError):
            continue
        if done is not None:
            return [list(span) for span in done]
    return []


@pytest.mark.slow
def test_a_killed_parallel_download_resumes_every_finished_range(root: Path, server: Server,
                                                                 tmp_path: Path) -> None:
    """SIGKILL mid-download: the next process asks only for spans not recorded as written,
    and the bytes it is sent again are at most 1 % of the file."""
    body = os.urandom(256 * MiB)  # (what a kill loses in the sockets' buffers is some 100 KiB
    url = server.add("/big", body, chunk=64 * 1024, delay=0.004)  # per connection, however large)
    (tmp_path / "go").touch()
    child = _child(root, url, tmp_path / "go")
    deadline = time.monotonic() + 60
    while sum(b - a for a, b in _recorded(root)) < 0.4 * len(body):
        assert time.monotonic() < deadline and child.poll() is None, "no spans recorded"
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    recorded = Spans(_recorded(root))
    assert [p.suffix for p in partials(root)].count(PARTIAL_SUFFIX) == 1
    server.update("/big", delay=0.0)
    before = len(server.seen("/big"))
    with cas.Store.open(root, downloader=ranged(root)) as store:
        assert store.fetch(url) == _b3(body)
    again = server.seen("/big")[before:]
    assert again and all(s.range and s.status == 206 for s in again)
    for s in again:  # no finished span is asked for again
        start, end = span(s)
        assert all(end <= a or b <= start for a, b in recorded.items)
    assert sum(s.sent for s in again) == len(body) - recorded.size
    # Sent again: bytes the resuming fetch got that the killed one had been sent already
    # (what the kill lost in flight, and written but not yet recorded).
    first = _sent(server.seen("/big")[:before])
    resent = sum(max(0, min(b, d) - max(a, c))
                 for a, b in first for c, d in _sent(again))  # fmt: skip
    assert resent <= 0.01 * len(body)
    assert_holds(root, body)


def _sent(seen: list[Seen]) -> list[tuple[int, int]]:
    """The union of the byte spans the server sent in answer to ``seen``."""
    spans = sorted((span(s)[0] if s.range else 0, (span(s)[0] if s.range else 0) + s.sent)
                   for s in seen if s.sent)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@pytest.mark.slow
def test_processes_fetching_one_large_file_transfer_it_once(root: Path, server: Server,
                                                            tmp_path: Path) -> None:
    """Three processes fetching one large URL at once: one set of ranged transfers (one plain
    GET, each range sent once), three right digests."""
    url = server.add("/big", BODY, chunk=64 * 1024, delay=0.002)
    cas.Store.open(root).close()
    go = tmp_path / "go"
    children = [_child(root, url, go) for _ in range(3)]
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
        assert out.decode().strip() == _b3(BODY)
    assert len(plain(server, "/big")) == 1
    assert covered(server.seen("/big")).items == [[PIECE, SIZE]]
    assert_holds(root, BODY)


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("connections", "ranges"), [("4", True), ("1", False)])
def test_cli_fetch_uses_the_settings(root: Path, server: Server, connections: str,
                                     ranges: bool) -> None:
    url = server.add("/f", BODY)
    env = {"CAS_CONNECTIONS": connections, "CAS_PARALLEL_MIN_SIZE": "4MiB"}
    result = run_cas("fetch", url, root=root, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == _b3(BODY)
    assert any(s.range for s in server.seen("/f")) == ranges
    assert_holds(root, BODY)


def test_cli_expected_hash_mismatch_publishes_nothing(root: Path, server: Server) -> None:
    url = server.add("/f", BODY, Reply(at=AT, change={"body": NEW}))
    env = {"CAS_CONNECTIONS": "4", "CAS_PARALLEL_MIN_SIZE": "4MiB"}
    result = run_cas("fetch", url, "--blake3", _b3(BODY), root=root, env=env)
    assert result.returncode != 0
    assert b"BLAKE3" in result.stderr and len(result.stderr.decode().strip().splitlines()) == 1
    assert blob_files(root) == [] and partials(root) == []


# -- the spans record ------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.randoms())
def test_spans_merge_to_the_union(lengths: list[int], random: Random) -> None:
    """Disjoint pieces added in any order, each grown in steps, merge to their union, and
    ``missing`` is its complement; adding the rest leaves one span."""
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    pieces = list(itertools.pairwise(bounds))
    spans = Spans()

    def add(chosen: list[tuple[int, int]]) -> None:
        random.shuffle(chosen)
        for start, end in chosen:
            for at in range(start, end, 7):
                spans.add(at, min(at + 7, end))

    add(pieces[::2])
    assert [tuple(s) for s in spans.items] == pieces[::2]  # every other piece: none touch
    assert spans.missing(bounds[-1]) == pieces[1::2]
    assert spans.size == sum(end - start for start, end in pieces[::2])
    add(pieces[1::2])
    assert spans.items == [[0, bounds[-1]]] and spans.prefix == spans.size == bounds[-1]
    assert spans.missing(bounds[-1]) == []


@pytest.mark.parametrize("done", [[[0, 5], [3, 8]], [[5, 3]], [[0, 11]], "x", [[0, "1"]],
                                  [[True, 2]], [[0, 1, 2]], [[-1, 2]]])
def test_a_malformed_record_of_spans_is_not_trusted(done: object) -> None:
    """A sidecar's ``done`` that overlaps, runs backwards, passes the end or is not numbers
    is ignored: the partial is then not resumed from it."""
    assert _spans(done, 10) is None
    assert _spans([[0, 2], [4, 10]], 10) == [[0, 2], [4, 10]]
