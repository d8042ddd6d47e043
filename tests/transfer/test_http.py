"""Downloads: verified, resumable, single-flight transfers against a real misbehaving server.

Every misbehaviour test asserts the outcome, how many requests the server saw, and that
``blobs/`` holds nothing wrong (guarantee 1) and ``tmp/`` no leftover partial.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

import cas
import cas.ops.manifest
from cas.storage.layout import LOCKS, PARTIAL_SUFFIX, SIDECAR_SUFFIX, Layout
from cas.transfer.http import Downloader

from tests.conftest import blob_files, run_cas
from tests.httpserver import Reply, Server, serve

BODY = os.urandom(200_000)
CUT = 70_000


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fast(root: Path, **options: object) -> Downloader:
    """A downloader for the store at ``root`` with test-sized timeouts and backoff (for
    ``Store.open(downloader=...)``)."""
    settings: dict[str, object] = {
        "timeout": 5.0, "retries": 3, "backoff_factor": 0.01, "backoff_max": 0.05,
        "retry_after_max": 2, **options,
    }  # fmt: skip
    tmp = Layout(root).tmp
    return Downloader(tmp, Layout(root).locks, **settings)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def fstore(root: Path) -> Iterator[cas.Store]:
    with cas.Store.open(root, downloader=fast(root)) as store:
        yield store


@pytest.fixture
def fstore_once(root: Path) -> Iterator[cas.Store]:
    """A store whose downloads retry once."""
    with cas.Store.open(root, downloader=fast(root, retries=1)) as store:
        yield store


def partials(root: Path) -> list[Path]:
    """Staging files and sidecars left in tmp/ (its locks/ aside)."""
    return sorted(p for p in Layout(root).tmp.iterdir() if p.name != LOCKS)


def assert_holds(root: Path, *contents: bytes) -> None:
    """blobs/ holds exactly ``contents``, each under its digest; no partial is left over."""
    files = blob_files(root)
    assert sorted(p.name for p in files) == sorted(_b3(c) for c in contents)
    for path in files:
        assert _b3(path.read_bytes()) == path.name
    assert partials(root) == []


# -- interrupted bodies are resumed ----------------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False], ids=["connection-dropped", "short-body"])
def test_interrupted_body_is_resumed_with_range(fstore: cas.Store, server: Server,
                                                reset: bool) -> None:
    """A drop (RST) or fewer bytes than Content-Length (FIN): the rest comes with Range."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, reset=reset))
    assert fstore.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    first, second = server.seen("/a.bin")
    assert second.range == f"bytes={CUT}-" and second.headers["if-range"] == '"v1"'
    assert second.status == 206 and first.sent + second.sent == len(BODY)
    counters = fstore.stats().counters
    assert counters[cas.Counter.RESUME_SAVED_BYTES] == CUT
    assert counters[cas.Counter.DOWNLOADED_BYTES] == len(BODY)
    assert_holds(fstore.root, BODY)


def test_partial_outlives_a_failed_fetch_and_is_resumed_later(root: Path, server: Server) -> None:
    """Out of retries, the partial stays in tmp/; the next fetch asks only for the rest."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, reset=True))
    with cas.Store.open(root, downloader=fast(root, retries=0)) as store:
        with pytest.raises(cas.DownloadError, match="after 1 attempts") as info:
            store.fetch(url)
        assert info.value.attempts == 1
        assert sorted(p.suffix for p in partials(root)) == [SIDECAR_SUFFIX, PARTIAL_SUFFIX]
        assert blob_files(root) == []
        assert store.fetch(url) == _b3(BODY)
    assert [s.range for s in server.seen("/a.bin")] == [None, f"bytes={CUT}-"]
    assert server.sent("/a.bin") == len(BODY)
    assert_holds(root, BODY)


def test_server_answering_200_to_a_range_restarts_from_zero(
    fstore: cas.Store, server: Server
) -> None:
    """A 200 to a Range request is the whole body again: taken from zero, nothing appended."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, reset=True), Reply(ignore_range=True))
    assert fstore.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    _, second = server.seen("/a.bin")
    assert second.range == f"bytes={CUT}-" and second.status == 200
    assert second.sent == len(BODY)
    assert_holds(fstore.root, BODY)


