"""Parallel ranged downloads with the rest of a fetch: extra request headers (``${VAR}`` read
for each request, sent to the URL's own origin only, across redirects), upstream checksums
(MD5, SHA-1, SHA-256) hashed over the ranges, and refresh (conditional requests).

Files are 16 MiB with ``parallel_min_size`` 4 MiB and 4 connections (tests/transfer/
test_ranges.py): the first response brings [0, 2 MiB), ranged requests the other 7 pieces.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas
from cas.errors import IntegrityError

from tests.conftest import blob_files, run_cas
from tests.httpserver import Reply, Server, serve
from tests.transfer.test_ranges import (
    BODY,
    NEW,
    PIECE,
    SIZE,
    _b3,
    _recorded,
    assert_holds,
    partials,
    ranged,
    span,
)

TOKEN = "s3cr3t-t0ken"
PARALLEL = {"CAS_CONNECTIONS": "4", "CAS_PARALLEL_MIN_SIZE": "4MiB"}


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def rstore(root: Path) -> Iterator[cas.Store]:
    with cas.Store.open(root, downloader=ranged(root), grace_period=0) as store:
        yield store


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAS_OFFLINE", raising=False)


def _ranges(server: Server, path: str) -> list[tuple[int, int]]:
    return sorted(span(s) for s in server.seen(path) if s.range)


# -- extra headers ---------------------------------------------------------------------------------


def test_every_range_request_carries_the_header(rstore: cas.Store, server: Server,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An origin that requires a header (401 without it) gets it, ``${VAR}`` expanded, on the
    first request and on every ranged one."""
    monkeypatch.setenv("CAS_TEST_TOKEN", TOKEN)
    url = server.add("/f", BODY, require={"X-Token": TOKEN})
    assert rstore.fetch(url, headers={"X-Token": "${CAS_TEST_TOKEN}"}) == _b3(BODY)
    seen = server.seen("/f")
    assert len([s for s in seen if s.range]) >= 7  # every piece but the first one
    assert all(s.headers.get("x-token") == TOKEN for s in seen)
    assert {s.status for s in seen} <= {200, 206}
    assert_holds(rstore.root, BODY)


def test_without_the_header_no_range_is_asked(rstore: cas.Store, server: Server) -> None:
    """The same origin refuses a fetch without the header (the test above can fail)."""
    url = server.add("/f", BODY, require={"X-Token": TOKEN})
    with pytest.raises(cas.DownloadError, match="401"):
        rstore.fetch(url)
    assert [s.status for s in server.seen("/f")] == [401]
    assert blob_files(rstore.root) == []


