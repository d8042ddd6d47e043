"""Every expected hash is checked against the content.

A fetch, and a FixtureSession with ``auto_download`` off, serve stored content only when it
matches every expected digest and size: a SHA-256 not yet known for the blob is computed from
its file, without network. Content already stored is found by hashing it locally, never by
downloading it again, and a download is never counted as saved by dedup.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cas
from cas.harness import FixtureSession, FixtureUnavailable
from cas.storage.counters import Counter
from cas.storage.layout import Layout

from tests.httpserver import Server, serve

BODY = os.urandom(200_000)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _aliases(root: Path) -> dict[str, str]:
    with sqlite3.connect(Layout(root).catalog) as db:
        rows = db.execute("SELECT value, digest FROM aliases").fetchall()
    db.close()
    return dict(rows)


def _names(root: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(Layout(root).catalog) as db:
        rows = db.execute("SELECT name, digest, sha256 FROM names").fetchall()
    db.close()
    return {name: (digest, sha256) for name, digest, sha256 in rows}


# -- item 3: a wrong sha256 is refused, warm store or cold --------------------------------------


@settings(max_examples=15)
@given(wrong=st.binary(min_size=1, max_size=64).map(_sha), how=st.sampled_from(["put", "fetch"]))
def test_wrong_sha256_is_refused_when_the_blake3_is_stored(
    tmp_path_factory: pytest.TempPathFactory, server: Server, wrong: str, how: str
) -> None:
    """With the blake3 stored (put, or fetched without a sha256), a wrong sha256 is refused
    as a cold store refuses it, without network, and recorded nowhere."""
    root = tmp_path_factory.mktemp("warm")
    url = server.add(f"/{root.name}.bin", BODY)
    with cas.Store.open(root) as store:
        if how == "put":
            store.put(BODY)
        else:
            store.fetch(url, blake3=_b3(BODY))
        before = server.requests(f"/{root.name}.bin")
        with pytest.raises(cas.IntegrityError, match="SHA-256"):
            store.fetch(url, name="fx", blake3=_b3(BODY), sha256=wrong)
        assert server.requests(f"/{root.name}.bin") == before
    assert wrong not in _aliases(root)
    assert "fx" not in _names(root)
    cold_root = tmp_path_factory.mktemp("cold")
    with cas.Store.open(cold_root) as cold, pytest.raises(cas.IntegrityError, match="SHA-256"):
        cold.fetch(url, name="fx", blake3=_b3(BODY), sha256=wrong)


def test_right_sha256_is_checked_once_then_known(root: Path, server: Server) -> None:
    """The right sha256 of a stored blake3 is computed from the blob and recorded, so the
    fixture comes back after eviction, and later sha256-only fetches know it."""
    url = server.add("/right.bin", BODY)
    with cas.Store.open(root, grace_period=0) as store:
        store.put(BODY)
        assert store.fetch(url, name="fx", blake3=_b3(BODY), sha256=_sha(BODY)) == _b3(BODY)
        assert server.requests("/right.bin") == 0
        assert _aliases(root) == {_sha(BODY): _b3(BODY)}
        assert _names(root)["fx"] == (_b3(BODY), _sha(BODY))
        store.gc(max_size=0)
        assert store.read_bytes("fx") == BODY  # fetched again, verified by both digests
        assert server.requests("/right.bin") == 1


def test_wrong_size_of_stored_content_is_refused(root: Path, server: Server) -> None:
    """A stored blake3 with a size it does not have is refused without network."""
    url = server.add("/sized.bin", BODY)
    with cas.Store.open(root) as store:
        store.put(BODY)
        with pytest.raises(cas.IntegrityError, match="bytes"):
            store.fetch(url, name="fx", blake3=_b3(BODY), size=len(BODY) + 1)
    assert server.requests("/sized.bin") == 0 and "fx" not in _names(root)


# -- item 5: content stored already is hashed here, not downloaded again ----------------------


def test_sha256_of_the_urls_stored_content_needs_no_download(root: Path, server: Server) -> None:
    """A fetch that knows only the sha256 of what the same URL gave before hashes the stored
    blob instead of downloading it again, records the alias, and counts nothing as saved."""
    url = server.add("/again.bin", BODY)
    with cas.Store.open(root) as store:
        digest = store.fetch(url)
        assert store.fetch(url, name="fx", sha256=_sha(BODY)) == digest
        assert server.requests("/again.bin") == 1
        counters = store.stats().counters
    assert counters[Counter.DOWNLOADED_BYTES] == len(BODY)
    assert counters[Counter.DEDUP_SAVED_BYTES] == 0
    assert _aliases(root) == {_sha(BODY): digest}
    assert _names(root)["fx"] == (digest, _sha(BODY))


def test_sha256_of_the_names_blob_needs_no_download(root: Path, server: Server) -> None:
    """A fetch naming a stored fixture whose content has the expected sha256 is served from
    it; a name whose content does not match is downloaded over, and the old blob stays."""
    url = server.add("/named.bin", BODY)
    with cas.Store.open(root) as store:
        store.put(BODY, name="fx")
        assert store.fetch(url, name="fx", sha256=_sha(BODY)) == _b3(BODY)
        assert server.requests("/named.bin") == 0
        old = store.put(b"old content", name="other")
        assert store.fetch(url, name="other", sha256=_sha(BODY)) == _b3(BODY)
        assert server.requests("/named.bin") == 0  # known as an alias by now
        assert store.read_bytes(old) == b"old content"


def test_a_download_of_stored_content_saves_nothing(root: Path, server: Server) -> None:
    """Content downloaded although it was stored (nothing told cas it was the same) is not
    counted as saved by dedup: its bytes came over the network."""
    url = server.add("/dup.bin", BODY)
    with cas.Store.open(root) as store:
        store.put(BODY)
        store.fetch(url, sha256=_sha(BODY))
        counters = store.stats().counters
    assert counters[Counter.DOWNLOADED_BYTES] == len(BODY)
    assert counters[Counter.DEDUP_SAVED_BYTES] == 0


# -- item 4: FixtureSession with auto_download off checks every expected value -----------------


def _manifest(tmp_path: Path, url: str, **expected: object) -> Path:
    lines = ['[fixtures."fx"]', f'url = "{url}"']
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in expected.items()]
    path = tmp_path / "fixtures.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "expected",
    [{"sha256": _sha(BODY)}, {"sha256": _sha(BODY), "size": len(BODY)}, {"blake3": _b3(BODY)}],
)
def test_offline_session_never_serves_other_content(
    root: Path, tmp_path: Path, server: Server, expected: dict[str, object]
) -> None:
    """With auto_download off, a name holding other content does not satisfy a manifest
    entry, whatever digests it declares."""
    manifest = _manifest(tmp_path, server.add("/offline.bin", BODY), **expected)
    with cas.Store.open(root) as store:
        store.put(b"something else entirely", name="fx")
    with FixtureSession.open(manifest, root=root, auto_download=False) as session:
        with pytest.raises(FixtureUnavailable, match="auto_download is off"):
            session.path("fx")
        with pytest.raises(FixtureUnavailable, match="not in the store"):
            session.path("fx", **expected)  # type: ignore[arg-type]
    assert server.requests("/offline.bin") == 0


def test_offline_session_checks_the_declared_size(root: Path, tmp_path: Path,
                                                  server: Server) -> None:
    """With auto_download off, stored content of the declared digest but another size is
    refused."""
    manifest = _manifest(tmp_path, server.add("/size.bin", BODY), sha256=_sha(BODY), size=7)
    with cas.Store.open(root) as store:
        store.fetch(server.url("/size.bin"), name="fx", sha256=_sha(BODY))
    session = FixtureSession.open(manifest, root=root, auto_download=False)
    with session, pytest.raises(cas.IntegrityError, match="7"):
        session.path("fx")


def test_offline_session_serves_matching_content_under_any_name(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """With auto_download off, content fetched from the entry's URL without a name or a
    digest satisfies a sha256-only entry: it is hashed, named and served without network."""
    url = server.add("/plain.bin", BODY)
    manifest = _manifest(tmp_path, url, sha256=_sha(BODY))
    with cas.Store.open(root) as store:
        store.fetch(url)
    with FixtureSession.open(manifest, root=root, auto_download=False) as session:
        assert session.path("fx").read_bytes() == BODY
    assert server.requests("/plain.bin") == 1
    assert _names(root)["fx"] == (_b3(BODY), _sha(BODY))


def test_pull_of_a_stored_blob_checks_the_manifest_sha256(
    root: Path, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pull` of a manifest whose blake3 is stored here names the blob only if the entry's
    sha256 is the blob's too: a wrong one fails that fixture and is recorded nowhere."""
    remote = pytest.importorskip("tests.ops.test_remote", reason="the remote tier needs moto")
    moto = remote.moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        remote._aws_env(monkeypatch, tmp_path, f"http://{host}:{port}")
        remote.boto3.client("s3").create_bucket(Bucket="hashes")
        url = server.add("/pulled.bin", BODY)
        wrong = _manifest(tmp_path, url, blake3=_b3(BODY), sha256=_sha(b"other"))
        with cas.Store.open(root, remote="s3://hashes/team") as store:
            store.put(BODY)
            report = store.pull(manifest=wrong)
            assert isinstance(report.failed["fx"], cas.IntegrityError), report.failed
            right = _manifest(tmp_path, url, blake3=_b3(BODY), sha256=_sha(BODY))
            assert store.pull(manifest=right).failed == {}
    finally:
        moto.stop()
    assert _aliases(root) == {_sha(BODY): _b3(BODY)}
    assert _names(root)["fx"] == (_b3(BODY), _sha(BODY))
    assert server.requests("/pulled.bin") == 0


def test_offline_hint_for_an_explicit_url_works(root: Path, server: Server) -> None:
    """The hint for a fixture asked for by URL (no manifest) is a `cas fetch` that, run in a
    shell as given, makes the same request succeed offline."""
    import re
    import shlex
    import subprocess
    import sys

    url = server.add("/explicit.bin", BODY)
    with FixtureSession.open(root=root, auto_download=False) as session:
        with pytest.raises(FixtureUnavailable) as unavailable:
            session.path("ex", url=url, sha256=_sha(BODY))
        hint = re.search(r"run `([^`]+)` beforehand", str(unavailable.value))
        assert hint is not None and shlex.split(hint[1])[:1] == ["cas"]
        done = subprocess.run([sys.executable, "-m", "cas", *shlex.split(hint[1])[1:]],
                              capture_output=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert session.path("ex", url=url, sha256=_sha(BODY)).read_bytes() == BODY
    assert server.requests("/explicit.bin") == 1
