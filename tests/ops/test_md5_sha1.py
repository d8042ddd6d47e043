"""MD5 and SHA-1 as expected hashes, beside SHA-256 and BLAKE3.

Each is verified while the content streams in (one pass with BLAKE3), a mismatch is an
IntegrityError naming the algorithm and both values with nothing published, and a verified one
is kept as an alias of the BLAKE3 digest: a later fetch that knows only the MD5 or SHA-1 is
served from the store without network. Through the API, the CLI and a manifest, against a
real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.storage.layout import Layout

from tests.conftest import blob_files, run_cas
from tests.httpserver import Server, serve

ALGORITHMS = ("md5", "sha1", "sha256")
LABELS = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256"}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


def _hex(algorithm: str, data: bytes) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def _aliases(root: Path) -> set[tuple[str, str, str]]:
    db = sqlite3.connect(Layout(root).catalog)
    rows = db.execute("SELECT algorithm, value, digest FROM aliases").fetchall()
    db.close()
    return set(rows)


def _names(root: Path) -> list[str]:
    db = sqlite3.connect(Layout(root).catalog)
    rows = db.execute("SELECT name FROM names").fetchall()
    db.close()
    return [name for (name,) in rows]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=0, max_size=3000), algorithm=st.sampled_from(ALGORITHMS),
       upper=st.booleans())
def test_a_checksum_is_verified_kept_and_serves_a_later_fetch_offline(
    tmp_path_factory: pytest.TempPathFactory, server: Server, body: bytes, algorithm: str,
    upper: bool,
) -> None:
    """A fetch expecting only an MD5, SHA-1 or SHA-256 (any case) downloads once, records the
    checksum as an alias, and a later fetch of another URL with the same checksum is answered
    from the store without a request."""
    root = tmp_path_factory.mktemp("cold")
    first = server.add(f"/{root.name}/a", body)
    other = server.add(f"/{root.name}/b", body)
    value = _hex(algorithm, body)
    given_value = value.upper() if upper else value
    with cas.Store.open(root) as store:
        digest = store.fetch(first, **{algorithm: given_value})
    assert digest == blake3.blake3(body).hexdigest()
    assert (algorithm, value, digest) in _aliases(root)
    with cas.Store.open(root) as store:  # another store object: the catalog remembers
        assert store.fetch(other, name="again", **{algorithm: value}) == digest
    assert server.requests(f"/{root.name}/a") == 1
    assert server.requests(f"/{root.name}/b") == 0


def test_all_checksums_at_once_are_verified_in_one_download(root: Path, server: Server) -> None:
    """MD5, SHA-1 and SHA-256 expected together are all verified and all kept as aliases."""
    body = os.urandom(300_000)
    url = server.add("/all.bin", body)
    with cas.Store.open(root) as store:
        digest = store.fetch(url, **{a: _hex(a, body) for a in ALGORITHMS})
    assert server.requests("/all.bin") == 1
    assert {(a, _hex(a, body), digest) for a in ALGORITHMS} <= _aliases(root)


@pytest.mark.parametrize("algorithm", ["md5", "sha1"])
def test_a_wrong_checksum_names_the_algorithm_and_both_values_and_publishes_nothing(
    root: Path, server: Server, algorithm: str
) -> None:
    """A download whose MD5 or SHA-1 is not the expected one is refused: the IntegrityError
    names the algorithm, the expected and the found value; no blob, name or alias is kept,
    even though its SHA-256 (also expected) was right."""
    body = os.urandom(50_000)
    url = server.add(f"/wrong-{algorithm}.bin", body)
    wrong = _hex(algorithm, body + b"x")
    with cas.Store.open(root) as store, pytest.raises(cas.IntegrityError) as caught:
        store.fetch(url, name="fx", sha256=_hex("sha256", body), **{algorithm: wrong})
    message = str(caught.value)
    assert LABELS[algorithm] in message and wrong in message and _hex(algorithm, body) in message
    assert caught.value.expected == wrong
    assert blob_files(root) == [] and _names(root) == [] and _aliases(root) == set()


@pytest.mark.parametrize("algorithm", ["md5", "sha1"])
def test_a_stored_blob_is_checked_against_a_checksum_without_network(
    root: Path, server: Server, algorithm: str
) -> None:
    """With the BLAKE3 stored, an expected MD5 or SHA-1 not yet known is computed from the
    blob's file: right, it is recorded; wrong, the fetch is refused and nothing recorded; no
    request either way."""
    body = os.urandom(10_000)
    url = server.add(f"/stored-{algorithm}.bin", body)
    with cas.Store.open(root) as store:
        digest = store.put(body)
        with pytest.raises(cas.IntegrityError, match=LABELS[algorithm]):
            store.fetch(url, blake3=digest, **{algorithm: _hex(algorithm, b"other")})
        assert _aliases(root) == set()
        assert store.fetch(url, blake3=digest, **{algorithm: _hex(algorithm, body)}) == digest
    assert (algorithm, _hex(algorithm, body), digest) in _aliases(root)
    assert server.requests(f"/stored-{algorithm}.bin") == 0


def test_a_named_blob_is_found_by_its_md5_without_network(root: Path, server: Server) -> None:
    """A fetch knowing only an MD5 hashes the blob its name points at before downloading:
    content put under that name is served, and the MD5 becomes its alias."""
    body = os.urandom(20_000)
    url = server.add("/named.bin", body)
    with cas.Store.open(root) as store:
        digest = store.put(body, name="fx")
        assert store.fetch(url, name="fx", md5=_hex("md5", body)) == digest
    assert server.requests("/named.bin") == 0
    assert ("md5", _hex("md5", body), digest) in _aliases(root)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"md5": "ab"}, "md5 'ab' is not 32 hexadecimal digits"),
        ({"md5": "0" * 40}, "is not 32 hexadecimal digits"),
        ({"sha1": "g" * 40}, "sha1 '" + "g" * 40 + "' is not 40 hexadecimal digits"),
        ({"sha1": "0" * 32}, "is not 40 hexadecimal digits"),
    ],
)
def test_a_malformed_checksum_is_a_one_line_usage_error(
    root: Path, server: Server, keywords: dict[str, str], message: str
) -> None:
    """Bad hex or a wrong length for the algorithm is a UsageError before any request."""
    url = server.add("/never.bin", b"x")
    with cas.Store.open(root) as store, pytest.raises(cas.UsageError) as caught:
        store.fetch(url, **keywords)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert server.requests("/never.bin") == 0


def test_cli_fetch_takes_md5_and_sha1(root: Path, server: Server) -> None:
    """`cas fetch --md5 H --sha1 H` prints the digest; a second fetch of another URL with the
    same --md5 alone is served without network."""
    body = os.urandom(5000)
    url = server.add("/cli.bin", body)
    result = run_cas("fetch", url, "--md5", _hex("md5", body), "--sha1", _hex("sha1", body),
                     root=root)
    assert result.returncode == 0, result.stderr
    digest = result.stdout.decode().strip()
    assert digest == blake3.blake3(body).hexdigest()
    again = run_cas("fetch", server.url("/nowhere.bin"), "--md5", _hex("md5", body), root=root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().strip() == digest
    assert server.requests("/nowhere.bin") == 0


@pytest.mark.parametrize("option", ["--md5", "--sha1"])
def test_cli_fetch_refuses_a_wrong_checksum_with_status_4(
    root: Path, server: Server, option: str
) -> None:
    """A wrong --md5 or --sha1 exits 4 with one line naming the algorithm and both values."""
    body = os.urandom(5000)
    url = server.add(f"/cli-wrong{option}.bin", body)
    algorithm = option[2:]
    wrong = _hex(algorithm, b"nope")
    result = run_cas("fetch", url, option, wrong, root=root)
    assert result.returncode == 4
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: ")
    assert LABELS[algorithm] in lines[0] and wrong in lines[0]
    assert _hex(algorithm, body) in lines[0]
    assert blob_files(root) == []


def test_cli_fetch_refuses_malformed_md5_with_status_2(root: Path, server: Server) -> None:
    """A malformed --md5 exits 2 with one line, before any request."""
    url = server.add("/cli-bad.bin", b"x")
    result = run_cas("fetch", url, "--md5", "xyz", root=root)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "md5 'xyz' is not 32 hexadecimal digits" in lines[0]
    assert server.requests("/cli-bad.bin") == 0


def _manifest(path: Path, entries: dict[str, dict[str, str]]) -> Path:
    lines = []
    for name, entry in entries.items():
        lines.append(f'[fixtures."{name}"]')
        lines += [f'{key} = "{value}"' for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_md5_and_sha1_entries_sync_then_serve_from_the_store(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """Manifest keys md5 and sha1 are verified by sync (API and CLI); a second sync makes no
    request, and a wrong one fails that fixture alone with the algorithm named."""
    one, two, three = os.urandom(4000), os.urandom(4000), os.urandom(4000)
    manifest = _manifest(tmp_path / "m.toml", {
        "a/one": {"url": server.add("/m/one", one), "md5": _hex("md5", one)},
        "a/two": {"url": server.add("/m/two", two), "sha1": _hex("sha1", two).upper()},
    })
    with cas.Store.open(root) as store:
        assert store.sync(manifest) == {"a/one": blake3.blake3(one).hexdigest(),
                                        "a/two": blake3.blake3(two).hexdigest()}
    result = run_cas("sync", str(manifest), root=root)
    assert result.returncode == 0, result.stderr
    assert server.requests("/m/one") == server.requests("/m/two") == 1
    bad = _manifest(tmp_path / "bad.toml", {
        "a/three": {"url": server.add("/m/three", three), "sha1": _hex("sha1", one)},
    })
    result = run_cas("sync", str(bad), root=root)
    assert result.returncode != 0
    assert "SHA-1" in result.stderr.decode() and _hex("sha1", one) in result.stderr.decode()
    assert "a/three" not in _names(root)


def test_concurrent_fetches_expecting_one_md5_transfer_once(root: Path, server: Server) -> None:
    """Eight threads fetching two URLs of the same content, each expecting only its MD5, make
    one request between them (the single-flight lock is keyed by the MD5 too)."""
    import threading

    body = os.urandom(400_000)
    urls = [server.add("/flight-a.bin", body, delay=0.01), server.add("/flight-b.bin", body)]
    md5 = _hex("md5", body)
    results: list[str] = []
    with cas.Store.open(root) as store:
        def one(index: int) -> None:
            results.append(store.fetch(urls[index % 2], md5=md5))

        threads = [threading.Thread(target=one, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [blake3.blake3(body).hexdigest()] * 8
    assert server.requests("/flight-a.bin") + server.requests("/flight-b.bin") == 1