def test_changed_etag_gives_the_new_content(fstore: cas.Store, server: Server) -> None:
    """If-Range no longer matches: the server sends the new content whole, and it is kept."""
    new = os.urandom(len(BODY))
    url = server.add("/a.bin", BODY, Reply(
        cut_after=CUT, reset=True, after=lambda: server.update("/a.bin", body=new, etag='"v2"')
    ))
    assert fstore.fetch(url) == _b3(new)
    assert [s.status for s in server.seen("/a.bin")] == [200, 200]
    assert_holds(fstore.root, new)


def test_changed_etag_on_a_206_restarts(fstore: cas.Store, server: Server) -> None:
    """A server that ignores If-Range and sends a 206 with another ETag: nothing is mixed."""
    new = os.urandom(len(BODY))
    url = server.add(
        "/a.bin", BODY,
        Reply(cut_after=CUT, reset=True,
              after=lambda: server.update("/a.bin", body=new, etag='"v2"')),
        Reply(ignore_if_range=True),
    )  # fmt: skip
    assert fstore.fetch(url) == _b3(new)
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 206, 200]
    assert seen[2].range is None
    assert_holds(fstore.root, new)


def test_206_starting_elsewhere_restarts(fstore: cas.Store, server: Server) -> None:
    """A 206 whose Content-Range does not start at the partial's end is not appended."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, reset=True), Reply(range_start=10))
    assert fstore.fetch(url) == _b3(BODY)
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 206, 200] and seen[2].range is None
    assert_holds(fstore.root, BODY)


def test_416_restarts_from_zero(fstore: cas.Store, server: Server) -> None:
    """A 416 to the resume request: the partial is dropped and the file fetched whole."""
    url = server.add(
        "/a.bin", BODY,
        Reply(cut_after=CUT, reset=True),
        Reply(status=416, headers={"Content-Range": f"bytes */{len(BODY)}"}),
    )  # fmt: skip
    assert fstore.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 416, 200] and seen[2].range is None
    assert_holds(fstore.root, BODY)


def test_416_for_a_complete_partial_finishes_it(fstore: cas.Store, server: Server) -> None:
    """All bytes arrived but the length promised more: a 416 */size says the partial is done."""
    url = server.add("/a.bin", BODY, Reply(
        cut_after=len(BODY), headers={"Content-Length": str(len(BODY) + 10)}
    ))
    assert fstore.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    assert [s.status for s in server.seen("/a.bin")] == [200, 416]
    assert server.sent("/a.bin") == len(BODY)
    assert_holds(fstore.root, BODY)


def test_resumed_content_that_does_not_verify_is_fetched_again(
    fstore: cas.Store, server: Server
) -> None:
    """Content changed under the same ETag: the mixed result fails its digest, never reaches
    blobs/, and one fetch from zero gives the right bytes."""
    new = os.urandom(len(BODY))
    url = server.add("/a.bin", BODY, Reply(
        cut_after=CUT, reset=True, after=lambda: server.update("/a.bin", body=new)
    ))
    assert fstore.fetch(url, blake3=_b3(new)) == _b3(new)
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 206, 200] and seen[2].range is None
    assert_holds(fstore.root, new)


def test_no_validator_means_no_resume(fstore: cas.Store, server: Server) -> None:
    """Without ETag or Last-Modified a Range could splice two versions: start again instead."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, reset=True),
                     etag=None, last_modified=None)
    assert fstore.fetch(url) == _b3(BODY)
    assert [s.range for s in server.seen("/a.bin")] == [None, None]
    assert_holds(fstore.root, BODY)


def test_stall_past_the_timeout_is_resumed(root: Path, server: Server) -> None:
    """A body that stops flowing times out after download_timeout and is resumed."""
    url = server.add("/a.bin", BODY, Reply(cut_after=CUT, stall=5))
    with cas.Store.open(root, downloader=fast(root, timeout=0.5)) as store:
        started = time.monotonic()
        assert store.fetch(url) == _b3(BODY)
        assert time.monotonic() - started < 3
    assert [s.range for s in server.seen("/a.bin")] == [None, f"bytes={CUT}-"]
    assert_holds(root, BODY)


def test_stalling_every_time_gives_up_after_the_retries(root: Path, server: Server) -> None:
    """Each attempt is bounded by the timeout; after retries+1 of them, a DownloadError."""
    url = server.add("/a.bin", BODY, *[Reply(cut_after=0, stall=5)] * 3)
    with (cas.Store.open(root, downloader=fast(root, timeout=0.3, retries=1)) as store,
          pytest.raises(cas.DownloadError, match=r"after 2 attempts.*timed out") as info):
        store.fetch(url)
    assert info.value.attempts == 2 and server.requests("/a.bin") == 2
    assert_holds(root)


