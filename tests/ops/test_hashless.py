"""Manifest entries without a hash.

An entry with only a ``url`` (and perhaps a ``size``) is legal. Its first sync records the
digest it got (the name and the URL's source remember it); later syncs are served that content
from the store without network, even after the origin changed, and a re-download after
eviction must give that same content again, or fail saying how to take the new one. Through
the API, the CLI and FixtureSession, against a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.harness import FixtureSession

from tests.clock import Clock
from tests.conftest import run_cas
from tests.httpserver import Server, serve


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _manifest(path: Path, entries: dict[str, dict[str, object]]) -> Path:
    lines = []
    for name, entry in entries.items():
        lines.append(f'[fixtures."{name}"]')
        for key, value in entry.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.binary(max_size=2000), min_size=1, max_size=4),
       with_size=st.booleans())
def test_hashless_entries_are_fetched_once_then_served_from_the_store(
    tmp_path_factory: pytest.TempPathFactory, server: Server, bodies: list[bytes],
    with_size: bool,
) -> None:
    """Entries with only a url (and perhaps a size) sync; a second sync, from another store
    object, makes no request and reports every fixture present with the same digests."""
    root = tmp_path_factory.mktemp("hashless")
    entries: dict[str, dict[str, object]] = {}
    for index, body in enumerate(bodies):
        entry: dict[str, object] = {"url": server.add(f"/{root.name}/{index}", body)}
        if with_size:
            entry["size"] = len(body)
        entries[f"data/{index}.bin"] = entry
    manifest = _manifest(root / "m.toml", entries)
    with cas.Store.open(root / "store") as store:
        first = store.sync_report(manifest)
    assert first.digests == {f"data/{i}.bin": _b3(body) for i, body in enumerate(bodies)}
    assert not first.failed
    with cas.Store.open(root / "store") as store:
        second = store.sync_report(manifest)
    assert second.digests == first.digests and second.fetched == []
    assert sorted(second.present) == sorted(entries)
    assert all(server.requests(f"/{root.name}/{i}") == 1 for i in range(len(bodies)))


def test_cli_sync_of_a_hashless_manifest(root: Path, tmp_path: Path, server: Server) -> None:
    """`cas sync` takes a hash-less manifest; a second run makes no request; `cas path` of the
    name gives the bytes."""
    body = os.urandom(3000)
    manifest = _manifest(tmp_path / "m.toml", {"cli/a": {"url": server.add("/cli-a", body)}})
    for _ in range(2):
        result = run_cas("sync", str(manifest), root=root)
        assert result.returncode == 0, result.stderr
    assert server.requests("/cli-a") == 1
    path = run_cas("path", "cli/a", root=root).stdout.decode().strip()
    assert Path(path).read_bytes() == body


def test_a_changed_origin_does_not_change_a_stored_hashless_fixture(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """After the origin changed, a sync still serves what the first sync recorded, without a
    request (API and CLI)."""
    old, new = os.urandom(2000), os.urandom(2000)
    manifest = _manifest(tmp_path / "m.toml", {"fx": {"url": server.add("/changes", old)}})
    with cas.Store.open(root) as store:
        assert store.sync(manifest) == {"fx": _b3(old)}
    server.update("/changes", body=new, etag='"v2"')
    with cas.Store.open(root) as store:
        assert store.sync(manifest) == {"fx": _b3(old)}
        assert store.read_bytes("fx") == old
    result = run_cas("sync", str(manifest), root=root)
    assert result.returncode == 0, result.stderr
    assert server.requests("/changes") == 1


def _evict_everything(root: Path) -> None:
    clock = Clock()
    with cas.Store.open(root, clock=clock) as store:
        clock.advance(365 * 86400)
        store.gc(max_age=1)
        assert store.entries() == [] or all(e.size is None for e in store.entries())


def test_an_evicted_hashless_fixture_comes_back_as_the_same_content(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """Evicted, a hash-less fixture is downloaded again and checked against the digest its
    first sync recorded; same content: fine, the name keeps it."""
    body = os.urandom(2000)
    manifest = _manifest(tmp_path / "m.toml", {"fx": {"url": server.add("/same", body)}})
    with cas.Store.open(root) as store:
        store.sync(manifest)
    _evict_everything(root)
    with cas.Store.open(root) as store:
        report = store.sync_report(manifest)
    assert report.fetched == ["fx"] and report.digests == {"fx": _b3(body)}
    assert server.requests("/same") == 2


def test_an_evicted_hashless_fixture_whose_origin_changed_fails_until_updated(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """Evicted, and the origin now gives other bytes: the sync fails that fixture with an
    IntegrityError that says how to take the new content, stores none of it, and the name
    still holds the recorded digest (API and CLI, exit 1 for a failed sync)."""
    old, new = os.urandom(2000), os.urandom(2000)
    manifest = _manifest(tmp_path / "m.toml", {"fx": {"url": server.add("/moved", old)}})
    with cas.Store.open(root) as store:
        store.sync(manifest)
    _evict_everything(root)
    server.update("/moved", body=new, etag='"v2"')
    with cas.Store.open(root) as store:
        report = store.sync_report(manifest)
        error = report.failed["fx"]
        assert isinstance(error, cas.IntegrityError)
        assert "cas sync --update" in str(error) and _b3(old) in str(error)
        assert [e.digest for e in store.entries() if e.name == "fx"] == [_b3(old)]
        with pytest.raises(cas.NotFound):
            store.read_bytes(_b3(new))
    result = run_cas("sync", str(manifest), root=root)
    assert result.returncode == 1
    assert "cas sync --update" in result.stderr.decode()


def test_a_name_moved_elsewhere_takes_the_url_content_again(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """A name that no longer holds content from the entry's URL (put under it since) is
    pointed back at what the URL gives."""
    body = os.urandom(2000)
    manifest = _manifest(tmp_path / "m.toml", {"fx": {"url": server.add("/back", body)}})
    with cas.Store.open(root) as store:
        store.sync(manifest)
        store.put(b"something else", name="fx")
        assert store.sync(manifest) == {"fx": _b3(body)}
        assert store.read_bytes("fx") == body


def test_fixture_session_serves_a_hashless_manifest_entry(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """FixtureSession (the pytest plugin's engine) returns a hash-less fixture's path, fetched
    once, and with auto_download off serves it from the store by name."""
    body = os.urandom(2000)
    manifest = _manifest(tmp_path / "m.toml", {"s/fx": {"url": server.add("/session", body)}})
    with FixtureSession.open(manifest, root=root) as session:
        assert session.path("s/fx").read_bytes() == body
    with FixtureSession.open(manifest, root=root, auto_download=False) as session:
        assert session.path("s/fx").read_bytes() == body
    assert server.requests("/session") == 1


def test_an_offline_sync_serves_hashless_entries_from_the_store(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """Once synced, a hash-less manifest syncs offline (API and CLI) without a request; an
    entry never fetched is a NotFound saying cas is offline."""
    body = os.urandom(1500)
    manifest = _manifest(tmp_path / "m.toml", {"off/a": {"url": server.add("/off-a", body)}})
    with cas.Store.open(root) as store:
        store.sync(manifest)
    with cas.Store.open(root, offline=True) as store:
        assert store.sync(manifest) == {"off/a": _b3(body)}
    assert run_cas("--offline", "sync", str(manifest), root=root).returncode == 0
    assert server.requests("/off-a") == 1
    more = _manifest(tmp_path / "more.toml", {"off/b": {"url": server.add("/off-b", body)}})
    with cas.Store.open(root, offline=True) as store:
        report = store.sync_report(more)
    assert isinstance(report.failed["off/b"], cas.NotFound)
    assert "offline" in str(report.failed["off/b"])
    assert server.requests("/off-b") == 0
