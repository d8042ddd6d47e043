"""Refresh: a URL fetched without an expected digest is revalidated with a conditional request.

Against tests/httpserver.py, which honours If-None-Match and If-Modified-Since with a 304 and
records the body bytes it sends: unchanged content costs a 304 and no body, changed content is
stored and the URL's floating names follow it, a server without validators costs a full GET
whose digest decides; many processes refreshing at once send one request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cas

from tests.conftest import run_cas
from tests.httpserver import Reply, Server, serve

OLD = os.urandom(50_000)
NEW = os.urandom(60_000)


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAS_OFFLINE", raising=False)


# -- the API ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "last_modified", "condition"),
    [('"v1"', None, "if-none-match"), (None, "Mon, 02 Jan 2006 15:04:05 GMT", "if-modified-since"),
     ('W/"weak"', "Mon, 02 Jan 2006 15:04:05 GMT", "if-none-match")],
)  # fmt: skip
def test_unchanged_costs_a_304_and_no_body(root: Path, server: Server, etag: str | None,
                                           last_modified: str | None, condition: str) -> None:
    """A refresh of unchanged content sends the stored validator, gets a 304, receives no
    body, and keeps the stored digest and name."""
    url = server.add("/a.bin", OLD, etag=etag, last_modified=last_modified)
    with cas.Store.open(root) as store:
        assert store.fetch(url, name="a") == _b3(OLD)
        assert store.fetch(url, name="a", refresh=True) == _b3(OLD)
        assert store.read_bytes("a") == OLD
        downloaded = store.stats().as_dict()["counters"]["downloaded_bytes"]
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 304]
    assert condition in seen[1].headers
    assert server.sent("/a.bin") == len(OLD) and server.bodies("/a.bin") == 1
    assert downloaded == len(OLD)


def test_changed_content_is_stored_and_names_follow(root: Path, server: Server) -> None:
    """A 200 to the conditional request stores the new content; the refreshed name and every
    other name fetched from the URL without a digest follow it, a name fetched with an
    expected digest stays; the old content stays stored (cleanup decides)."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root) as store:
        store.fetch(url, name="a")
        store.fetch(url, name="also")
        store.fetch(url, name="fixed", blake3=_b3(OLD))
        server.update("/a.bin", body=NEW, etag='"v2"')
        assert store.fetch(url, refresh=True) == _b3(NEW)
        assert store.read_bytes("a") == NEW and store.read_bytes("also") == NEW
        assert store.read_bytes("fixed") == OLD
        assert store.read_bytes(_b3(OLD)) == OLD
        assert store.fetch(url) == _b3(NEW)  # without refresh: served from the store
        # the new validator is the one sent next time
        assert store.fetch(url, name="a", refresh=True) == _b3(NEW)
    assert [s.status for s in server.seen("/a.bin")] == [200, 200, 304]
    assert server.seen("/a.bin")[1].headers["if-none-match"] == '"v1"'
    assert server.seen("/a.bin")[2].headers["if-none-match"] == '"v2"'


def test_without_validators_a_full_get_decides(root: Path, server: Server) -> None:
    """A server that sends neither ETag nor Last-Modified costs a whole GET per refresh: the
    same bytes keep the digest, other bytes are stored as new content."""
    url = server.add("/plain", OLD, etag=None, last_modified=None)
    with cas.Store.open(root) as store:
        store.fetch(url, name="p")
        assert store.fetch(url, name="p", refresh=True) == _b3(OLD)
        server.update("/plain", body=NEW)
        assert store.fetch(url, name="p", refresh=True) == _b3(NEW)
        assert store.read_bytes("p") == NEW
    seen = server.seen("/plain")
    assert [s.status for s in seen] == [200, 200, 200]
    assert not any("if-none-match" in s.headers or "if-modified-since" in s.headers
                   for s in seen)  # fmt: skip
    assert server.sent("/plain") == 2 * len(OLD) + len(NEW)