# -- incomplete, endless and trickling responses -----------------------

HEAD = b'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: "v9"\r\n\r\n'


@given(cut=st.integers(min_value=1, max_value=len(HEAD) - 1))
def test_a_header_block_cut_by_a_dying_server_is_never_content(
    fstore_once: cas.Store, server: Server, cut: int
) -> None:
    """A server that dies anywhere inside its headers (and sends no length) gives an error after
    the retries, never an empty blob recorded as the URL's content."""
    url = server.add("/cut", BODY, Reply(raw=HEAD[:cut]), Reply(raw=HEAD[:cut]))
    with pytest.raises(cas.DownloadError, match="failed after 2 attempts") as info:
        fstore_once.fetch(url)
    if cut > len(b"HTTP/1.1 200 OK\r\n"):
        assert "inside the response headers" in str(info.value)
    assert_holds(fstore_once.root)


def test_cli_fetch_of_a_header_block_cut_short_fails_in_one_line(root: Path,
                                                                 server: Server) -> None:
    """`cas fetch` exits non-zero with one line, and stores nothing (the issue's report)."""
    url = server.add("/cut", BODY, Reply(raw=HEAD[:30]))
    done = run_cas("fetch", url, root=root, env={"CAS_RETRIES": "0"})
    assert done.returncode != 0 and server.requests("/cut") == 1
    assert done.stderr.decode().strip().splitlines()[-1].startswith("cas: error: ")
    assert "inside the response headers" in done.stderr.decode()
    assert_holds(root)
    done = run_cas("fetch", url, root=root)  # the server recovered: the real content comes
    assert done.returncode == 0 and done.stdout.decode().split()[0] == _b3(BODY)


def test_a_chunked_body_cut_before_its_last_chunk_is_never_content(fstore_once: cas.Store,
                                                                   server: Server) -> None:
    """Chunked encoding ends with a zero-size chunk; a clean close before it is a failure."""
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    whole = cut + b"0\r\n\r\n"
    url = server.add("/chunked", b"", Reply(raw=cut), Reply(raw=cut), Reply(raw=whole))
    with pytest.raises(cas.DownloadError, match="IncompleteRead"):
        fstore_once.fetch(url)
    assert_holds(fstore_once.root)
    assert fstore_once.read_bytes(fstore_once.fetch(url)) == b"hello"


