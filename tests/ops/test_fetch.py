"""Fetch policy: what a fetch stores and when it needs the network, named fixtures and
auto-download, manifests and ``cas sync``, and ``cas fetch`` on the command line. How a download
copes with a misbehaving server is in tests/transfer/test_http.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas
import cas.ops.manifest
from cas.progress import TotalBar, TransferBar

from tests.conftest import blob_files, run_cas
from tests.httpserver import Server, serve
from tests.transfer.test_http import BODY, _b3, _sha, assert_holds, fast


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def fstore(root: Path) -> Iterator[cas.Store]:
    with cas.Store.open(root, downloader=fast(root)) as store:
        yield store


# -- the basics ------------------------------------------------------------------------------------


def test_fetch_stores_verifies_and_identifies_itself(fstore: cas.Store, server: Server) -> None:
    """A fetch stores the body under its BLAKE3, sends cas's User-Agent and asks for identity."""
    url = server.add("/a.bin", BODY)
    seen: list[tuple[int, int | None]] = []
    digest = fstore.fetch(url, sha256=_sha(BODY), size=len(BODY),
                          progress=lambda done, total: seen.append((done, total)))
    assert digest == _b3(BODY)
    assert fstore.read_bytes(digest) == BODY
    request = server.seen("/a.bin")[0]
    assert request.headers["user-agent"] == f"cas-fixtures/{cas.__version__}"
    assert request.headers["accept-encoding"] == "identity"
    assert seen[-1] == (len(BODY), len(BODY))
    assert_holds(fstore.root, BODY)


def test_known_content_needs_no_network(fstore: cas.Store, server: Server) -> None:
    """A stored BLAKE3, a SHA-256 seen before, or the same URL again: served without a request."""
    url = server.add("/a.bin", BODY)
    digest = fstore.fetch(url, sha256=_sha(BODY))
    other = server.url("/elsewhere")  # not served at all: any request would fail
    assert fstore.fetch(other, blake3=digest) == digest
    assert fstore.fetch(other, sha256=_sha(BODY), name="by-sha") == digest
    assert fstore.fetch(url) == digest
    assert server.requests("/a.bin") == 1 and server.requests("/elsewhere") == 0
    assert fstore.path("by-sha").read_bytes() == BODY


def test_stored_answers_from_the_store_alone(root: Path, server: Server) -> None:
    """``Store.stored`` says which stored content satisfies a fixture, checking every expected
    value, names it as a fetch would, and never asks the network (a downloader that is never
    called proves it)."""
    url, other = server.add("/a.bin", BODY), server.url("/elsewhere")
    with cas.Store.open(root, downloader=fast(root)) as store:
        digest = store.fetch(url, sha256=_sha(BODY))
    with cas.Store.open(root, downloader=_NoNetwork()) as store:  # type: ignore[arg-type]
        assert store.stored(other, name="a", sha256=_sha(BODY), size=len(BODY)) == digest
        assert store.path("a").read_bytes() == BODY  # named, as a fetch names it
        assert store.stored(url) == digest  # the URL's last content
        assert store.stored(blake3=digest) == digest
        assert store.stored(name="a", sha256=_sha(BODY)) == digest
        assert store.stored(other, name="b", sha256=_sha(b"other content")) is None
        assert store.stored(blake3=_b3(b"other content")) is None
        assert "b" not in {entry.name for entry in store.entries()}
        with pytest.raises(cas.IntegrityError):
            store.stored(blake3=digest, sha256=_sha(b"other content"))
        with pytest.raises(cas.UsageError, match="not 64 hexadecimal digits"):
            store.stored(blake3="abc")
    assert server.requests("/a.bin") == 1 and server.requests("/elsewhere") == 0


