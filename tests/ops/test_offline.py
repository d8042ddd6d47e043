"""The ``offline`` setting: no network at all, for any command, from any of its sources.

The origin is tests/httpserver.py and the remote tier moto behind tests/s3servers.py's proxy;
both count the requests they see, and every test here asserts that an offline store sent none.
What is stored is still served; what would need the network is NotFound saying cas is offline.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cas
from cas.storage.layout import Layout

from tests.conftest import run_cas
from tests.httpserver import Server, serve
from tests.s3servers import Proxy, S3Server, start_moto

BODY = os.urandom(100_000)
OFFLINE = "cas is offline"


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture(autouse=True)
def _no_offline_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAS_OFFLINE", raising=False)


# -- the API ---------------------------------------------------------------------------------------


def test_fetch_of_what_is_not_stored_is_not_found(root: Path, server: Server) -> None:
    """A fetch that would download fails with NotFound naming the URL, or the fixture."""
    url = server.add("/a.bin", BODY)
    with cas.Store.open(root, offline=True) as store:
        with pytest.raises(cas.NotFound, match=rf"{url} is not stored \({OFFLINE}"):
            store.fetch(url)
        with pytest.raises(cas.NotFound, match=rf"fixture 'data/a' \({url}\) is not stored"):
            store.fetch(url, name="data/a", sha256=_sha(BODY))
        assert store.entries() == []
    assert server.requests("/a.bin") == 0


def test_fetch_of_stored_content_needs_no_network(root: Path, server: Server) -> None:
    """An expected blake3 that is stored, or a sha256 known as its alias, is served offline."""
    url = server.add("/a.bin", BODY)
    with cas.Store.open(root) as store:
        digest = store.fetch(url, sha256=_sha(BODY))
    assert server.requests("/a.bin") == 1
    other = server.url("/elsewhere.bin")  # never served: content is found by digest
    with cas.Store.open(root, offline=True) as store:
        assert store.fetch(other, name="by/blake3", blake3=digest) == digest
        assert store.fetch(other, name="by/sha256", sha256=_sha(BODY)) == digest
        assert store.fetch(url) == digest  # the URL's last content, still stored
        assert store.path("by/sha256").read_bytes() == BODY
    assert server.requests("/a.bin") == 1
    assert server.requests("/elsewhere.bin") == 0


def test_path_of_an_evicted_fixture_says_offline(root: Path, server: Server) -> None:
    """path(name) of an evicted fixture is NotFound saying offline, instead of a refetch."""
    url = server.add("/fx.bin", BODY)
    with cas.Store.open(root, grace_period=0) as store:
        store.fetch(url, name="fx", sha256=_sha(BODY))
        store.gc(max_size=0)
    with (
        cas.Store.open(root, offline=True) as store,
        pytest.raises(cas.NotFound, match=rf"fixture 'fx' \({url}\) is not stored \({OFFLINE}"),
    ):
        store.path("fx")
    assert server.requests("/fx.bin") == 1


def _manifest(path: Path, server: Server) -> Path:
    path.write_text(textwrap.dedent(f"""
        [fixtures."data/a"]
        url = "{server.add('/a', b'alpha')}"
        sha256 = "{_sha(b'alpha')}"

        [fixtures."data/b"]
        url = "{server.add('/b', b'beta')}"
        blake3 = "{_b3(b'beta')}"
    """))
    return path


def test_sync_fetches_nothing_and_fails_each_missing_fixture(root: Path, server: Server,
                                                             tmp_path: Path) -> None:
    """Offline sync serves what is stored and reports each missing fixture as failed."""
    manifest = _manifest(tmp_path / "fixtures.toml", server)
    with cas.Store.open(root) as store:
        store.fetch(server.url("/a"), sha256=_sha(b"alpha"))
    with cas.Store.open(root, offline=True) as store:
        report = store.sync_report(manifest)
    assert report.present == ["data/a"]
    assert list(report.failed) == ["data/b"]
    assert isinstance(report.failed["data/b"], cas.NotFound)
    assert OFFLINE in str(report.failed["data/b"])
    assert (server.requests("/a"), server.requests("/b")) == (1, 0)


def test_verify_repair_reports_the_damage_and_says_offline(root: Path, server: Server) -> None:
    """verify --repair of a damaged named fixture does not download it again offline."""
    url = server.add("/fx.bin", BODY)
    with cas.Store.open(root) as store:
        digest = store.fetch(url, name="fx", sha256=_sha(BODY))
    blob = Layout(root).blobs / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_bytes(b"x" + BODY[1:])
    with cas.Store.open(root, offline=True) as store:
        report = store.verify(repair=True)
    [finding] = [f for f in report.findings if f.subject == digest]
    assert finding.remains
    assert OFFLINE in finding.action
    assert server.requests("/fx.bin") == 1


def test_fixture_session_serves_stored_and_fails_missing(root: Path, server: Server,
                                                         tmp_path: Path) -> None:
    """An offline FixtureSession serves what is stored, and a missing fixture is a
    FixtureUnavailable (a NotFound) saying cas is offline."""
    from cas.harness import FixtureSession, FixtureUnavailable

    manifest = _manifest(tmp_path / "fixtures.toml", server)
    with cas.Store.open(root) as store:
        store.fetch(server.url("/a"), sha256=_sha(b"alpha"))
    with FixtureSession.open(manifest, root=root, offline=True) as session:
        assert session.path("data/a").read_bytes() == b"alpha"
        with pytest.raises(FixtureUnavailable, match=rf"'data/b' is not in the store \({OFFLINE}"):
            session.path("data/b")
    assert issubclass(FixtureUnavailable, cas.NotFound)
    assert (server.requests("/a"), server.requests("/b")) == (1, 0)


# -- every source of the setting, through the command line -----------------------------------------


def test_cli_flag_environment_and_config_file(root: Path, server: Server) -> None:
    """``--offline``, ``CAS_OFFLINE=1`` and ``offline = true`` in config.toml each keep
    ``cas fetch`` off the network: exit status 3 and one line naming the URL."""
    url = server.add("/a.bin", BODY)
    ways: list[tuple[tuple[str, ...], dict[str, str] | None]] = [
        (("--offline",), None),
        ((), {"CAS_OFFLINE": "1"}),
    ]
    for flags, env in ways:
        result = run_cas(*flags, "fetch", url, root=root, env=env)
        assert result.returncode == 3, result.stderr
        [line] = result.stderr.decode().splitlines()
        assert url in line and OFFLINE in line
    (root / "config.toml").write_text("offline = true\n")
    result = run_cas("fetch", url, "--name", "data/a", root=root)
    assert result.returncode == 3
    assert "fixture 'data/a'" in result.stderr.decode()
    assert OFFLINE in result.stderr.decode()
    assert server.requests("/a.bin") == 0
    # The command line wins over the file, as for every setting.
    result = run_cas("fetch", url, root=root, env={"CAS_OFFLINE": "0"})
    assert result.returncode == 0, result.stderr
    assert server.requests("/a.bin") == 1
    assert run_cas("--offline", "fetch", url, root=root).stdout.decode().strip() == _b3(BODY)
    assert server.requests("/a.bin") == 1


def test_cli_config_shows_the_setting_and_its_source(root: Path) -> None:
    """``cas config`` shows offline, and where its value came from."""
    assert "offline" in run_cas("config", root=root).stdout.decode()
    shown = run_cas("--offline", "config", "--json", root=root).stdout.decode()
    assert '"offline"' in shown and "command line" in shown
    with cas.Store.open(root, offline=True) as store:
        assert store.settings.offline
    with cas.Store.open(root) as store:
        assert not store.settings.offline


def test_cli_sync_and_verify_offline(root: Path, server: Server, tmp_path: Path) -> None:
    """``cas --offline sync`` fails the missing fixtures; ``verify --repair`` says offline."""
    manifest = _manifest(tmp_path / "fixtures.toml", server)
    result = run_cas("--offline", "sync", str(manifest), root=root)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "0 fetched, 0 already present, 2 failed" in err
    assert err.count(OFFLINE) >= 2
    assert server.requests("/a") == server.requests("/b") == 0


# -- the remote tier -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    pytest.importorskip("boto3", reason="the remote tier's tests need the s3 extra (boto3)")
    pytest.importorskip("moto.server", reason="the remote tier's tests need moto")
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def remote(moto: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Proxy]:
    """A bucket on moto, behind a proxy that counts every request; boto3 points at the proxy."""
    import boto3

    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    front = Proxy(moto.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.client("s3").create_bucket(Bucket="offline")
    yield front
    front.close()


def test_remote_tier_sees_no_request(tmp_path: Path, server: Server, remote: Proxy) -> None:
    """Offline, neither read-through, push nor pull reaches the remote (nor the origin)."""
    url = server.add("/fx.bin", BODY)
    bucket = "s3://offline/team"
    with cas.Store.open(tmp_path / "a", remote=bucket, retries=1) as first:
        digest = first.fetch(url, name="fx", sha256=_sha(BODY))  # pushed to the remote
    before = len(remote.requests())
    assert before > 0 and server.requests("/fx.bin") == 1
    with cas.Store.open(tmp_path / "b", remote=bucket, offline=True) as second:
        with pytest.raises(cas.NotFound, match=rf"fixture 'fx' \({url}\) is not stored"):
            second.fetch(url, name="fx", blake3=digest)  # the remote has it: not asked
        with pytest.raises(cas.NotFound, match=rf"cannot pull: .*\({OFFLINE}"):
            second.pull(["fx"])
        second.put(b"made here", name="local")
        with pytest.raises(cas.NotFound, match=rf"cannot push: .*\({OFFLINE}"):
            second.push()
    for command in (["push"], ["pull", "fx"]):
        result = run_cas("--offline", *command, root=tmp_path / "b",
                         env={"CAS_REMOTE": bucket})  # fmt: skip
        assert result.returncode == 3
        [line] = result.stderr.decode().splitlines()
        assert f"cannot {command[0]}" in line and OFFLINE in line
    assert len(remote.requests()) == before
    assert server.requests("/fx.bin") == 1
    # Online again, the same fetch reads through the remote: it was there all along.
    with cas.Store.open(tmp_path / "b", remote=bucket, retries=1) as second:
        assert second.fetch(url, name="fx", blake3=digest) == digest
    assert len(remote.requests()) > before
    assert server.requests("/fx.bin") == 1