def test_a_body_without_length_ends_at_a_clean_close(fstore: cas.Store, server: Server,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Decision: with neither Content-Length nor chunks (HTTP/1.0 style) the body is what came
    before a clean close after whole headers, with a warning that its end was not checked."""
    url = server.add("/old", b"", Reply(raw=b"HTTP/1.0 200 OK\r\n\r\n" + BODY))
    with caplog.at_level(logging.WARNING, logger="cas"):
        assert fstore.fetch(url) == _b3(BODY)
    assert "sent no Content-Length" in caplog.text
    assert_holds(fstore.root, BODY)


def test_no_length_and_no_body_is_a_dropped_connection(fstore_once: cas.Store,
                                                       server: Server) -> None:
    """Decision: no length and a close right after the headers is what a server dying there
    looks like: retried, then an error; an empty file is sent with Content-Length: 0."""
    empty = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    url = server.add("/empty", b"", Reply(raw=empty), Reply(raw=empty))
    with pytest.raises(cas.DownloadError, match="no body, no length"):
        fstore_once.fetch(url)
    assert server.requests("/empty") == 2
    assert fstore_once.fetch(url, size=0) == _b3(b"")  # Content-Length: 0 is an empty file
    assert_holds(fstore_once.root, b"")


def test_a_trickling_server_fails_within_the_download_timeout(root: Path,
                                                              server: Server) -> None:
    """20 bytes every 0.05 s never lets a single read time out; each attempt still ends after
    about download_timeout, as the body comes slower than the minimum rate."""
    body = os.urandom(8 * 1024)
    url = server.add("/trickle", body, chunk=16, delay=0.05)
    with (cas.Store.open(root, download_timeout="0.5s", retries=1) as store,
          pytest.raises(cas.DownloadError, match="after 2 attempts: too slow") as info):
        store.fetch(url)
    assert info.value.attempts == 2 and server.sent("/trickle") < len(body)


def test_headers_trickling_in_fail_within_the_download_timeout(root: Path,
                                                               server: Server) -> None:
    """A header block sent a byte every 0.05 s (each read succeeds) still times out: the whole
    block must arrive within download_timeout."""
    slow = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 40 + b"\r\nContent-Length: 2\r\n\r\nok"
    url = server.add("/drip", b"ok", Reply(raw=slow, drip=0.05), Reply(raw=slow, drip=0.05))
    with (cas.Store.open(root, download_timeout="0.5s", retries=1) as store,
          pytest.raises(cas.DownloadError, match=r"after 2 attempts.*timed out")):
        store.fetch(url)
    assert server.requests("/drip") == 2
    assert_holds(root)


def test_an_endless_body_is_bounded_by_the_cache_size(root: Path, server: Server) -> None:
    """A server that never stops sending, with no length, is cut at max_cache_size with a clear
    error; nothing is kept, not even a partial."""
    url = server.add("/endless", os.urandom(4096), Reply(endless=True), chunk=4096, delay=0.005)
    with (cas.Store.open(root, max_cache_size="256KiB", download_timeout="5s") as store,
          pytest.raises(cas.DownloadError, match="larger than the cache's max_cache_size")):
        store.fetch(url)
    assert server.requests("/endless") == 1 and server.sent("/endless") > 256 * 1024
    assert_holds(root)


def test_a_declared_length_over_the_cache_size_is_refused_before_the_body(
    root: Path, server: Server
) -> None:
    """A Content-Length over max_cache_size (and no expected size) fails at once, not retried;
    with the expected size given, the caller vouches for it and it is fetched."""
    body = os.urandom(300 * 1024)
    url = server.add("/big", body)
    with cas.Store.open(root, max_cache_size="256KiB") as store:
        with pytest.raises(cas.DownloadError, match="max_cache_size") as info:
            store.fetch(url)
        assert info.value.attempts == 1 and server.requests("/big") == 1
        assert partials(root) == []
        assert store.fetch(url, size=len(body)) == _b3(body)


# -- statuses and retries ----------------------------------------------------------------------


def test_429_retry_after_is_honoured(fstore: cas.Store, server: Server,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """A 429 with Retry-After: 1 waits about a second, then succeeds; the retry is logged."""
    url = server.add("/a.bin", BODY, Reply(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cas"):
        assert fstore.fetch(url) == _b3(BODY)
    assert 0.9 <= time.monotonic() - started < 5
    assert [s.status for s in server.seen("/a.bin")] == [429, 200]
    assert any("HTTP 429" in r.message and "Retry-After" in r.message for r in caplog.records)
    assert_holds(fstore.root, BODY)


def test_retry_after_is_capped(root: Path, server: Server) -> None:
    """A Retry-After of an hour waits only retry_after_max (urllib3 would wait up to 6 h)."""
    url = server.add("/a.bin", BODY, Reply(status=503, headers={"Retry-After": "3600"}))
    with cas.Store.open(root, downloader=fast(root, retry_after_max=1)) as store:
        started = time.monotonic()
        assert store.fetch(url) == _b3(BODY)
        assert time.monotonic() - started < 4
    assert server.requests("/a.bin") == 2


def test_500_then_success(fstore: cas.Store, server: Server) -> None:
    """A 5xx is retried with backoff."""
    url = server.add("/a.bin", BODY, Reply(status=500))
    assert fstore.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    assert [s.status for s in server.seen("/a.bin")] == [500, 200]
    assert fstore.stats().counters[cas.Counter.DOWNLOAD_RETRIES] == 1
    assert_holds(fstore.root, BODY)


def test_500_every_time_fails_after_the_retries(fstore: cas.Store, server: Server) -> None:
    """retries further attempts, then a DownloadError with the URL, status and attempts."""
    url = server.add("/a.bin", BODY, *[Reply(status=500)] * 10)
    with pytest.raises(cas.DownloadError, match="HTTP 500") as info:
        fstore.fetch(url)
    assert (info.value.url, info.value.status, info.value.attempts) == (url, 500, 4)
    assert server.requests("/a.bin") == 4
    assert fstore.stats().counters[cas.Counter.DOWNLOADS_FAILED] == 1
    assert_holds(fstore.root)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_permanent_statuses_are_not_retried(fstore: cas.Store, server: Server,
                                            status: int) -> None:
    """400, 401, 403, 404 and 410 fail at once."""
    url = server.add("/a.bin", BODY, Reply(status=status))
    with pytest.raises(cas.DownloadError, match=f"HTTP {status}") as info:
        fstore.fetch(url)
    assert (info.value.status, info.value.attempts) == (status, 1)
    assert server.requests("/a.bin") == 1
    assert_holds(fstore.root)


def test_redirects_are_followed(fstore: cas.Store, server: Server) -> None:
    """An http redirect to another path is followed."""
    server.add("/old", b"", Reply(status=301, headers={"Location": "/new"}))
    server.add("/new", BODY)
    assert fstore.fetch(server.url("/old")) == _b3(BODY)
    assert server.requests("/old") == 1 and server.requests("/new") == 1


def test_redirect_loop_is_refused(fstore: cas.Store, server: Server) -> None:
    """A redirect loop ends after max_redirects with a clear error."""
    url = server.add("/loop", b"", *[Reply(status=302, headers={"Location": "/loop"})] * 30)
    with pytest.raises(cas.DownloadError, match="more than 10 redirects") as info:
        fstore.fetch(url)
    assert info.value.attempts == 1 and server.requests("/loop") == 11
    assert_holds(fstore.root)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_redirect_to_another_scheme_is_refused(fstore: cas.Store, server: Server,
                                               target: str) -> None:
    """A redirect to file:// or ftp:// is refused by name, not as "No host specified"."""
    url = server.add("/a.bin", b"", Reply(status=302, headers={"Location": target}))
    with pytest.raises(cas.DownloadError, match=f"redirects to {target}; only http and https"):
        fstore.fetch(url)
    assert server.requests("/a.bin") == 1
    assert_holds(fstore.root)


# -- content checks --------------------------------------------------------------------------------


def test_content_not_matching_the_digest_is_refused(fstore: cas.Store, server: Server) -> None:
    """Wrong content raises IntegrityError, is not retried, and leaves nothing behind."""
    url = server.add("/a.bin", BODY)
    with pytest.raises(cas.IntegrityError, match="SHA-256") as info:
        fstore.fetch(url, sha256="0" * 64, name="wrong")
    assert info.value.found == _sha(BODY)
    assert server.requests("/a.bin") == 1
    assert fstore.entries() == []
    assert_holds(fstore.root)


def test_wrong_length_fails_before_the_body(fstore: cas.Store, server: Server) -> None:
    """A Content-Length other than the expected size fails at once."""
    url = server.add("/a.bin", BODY)
    with pytest.raises(cas.IntegrityError, match=f"expected {len(BODY) + 1}"):
        fstore.fetch(url, size=len(BODY) + 1)
    assert server.requests("/a.bin") == 1
    assert_holds(fstore.root)


def test_gzip_content_encoding_is_stored_as_sent(fstore: cas.Store, server: Server) -> None:
    """A .gz served with Content-Encoding: gzip is kept as the bytes its checksum names."""
    packed = gzip.compress(BODY)
    url = server.add("/data.gz", packed, encoding="gzip")
    assert fstore.fetch(url, sha256=_sha(packed)) == _b3(packed)
    assert server.seen("/data.gz")[0].headers["accept-encoding"] == "identity"
    assert_holds(fstore.root, packed)


def test_gzip_body_is_never_resumed(fstore: cas.Store, server: Server) -> None:
    """Range offsets of an encoded body are ambiguous: an interrupted one starts again."""
    packed = gzip.compress(BODY)
    url = server.add("/data.gz", packed, Reply(cut_after=1000, reset=True), encoding="gzip")
    assert fstore.fetch(url, sha256=_sha(packed)) == _b3(packed)
    assert [s.range for s in server.seen("/data.gz")] == [None, None]
    assert_holds(fstore.root, packed)


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    yield from serve(context)


def test_untrusted_certificate_is_refused_without_retries(root: Path,
                                                          tls_server: Server) -> None:
    """A certificate from an unknown CA fails once, not retries+1 times."""
    url = tls_server.add("/a.bin", BODY)
    with (cas.Store.open(root, downloader=fast(root, retries=3)) as store,
          pytest.raises(cas.DownloadError, match="certificate") as info):
        store.fetch(url)
    assert info.value.attempts == 1 and tls_server.connections == 1
    assert_holds(root)


def test_configured_ca_is_accepted(root: Path, tls_server: Server, ca: trustme.CA,
                                   tmp_path: Path) -> None:
    """With the CA bundle configured, the same server is trusted."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    url = tls_server.add("/a.bin", BODY)
    with cas.Store.open(root, downloader=fast(root, ca_bundle=bundle)) as store:
        assert store.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    assert_holds(root, BODY)


def test_https_redirect_to_plain_http_is_refused(root: Path, tls_server: Server, server: Server,
                                                ca: trustme.CA, tmp_path: Path) -> None:
    """An https URL redirecting to http would bring the content unprotected: refused by name,
    and the http server never asked; an https to https redirect is followed."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    plain = server.add("/a.bin", BODY)
    url = tls_server.add("/old", b"", Reply(status=302, headers={"Location": plain}))
    tls_server.add("/moved", b"", Reply(status=301, headers={"Location": "/new"}))
    tls_server.add("/new", BODY)
    with cas.Store.open(root, downloader=fast(root, ca_bundle=bundle)) as store:
        with pytest.raises(cas.DownloadError, match="from https to plain http") as info:
            store.fetch(url)
        assert info.value.attempts == 1 and server.requests("/a.bin") == 0
        assert_holds(root)
        assert store.fetch(tls_server.url("/moved")) == _b3(BODY)


# -- single flight ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import cas
    from cas.storage.layout import Layout
    from cas.transfer.http import Downloader
    root, url, lock, ready, go = sys.argv[1:6]
    layout = Layout(pathlib.Path(root))
    store = cas.Store.open(root, downloader=Downloader(layout.tmp, layout.locks, lock=lock == "1",
                                                       backoff_factor=0.01))
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.002)
    print(store.fetch(url), flush=True)
    store.close()