def test_a_server_ignoring_the_condition_still_gives_the_right_content(
    root: Path, server: Server
) -> None:
    """A 200 to a conditional request (a server that ignores it) is a full download."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root) as store:
        store.fetch(url, name="a")
        server.script("/a.bin", Reply(ignore_conditions=True))
        assert store.fetch(url, name="a", refresh=True) == _b3(OLD)
    assert [s.status for s in server.seen("/a.bin")] == [200, 200]


def test_without_refresh_nothing_is_asked(root: Path, server: Server) -> None:
    """Without refresh a URL whose content is stored is served from the store, unchanged."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root) as store:
        store.fetch(url, name="a")
        server.update("/a.bin", body=NEW, etag='"v2"')
        assert store.fetch(url, name="a") == _b3(OLD)
        assert store.path("a").read_bytes() == OLD
    assert server.requests("/a.bin") == 1


def test_refresh_of_evicted_or_new_content_downloads_unconditionally(
    root: Path, server: Server
) -> None:
    """A URL never fetched, or whose content was evicted, is downloaded whole: a 304 would
    leave nothing to serve."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root, grace_period=0) as store:
        assert store.fetch(url, refresh=True) == _b3(OLD)
        store.gc(max_size=0)
        assert store.fetch(url, refresh=True) == _b3(OLD)
    seen = server.seen("/a.bin")
    assert [s.status for s in seen] == [200, 200]
    assert not any("if-none-match" in s.headers for s in seen)


def test_refresh_with_an_expected_digest_is_a_usage_error(root: Path, server: Server) -> None:
    """An expected digest fixes the content: refresh has nothing to do and says so."""
    url = server.add("/a.bin", OLD)
    with (cas.Store.open(root) as store,
          pytest.raises(cas.UsageError, match="without an expected digest")):
        store.fetch(url, blake3=_b3(OLD), refresh=True)
    assert server.requests("/a.bin") == 0
    result = run_cas("fetch", url, "--sha256", "0" * 64, "--refresh", root=root)
    assert result.returncode == 2
    assert len(result.stderr.decode().splitlines()) == 1


def test_offline_refresh_is_not_found_without_a_request(root: Path, server: Server) -> None:
    """Offline, a refresh is the offline NotFound, even for stored content; no request."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root) as store:
        store.fetch(url)
    with cas.Store.open(root, offline=True) as store:
        with pytest.raises(cas.NotFound, match="cas is offline"):
            store.fetch(url, refresh=True)
        assert store.fetch(url) == _b3(OLD)
    result = run_cas("--offline", "fetch", url, "--refresh", root=root)
    assert result.returncode == 3 and b"cas is offline" in result.stderr
    assert server.requests("/a.bin") == 1


# -- the command line ------------------------------------------------------------------------------


def test_cli_fetch_refresh(root: Path, server: Server) -> None:
    """`cas fetch --refresh` prints the stored digest after a 304, the new one after a change,
    and `cas path NAME` follows."""
    url = server.add("/a.bin", OLD)
    assert run_cas("fetch", url, "--name", "a", root=root).stdout.decode().strip() == _b3(OLD)
    same = run_cas("fetch", url, "--refresh", root=root)
    assert (same.returncode, same.stdout.decode().strip()) == (0, _b3(OLD))
    server.update("/a.bin", body=NEW, etag='"v2"')
    kept = run_cas("fetch", url, root=root)
    assert kept.stdout.decode().strip() == _b3(OLD)
    changed = run_cas("fetch", url, "--refresh", root=root)
    assert (changed.returncode, changed.stdout.decode().strip()) == (0, _b3(NEW))
    path = run_cas("path", "a", root=root).stdout.decode().strip()
    assert Path(path).read_bytes() == NEW
    assert [s.status for s in server.seen("/a.bin")] == [200, 304, 200]