class _NoNetwork:
    """A downloader that fails the test if anything asks it for a transfer."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the network was asked for ({name})")


def test_inconsistent_expected_digests_fail_without_network(
    fstore: cas.Store, server: Server
) -> None:
    """A blake3 and a sha256 known to belong to different contents cannot both hold."""
    fstore.fetch(server.add("/a.bin", BODY), sha256=_sha(BODY))
    with pytest.raises(cas.IntegrityError, match="not the expected blake3"):
        fstore.fetch(server.url("/b"), blake3=_b3(b"other"), sha256=_sha(BODY))
    assert server.requests("/b") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "file:///etc/passwd"}, "not an http or https URL"),
        ({"url": "ftp://example.org/x"}, "not an http or https URL"),
        ({"blake3": "abc"}, "blake3 'abc' is not 64 hexadecimal digits"),
        ({"sha256": "z" * 64}, "sha256"),
        ({"size": -1}, "size -1"),
        ({"name": ""}, "name must not be empty"),
    ],
)
def test_bad_arguments_are_usage_errors(fstore: cas.Store, server: Server,
                                        kwargs: dict[str, object], message: str) -> None:
    """Bad URLs, digests, sizes and names are refused before any request."""
    arguments: dict[str, object] = {"url": server.add("/a.bin", BODY), **kwargs}
    with pytest.raises(cas.UsageError, match=message):
        fstore.fetch(**arguments)  # type: ignore[arg-type]
    assert server.requests("/a.bin") == 0


# -- named fixtures and auto-download --------------------------------------------------------------


def test_evicted_fixture_comes_back_when_auto_download_is_on(root: Path, server: Server) -> None:
    """path(name) of an evicted fixture fetches it again from its recorded source."""
    url = server.add("/fx.bin", BODY)
    with cas.Store.open(root, grace_period=0, downloader=fast(root)) as store:
        store.fetch(url, name="fx", sha256=_sha(BODY), size=len(BODY))
        store.gc(max_size=0)
        assert blob_files(root) == []
        assert store.path("fx").read_bytes() == BODY
    assert server.requests("/fx.bin") == 2
    assert_holds(root, BODY)


def test_evicted_fixture_is_not_found_when_auto_download_is_off(root: Path,
                                                                 server: Server) -> None:
    """With auto_download off, NotFound names the fixture (and no request is made)."""
    url = server.add("/fx.bin", BODY)
    with cas.Store.open(root, grace_period=0, downloader=fast(root)) as store:
        store.fetch(url, name="fx", sha256=_sha(BODY))
        store.gc(max_size=0)
    with (
        cas.Store.open(root, auto_download=False) as store,
        pytest.raises(cas.NotFound, match="'fx' is not stored and auto_download is off"),
    ):
        store.path("fx")
    assert server.requests("/fx.bin") == 1


# -- manifests and the command line ----------------------------------------------------------------


def _manifest(path: Path, server: Server) -> Path:
    server.add("/a", b"alpha")
    server.add("/b", b"beta")
    path.write_text(textwrap.dedent(f"""
        [fixtures."data/a.txt"]
        url = "{server.url('/a')}"
        sha256 = "{_sha(b'alpha')}"

        [fixtures."data/b.txt"]
        url = "{server.url('/b')}"
        blake3 = "{_b3(b'beta')}"
        size = 4

        [fixtures."data/missing"]
        url = "{server.url('/missing')}"
        sha256 = "{'0' * 64}"
    """))
    return path


def test_cli_sync_reports_and_fails_when_one_fixture_fails(root: Path, server: Server,
                                                           tmp_path: Path) -> None:
    """Sync fetches what it can, prints a summary, exits 1; a second run finds them present."""
    manifest = _manifest(tmp_path / "fixtures.toml", server)
    result = run_cas("sync", str(manifest), "--jobs", "3", root=root)
    assert result.returncode == 1, result.stderr
    assert result.stdout.decode().splitlines() == [
        f"{_b3(b'alpha')}  data/a.txt", f"{_b3(b'beta')}  data/b.txt"
    ]
    err = result.stderr.decode()
    assert "2 fetched, 0 already present, 1 failed" in err
    assert "data/missing" in err and "HTTP 404" in err
    assert err.splitlines()[-1] == "cas: error: 1 of 3 fixtures failed"
    again = run_cas("sync", str(manifest), root=root)
    assert "0 fetched, 2 already present, 1 failed" in again.stderr.decode()
    assert server.requests("/a") == server.requests("/b") == 1
    assert_holds(root, b"alpha", b"beta")


def test_store_sync_returns_digests_or_raises(root: Path, server: Server,
                                              tmp_path: Path) -> None:
    """Store.sync returns name -> digest, and raises naming the failed fixture."""
    manifest = _manifest(tmp_path / "fixtures.toml", server)
    with cas.Store.open(root, downloader=fast(root)) as store:
        with pytest.raises(cas.CasError, match="1 of 3 fixtures failed: data/missing"):
            store.sync(manifest)
        text = manifest.read_text()
        manifest.write_text(text[: text.index('[fixtures."data/missing"]')])
        assert store.sync(manifest, jobs=2) == {
            "data/a.txt": _b3(b"alpha"), "data/b.txt": _b3(b"beta")
        }
        assert store.path("data/b.txt").read_bytes() == b"beta"


def test_sync_with_progress_bars(root: Path, server: Server, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """With progress on, bars go to stderr and the report is the same."""
    manifest = _manifest(tmp_path / "fixtures.toml", server)
    with cas.Store.open(root, downloader=fast(root)) as store:
        report = store.sync_report(manifest, jobs=2, bar=TransferBar, total_bar=TotalBar)
    assert (report.fetched, report.present) == (["data/a.txt", "data/b.txt"], [])
    assert list(report.failed) == ["data/missing"]
    assert report.summary() == "2 fetched, 0 already present, 1 failed"
    assert "total" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('url = "http://x/a"\nsha256 = 12', "fixture 'bad': key 'sha256'"),
        ('url = "http://x/a"\nsha512 = "ab"', "fixture 'bad': unknown key 'sha512'"),
        ('url = "http://x/a"\nsha1 = "ab"', "fixture 'bad': key 'sha1': sha1 'ab' is not 40"),
        ('url = "http://x/a"\nmd5 = "' + "g" * 32 + '"', "fixture 'bad': key 'md5'"),
        ('sha256 = "' + "0" * 64 + '"', "fixture 'bad': key 'url' is missing"),
        ('url = "file:///etc/passwd"\nsha256 = "' + "0" * 64 + '"', "fixture 'bad': key 'url'"),
        ('url = "http://x/a"\nheaders = {Range = "bytes=0-"}', "key 'headers': header Range"),
        ('url = "http://x/a"\nheaders = {"X Y" = "v"}', "key 'headers': header 1 is not a valid"),
        ('url = "http://x/a"\nheaders = {X-Token = 7}', "header X-Token: its value must be"),
        ('url = "http://x/a"\nheaders = {A = "${}"}', "header A: '${' must start ${NAME}"),
        ('url = "http://x/a"\nblake3 = "' + "0" * 64 + '"\nsize = -3', "fixture 'bad': key 'size'"),
    ],
)
def test_bad_manifest_entry_is_a_one_line_usage_error(root: Path, tmp_path: Path, entry: str,
                                                      message: str) -> None:
    """A bad entry names the fixture and the key, exits 2, and fetches nothing."""
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[fixtures."bad"]\n{entry}\n')
    result = run_cas("sync", str(manifest), root=root)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: ") and message in lines[0]


def test_cli_fetch_prints_the_digest(root: Path, server: Server) -> None:
    """`cas fetch URL --sha256 H --name N` prints the digest; a 404 exits 1 with one line."""
    url = server.add("/a.bin", BODY)
    result = run_cas("fetch", url, "--sha256", _sha(BODY), "--name", "a", root=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == _b3(BODY)
    missing = run_cas("fetch", server.url("/nope"), root=root)
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("cas: error: ")
    assert "HTTP 404" in missing.stderr.decode()
    assert_holds(root, BODY)