""")


def _children(root: Path, url: str, count: int, lock: bool, tmp_path: Path) -> list[str]:
    """Start ``count`` processes, release them at once, and return what each printed."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), url, "1" if lock else "0",
             str(tmp_path / f"ready{index}"), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for index in range(count)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(count)):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    return outputs


def test_eight_processes_transfer_once(root: Path, server: Server, tmp_path: Path) -> None:
    """Eight processes fetching one URL at once: one transfer, eight right digests."""
    body = os.urandom(512 * 1024)
    url = server.add("/big", body, chunk=32 * 1024, delay=0.02)
    cas.Store.open(root).close()
    assert _children(root, url, 8, True, tmp_path) == [_b3(body)] * 8
    assert server.requests("/big") == 1 and server.sent("/big") == len(body)
    assert_holds(root, body)


def test_eight_processes_without_the_lock_still_agree(root: Path, server: Server,
                                                      tmp_path: Path) -> None:
    """With the lock disabled (as on a filesystem ignoring flock), more transfers may happen,
    but every process gets the right digest and blobs/ holds one verified file."""
    body = os.urandom(512 * 1024)
    url = server.add("/big", body, chunk=32 * 1024, delay=0.02)
    cas.Store.open(root).close()
    assert _children(root, url, 8, False, tmp_path) == [_b3(body)] * 8
    assert 1 <= server.requests("/big") <= 8
    assert all(s.range is None for s in server.seen("/big"))  # nobody touched another's partial
    assert_holds(root, body)