def test_sync_update_refreshes_entries_without_a_hash(root: Path, server: Server,
                                                      tmp_path: Path) -> None:
    """`cas sync` serves hash-less entries from the store; `cas sync --update` revalidates
    them (304 when unchanged, the new content when changed) and leaves hashed ones alone; the
    API's ``sync(update=True)`` does the same."""
    floating = server.add("/floating.bin", OLD)
    fixed = server.add("/fixed.bin", OLD)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(
        f'[fixtures."floating"]\nurl = "{floating}"\n\n'
        f'[fixtures."fixed"]\nurl = "{fixed}"\nblake3 = "{_b3(OLD)}"\n'
    )
    assert run_cas("sync", str(manifest), root=root).returncode == 0
    server.update("/floating.bin", body=NEW, etag='"v2"')
    server.update("/fixed.bin", body=NEW, etag='"v2"')
    plain = run_cas("sync", str(manifest), root=root)
    assert f"{_b3(OLD)}  floating".encode() in plain.stdout
    assert (server.requests("/floating.bin"), server.requests("/fixed.bin")) == (1, 1)
    updated = run_cas("sync", "--update", str(manifest), root=root)
    assert updated.returncode == 0, updated.stderr
    assert f"{_b3(NEW)}  floating".encode() in updated.stdout
    assert f"{_b3(OLD)}  fixed".encode() in updated.stdout
    assert b"1 fetched, 1 already present" in updated.stderr
    assert (server.requests("/floating.bin"), server.requests("/fixed.bin")) == (2, 1)
    with cas.Store.open(root) as store:
        assert store.sync(manifest, update=True) == {"floating": _b3(NEW), "fixed": _b3(OLD)}
        assert store.read_bytes("floating") == NEW
    assert [s.status for s in server.seen("/floating.bin")] == [200, 200, 304]
    assert server.requests("/fixed.bin") == 1


# -- single flight across processes ----------------------------------------------------------------

CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import cas
    root, url, ready, go = sys.argv[1:5]
    store = cas.Store.open(root)
    store.stored(url)  # loads the HTTP client now, so that the refreshes start together
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.002)
    print(store.fetch(url, refresh=True), flush=True)
    store.close()
""")


@pytest.mark.parametrize("changed", [False, True])
def test_processes_refreshing_at_once_send_one_request(root: Path, server: Server,
                                                       tmp_path: Path, changed: bool) -> None:
    """Four processes refreshing one URL at once: one conditional request, every process
    answered with the same (old or new) digest."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root) as store:
        store.fetch(url)
    server.update("/a.bin", pause=1.0, **({"body": NEW, "etag": '"v2"'} if changed else {}))
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(root), url,
                          str(tmp_path / f"ready{index}"), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for index in range(4)
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{index}").exists() for index in range(4)):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    assert outputs == [_b3(NEW if changed else OLD)] * 4
    assert [s.status for s in server.seen("/a.bin")] == [200, 200 if changed else 304]


def test_a_name_held_without_a_digest_keeps_following_its_url(root: Path, server: Server) -> None:
    """A name fetched without a digest holds its first content (served, no request, even once
    the origin changed) and stays floating through those fetches: a later refresh of the URL
    moves it, and `cas sync --update` of a hash-less entry does the same."""
    url = server.add("/a.bin", OLD)
    with cas.Store.open(root, grace_period=0) as store:
        assert store.fetch(url, name="a") == _b3(OLD)
        server.update("/a.bin", body=NEW, etag='"v2"')
        assert store.fetch(url, name="a") == _b3(OLD)  # held: no request
        assert server.requests("/a.bin") == 1
        assert store.fetch(url, refresh=True) == _b3(NEW)  # unnamed refresh of the URL
        assert store.read_bytes("a") == NEW  # the held name followed
        server.update("/a.bin", body=OLD, etag='"v3"')
        manifest = root.parent / "m.toml"
        manifest.write_text(f'[fixtures.a]\nurl = "{url}"\n')
        assert store.sync(manifest) == {"a": _b3(NEW)}  # without --update: what it holds
        assert store.sync(manifest, update=True) == {"a": _b3(OLD)}
        assert store.read_bytes("a") == OLD