def test_each_range_request_reads_the_variable_then(rstore: cas.Store, server: Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A token rotated while a parallel download runs reaches the ranged requests made after
    the change: the headers are made for each request, not once per download."""
    monkeypatch.setenv("CAS_TEST_TOKEN", "first")
    url = server.add("/f", BODY, chunk=64 * 1024, delay=0.02)

    def rotate(done: int, _: int | None) -> None:
        if done >= PIECE // 2:  # 4 connections, none has finished its first piece yet
            os.environ["CAS_TEST_TOKEN"] = "second"

    assert rstore.fetch(url, headers={"X-Token": "${CAS_TEST_TOKEN}"},
                        progress=rotate) == _b3(BODY)  # fmt: skip
    seen = server.seen("/f")
    assert seen[0].range is None and seen[0].headers["x-token"] == "first"
    later = [s for s in seen if s.range and span(s)[0] >= 4 * PIECE]
    assert later and all(s.headers["x-token"] == "second" for s in later)


def test_range_requests_follow_redirects_without_the_headers_abroad(
    rstore: cas.Store, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ranged request goes to the URL and follows its redirect: the URL's origin gets the
    extra headers every time, the other origin never (nor an Authorization)."""
    monkeypatch.setenv("CAS_TEST_TOKEN", TOKEN)
    with Server() as elsewhere:
        foreign = elsewhere.add("/moved.bin", BODY)
        url = server.add("/there", b"", Reply(status=302, headers={"Location": foreign}),
                         *[Reply(status=302, headers={"Location": foreign})] * 20)
        headers = {"X-Token": "${CAS_TEST_TOKEN}", "Authorization": "Bearer ${CAS_TEST_TOKEN}"}
        assert rstore.fetch(url, headers=headers) == _b3(BODY)
        moved = elsewhere.seen("/moved.bin")
        assert sum(1 for s in moved if s.range) >= 7
        assert all("x-token" not in s.headers and "authorization" not in s.headers
                   for s in moved)  # fmt: skip
        asked = server.seen("/there")
        assert len(asked) == len(moved)  # every request went through the redirect
        assert all(s.headers.get("x-token") == TOKEN for s in asked)
        # The pieces asked for cover the file once (the first piece came with the first GET).
        assert sum(end - start for start, end in _ranges(elsewhere, "/moved.bin")) == SIZE - PIECE
    assert_holds(rstore.root, BODY)


def test_cli_header_on_every_range_request(root: Path, server: Server,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`cas fetch --header` with a ``${VAR}``, parallel by the environment's settings."""
    monkeypatch.setenv("CAS_TEST_TOKEN", TOKEN)
    url = server.add("/f", BODY, require={"X-Token": TOKEN})
    result = run_cas("fetch", url, "--header", "X-Token: ${CAS_TEST_TOKEN}", root=root,
                     env={**PARALLEL, "CAS_TEST_TOKEN": TOKEN})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == _b3(BODY)
    seen = server.seen("/f")
    assert sum(1 for s in seen if s.range) >= 7
    assert all(s.headers.get("x-token") == TOKEN for s in seen)
    assert TOKEN.encode() not in result.stdout + result.stderr


# -- upstream checksums ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_an_upstream_checksum_is_verified_over_the_ranges(rstore: cas.Store, server: Server,
                                                          algorithm: str) -> None:
    url = server.add("/f", BODY)
    digest = hashlib.new(algorithm, BODY).hexdigest()
    assert rstore.fetch(url, **{algorithm: digest}) == _b3(BODY)  # type: ignore[arg-type]
    assert len(_ranges(server, "/f")) >= 7
    assert_holds(rstore.root, BODY)
    assert rstore.stored(**{algorithm: digest}) == _b3(BODY)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_a_wrong_upstream_checksum_publishes_nothing(rstore: cas.Store, server: Server,
                                                     algorithm: str) -> None:
    """The whole file comes over the ranges, its checksum does not match: an IntegrityError
    naming the algorithm, nothing in blobs/, no partial kept for a resume."""
    url = server.add("/f", BODY)
    wrong = hashlib.new(algorithm, NEW).hexdigest()
    label = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256"}[algorithm]
    with pytest.raises(IntegrityError, match=label):
        rstore.fetch(url, **{algorithm: wrong})  # type: ignore[arg-type]
    assert len(_ranges(server, "/f")) >= 7
    assert blob_files(rstore.root) == []
    assert partials(rstore.root) == []
    assert rstore.stored(**{algorithm: wrong}) is None  # type: ignore[arg-type]


def test_all_three_checksums_in_one_pass_and_one_wrong_among_them(rstore: cas.Store,
                                                                  server: Server) -> None:
    url = server.add("/f", BODY)
    right = {name: hashlib.new(name, BODY).hexdigest() for name in ("md5", "sha1", "sha256")}
    with pytest.raises(IntegrityError, match="MD5"):
        rstore.fetch(url, **{**right, "md5": hashlib.md5(NEW).hexdigest()})
    assert blob_files(rstore.root) == []
    assert rstore.fetch(url, **right) == _b3(BODY)
    assert_holds(rstore.root, BODY)


def test_a_resumed_parallel_partial_hashes_what_the_claimant_wants(rstore: cas.Store,
                                                                   server: Server) -> None:
    """A parallel partial left by a fetch that expected nothing is resumed by one expecting an
    MD5: the checksum covers the spans written before (read back from the file) too."""
    url = server.add("/f", BODY, chunk=64 * 1024, delay=0.05)

    def stop(done: int, _: int | None) -> None:
        if done >= SIZE // 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rstore.fetch(url, progress=stop)
    kept = sum(end - start for start, end in _recorded(rstore.root))
    assert 0 < kept < SIZE
    server.update("/f", delay=0.0)
    before = len(server.seen("/f"))
    assert rstore.fetch(url, md5=hashlib.md5(BODY).hexdigest()) == _b3(BODY)
    again = server.seen("/f")[before:]
    assert all(s.range and s.status == 206 for s in again)
    assert sum(s.sent for s in again) == SIZE - kept  # the spans kept were not asked again
    assert_holds(rstore.root, BODY)


def test_cli_md5_over_ranges(root: Path, server: Server) -> None:
    url = server.add("/f", BODY)
    wrong = run_cas("fetch", url, "--md5", hashlib.md5(NEW).hexdigest(), root=root, env=PARALLEL)
    assert wrong.returncode != 0 and b"MD5" in wrong.stderr
    assert blob_files(root) == []
    right = run_cas("fetch", url, "--md5", hashlib.md5(BODY).hexdigest(), root=root, env=PARALLEL)
    assert right.returncode == 0, right.stderr
    assert len(_ranges(server, "/f")) >= 14  # both fetches went parallel
    assert_holds(root, BODY)


# -- refresh ---------------------------------------------------------------------------------------


def test_refresh_is_a_plain_conditional_get_and_a_200_goes_parallel(rstore: cas.Store,
                                                                    server: Server) -> None:
    """A refresh sends one conditional GET without Range: a 304 brings nothing; after a change
    its 200 is the first piece of a parallel download, whose ranged requests carry If-Range
    with the new validator and no condition."""
    url = server.add("/f", BODY, etag='"v1"')
    assert rstore.fetch(url, name="f") == _b3(BODY)
    assert len(_ranges(server, "/f")) >= 7
    before, sent = len(server.seen("/f")), server.sent("/f")
    assert rstore.fetch(url, name="f", refresh=True) == _b3(BODY)
    unchanged = server.seen("/f")[before:]
    assert [(s.status, s.range, s.headers.get("if-none-match")) for s in unchanged] == [
        (304, None, '"v1"')]
    assert server.sent("/f") == sent  # the 304 sent no body
    server.update("/f", body=NEW, etag='"v2"')
    before = len(server.seen("/f"))
    assert rstore.fetch(url, name="f", refresh=True) == _b3(NEW)
    changed = server.seen("/f")[before:]
    assert changed[0].range is None and changed[0].headers["if-none-match"] == '"v1"'
    assert changed[0].status == 200
    ranges = [s for s in changed if s.range]
    assert len(ranges) >= 7
    assert all(s.status == 206 and s.headers["if-range"] == '"v2"' for s in ranges)
    assert not any("if-none-match" in s.headers or "if-modified-since" in s.headers
                   for s in ranges)  # fmt: skip
    assert rstore.read_bytes("f") == NEW
    # The validators kept are the new content's: the next refresh is a 304 again.
    before = len(server.seen("/f"))
    assert rstore.fetch(url, name="f", refresh=True) == _b3(NEW)
    assert [(s.status, s.headers.get("if-none-match")) for s in server.seen("/f")[before:]] == [
        (304, '"v2"')]


def test_a_resumed_parallel_refresh_sends_no_condition(rstore: cas.Store, server: Server) -> None:
    """A refresh interrupted while the new content comes in parallel leaves a partial of the
    new content; the next refresh resumes it with ranges and If-Range only (a condition
    would compare the old validators), and stores the new content."""
    url = server.add("/f", BODY, etag='"v1"')
    assert rstore.fetch(url, name="f") == _b3(BODY)
    server.update("/f", body=NEW, etag='"v2"', chunk=64 * 1024, delay=0.05)

    def stop(done: int, _: int | None) -> None:
        if done >= SIZE // 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rstore.fetch(url, name="f", refresh=True, progress=stop)
    kept = sum(end - start for start, end in _recorded(rstore.root))
    assert 0 < kept < SIZE
    server.update("/f", delay=0.0)
    before = len(server.seen("/f"))
    assert rstore.fetch(url, name="f", refresh=True) == _b3(NEW)
    again = server.seen("/f")[before:]
    assert again and all(s.range and s.status == 206 and s.headers["if-range"] == '"v2"'
                         for s in again)  # fmt: skip
    assert not any("if-none-match" in s.headers or "if-modified-since" in s.headers
                   for s in again)  # fmt: skip
    assert sum(s.sent for s in again) == SIZE - kept
    assert rstore.read_bytes("f") == NEW
    assert partials(rstore.root) == []