def test_threads_transfer_once(fstore: cas.Store, server: Server) -> None:
    """Eight threads asking for one expected digest from two URLs: one transfer."""
    server.add("/one", BODY, chunk=16 * 1024, delay=0.01)
    server.add("/two", BODY, chunk=16 * 1024, delay=0.01)
    results: list[str] = []

    def work(index: int) -> None:
        results.append(fstore.fetch(server.url("/one" if index % 2 else "/two"),
                                    blake3=_b3(BODY)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [_b3(BODY)] * 8
    assert server.requests("/one") + server.requests("/two") == 1
    assert_holds(fstore.root, BODY)


def test_a_live_owners_partial_is_not_taken(root: Path, server: Server) -> None:
    """Without the lock, a second download does not append to a partial still being written."""
    url = server.add("/slow", BODY, chunk=8 * 1024, delay=0.02)
    with cas.Store.open(root, downloader=fast(root, lock=False)) as store:
        first = threading.Thread(target=store.fetch, args=(url,))
        first.start()
        while (not list(Layout(root).tmp.glob(f"*{PARTIAL_SUFFIX}"))
               or server.sent("/slow") < 16 * 1024):
            time.sleep(0.01)
        assert store.fetch(url) == _b3(BODY)
        first.join()
    assert [s.range for s in server.seen("/slow")] == [None, None]
    assert_holds(root, BODY)


def test_killed_downloader_is_resumed_by_the_next_process(root: Path, server: Server,
                                                          tmp_path: Path) -> None:
    """SIGKILL half-way: the partial outlives its process; the next one fetches only the rest
    (counted on the server), and the lock of the dead process does not block it."""
    body = os.urandom(1024 * 1024)
    url = server.add("/big", body, chunk=16 * 1024, delay=0.01)
    (tmp_path / "go").touch()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), url, "1", str(tmp_path / "ready"),
         str(tmp_path / "go")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while max((p.stat().st_size for p in Layout(root).tmp.glob(f"*{PARTIAL_SUFFIX}")),
              default=0) < 300_000:
        assert time.monotonic() < deadline and child.poll() is None, "no partial appeared"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    server.update("/big", delay=0.0)
    with cas.Store.open(root, downloader=fast(root)) as store:
        assert store.fetch(url, sha256=_sha(body)) == _b3(body)
    _, second = server.seen("/big")
    offset = int(second.range.removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert offset >= 300_000
    assert second.status == 206 and second.sent == len(body) - offset
    assert_holds(root, body)


def test_a_stopped_downloader_does_not_block_the_others(root: Path, server: Server,
                                                         tmp_path: Path) -> None:
    """SIGSTOP a process holding the single-flight lock mid-download: another fetch of the URL
    stops waiting once the holder shows no progress for download_timeout, and downloads on its
    own staging file (its partial is a live owner's, not taken); SIGCONT lets the first finish
    too, and both agree."""
    body = os.urandom(1024 * 1024)
    url = server.add("/big", body, chunk=8 * 1024, delay=0.02)
    (tmp_path / "go").touch()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), url, "1", str(tmp_path / "ready"),
         str(tmp_path / "go")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while max((p.stat().st_size for p in Layout(root).tmp.glob(f"*{PARTIAL_SUFFIX}")),
                  default=0) < 100_000:
            assert time.monotonic() < deadline and child.poll() is None, "no partial appeared"
            time.sleep(0.005)
        child.send_signal(signal.SIGSTOP)
        server.update("/big", delay=0.0)
        results: list[str] = []
        with cas.Store.open(root, downloader=fast(root, timeout=1.0)) as store:
            waiter = threading.Thread(target=lambda: results.append(store.fetch(url)),
                                      daemon=True)
            waiter.start()
            waiter.join(timeout=60)  # a liveness bound, far above the one second it needs
            assert results == [_b3(body)], "the fetch still waits for the stopped process"
    finally:
        child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    assert out.decode().strip() == _b3(body)
    _, second = server.seen("/big")
    assert second.range is None and second.sent == len(body)  # its own file, from zero
    assert_holds(root, body)


def test_download_lock_files_do_not_pile_up(fstore: cas.Store, server: Server) -> None:
    """Each fetch takes a lock per URL and per digest; none of them is left in tmp/locks."""
    before = set(os.listdir(Layout(fstore.root).locks))
    for index in range(30):
        content = BODY[: 1000 + index]
        fstore.fetch(server.add(f"/f{index}", content), sha256=_sha(content))
    assert set(os.listdir(Layout(fstore.root).locks)) == before


LOCKER = textwrap.dedent("""
    import pathlib, sys
    from cas.storage.layout import Layout
    from cas.transfer.http import Downloader
    root, counter, rounds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    downloader = Downloader(Layout(root).tmp, Layout(root).locks)
    for _ in range(rounds):
        with downloader.single_flight(["url:http://x/", "blake3:" + "0" * 64]):
            value = int(counter.read_text())  # read, then write: lost updates unless exclusive
            counter.write_text(str(value + 1))
""")


def test_single_flight_stays_exclusive_while_its_lock_files_come_and_go(tmp_path: Path) -> None:
    """Lock files are unlinked at each release; four processes taking the same locks 150 times
    each still never overlap (a waiter that locked an unlinked file starts over)."""
    locks = Layout(tmp_path).locks
    locks.mkdir(parents=True)
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [
        subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path), str(counter), "150"],
                         stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert counter.read_text() == "600"
    assert os.listdir(locks) == []
