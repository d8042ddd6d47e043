# ruff: noqa: F811 - the fixtures of tests/ops/test_remote.py, imported by name
"""Small blobs inside their name's record: a pull by name of a small fixture costs one request,
a damaged inline copy is ignored for the blob itself, and a tree's record never skips its
members; against moto and SeaweedFS (the fixtures of tests/ops/test_remote.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("boto3", reason="the remote tier's tests need the s3 extra (boto3)")
pytest.importorskip("moto.server", reason="the remote tier's tests need moto")

import boto3

import cas
from cas.storage.counters import Counter
from cas.storage.layout import Layout
from cas.transfer.s3_records import INLINE_MAX, RECORD_MAX, NameRecord

from tests.ops.test_remote import (  # noqa: F401 - fixtures
    _b3,
    assert_clean,
    bucket,
    endpoint,
    moto_s3,
    open_store,
    proxy,
    remote_url,
    s3,
    seaweedfs_s3,
)
from tests.ops.test_trees import contents, make_folder
from tests.s3servers import Proxy

PREFIX = "team/fixtures"


def _record(bucket: str, name: str) -> dict[str, Any]:
    key = f"{PREFIX}/names/{name.replace('/', '%2F')}.json"
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) <= RECORD_MAX
    value: dict[str, Any] = json.loads(body)
    return value


def _write_record(bucket: str, name: str, value: dict[str, Any]) -> None:
    key = f"{PREFIX}/names/{name.replace('/', '%2F')}.json"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(value).encode())


def test_a_small_fixture_comes_with_its_record_a_large_one_after_it(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Pushing puts a small blob's bytes in its name's record too (a blob of INLINE_MAX
    bytes included), not a larger one's; pulling each name then costs one GET for the small
    ones and two for the large one, and every name reads back its bytes."""
    bodies = {"small/a": os.urandom(1000), "small/edge": os.urandom(INLINE_MAX),
              "small/empty": b"", "large/b": os.urandom(INLINE_MAX + 1)}  # fmt: skip
    with open_store(tmp_path / "one", remote_url) as one:
        for name, body in bodies.items():
            one.put(body, name=name)
        one.push().raise_for_failures()
    for name, body in bodies.items():
        record = _record(bucket, name)
        if name.startswith("small/"):
            assert base64.b64decode(record["content"]) == body
        else:
            assert "content" not in record
    with open_store(tmp_path / "two", remote_url) as two:
        for name, body in bodies.items():
            before = len(proxy.requests("GET"))
            two.pull(name).raise_for_failures()
            gets = [request.path for request in proxy.requests("GET")[before:]]
            blob_gets = [path for path in gets if "/blobs/" in path]
            assert len(gets) == (1 if name.startswith("small/") else 2), (name, gets)
            assert len(blob_gets) == (0 if name.startswith("small/") else 1), (name, gets)
            assert two.read_bytes(name) == body
        assert not two.verify(full=True).damaged
        assert two.stats().counters[Counter.DOWNLOADED_BYTES] == sum(map(len, bodies.values()))


def test_a_damaged_inline_copy_is_ignored_and_the_blob_read(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Content in a record that is not the digest's (same size, other bytes) is never stored:
    the pull reads the blob object and stores the right bytes under the name."""
    body = os.urandom(5000)
    with open_store(tmp_path / "one", remote_url) as one:
        one.put(body, name="n")
        one.push().raise_for_failures()
    record = _record(bucket, "n")
    record["content"] = base64.b64encode(os.urandom(len(body))).decode()
    _write_record(bucket, "n", record)
    with open_store(tmp_path / "two", remote_url) as two:
        two.pull("n").raise_for_failures()
        assert two.read_bytes("n") == body
        assert proxy.requests("GET", "/blobs/")
        assert not two.verify(full=True).damaged


@pytest.mark.parametrize("content", [
    "!!not base64!!", "AAAA" * 3, 17,
])  # fmt: skip
def test_inline_content_that_is_not_the_records_is_refused_alone(
    tmp_path: Path, remote_url: str, bucket: str, content: object
) -> None:
    """A record whose content is not base64, or not ``size`` bytes, is not valid: its name
    fails with one line naming the record, and the other names are pulled."""
    with open_store(tmp_path / "one", remote_url) as one:
        one.put(b"good", name="good")
        one.put(b"bad!", name="bad")
        one.push().raise_for_failures()
    record = _record(bucket, "bad")
    record["content"] = content
    _write_record(bucket, "bad", record)
    with open_store(tmp_path / "two", remote_url) as two:
        report = two.pull()
        assert report.summary() == "1 pulled, 0 already in the store, 1 failed"
        (failure,) = report.failed.values()
        assert "is not valid" in str(failure) and "content" in str(failure)
        assert two.read_bytes("good") == b"good"
        assert [entry.name for entry in two.entries()] == ["good"]


def test_a_trees_record_inline_still_brings_its_members_first(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """A tree's name record carrying the tree record's bytes (cas does not write one, another
    writer may) is pulled by the tree route: members, then the name; never a name whose
    folder lacks files."""
    source = make_folder(tmp_path / "src", {"a.txt": b"a", "sub/b.bin": b"b" * 100}, set(), ())
    with open_store(tmp_path / "one", remote_url) as one:
        digest = one.put(source, name="data/set")
        one.push().raise_for_failures()
    tree_record = Layout(tmp_path / "one").blob(digest).read_bytes()
    record = _record(bucket, "data/set")
    assert "content" not in record
    record["content"] = base64.b64encode(tree_record).decode()
    _write_record(bucket, "data/set", record)
    with open_store(tmp_path / "two", remote_url) as two:
        two.pull("data/set").raise_for_failures()
        assert contents(two.path("data/set")) == contents(source)
        (entry,) = two.entries()
        assert (entry.kind, entry.files) == ("tree", 2)


@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                    max_size=40).filter(lambda n: n.strip() == n and n),
       content=st.binary(max_size=300), with_content=st.booleans(),
       url=st.sampled_from([None, "https://example.org/x"]))  # fmt: skip
def test_records_round_trip(name: str, content: bytes, with_content: bool,
                            url: str | None) -> None:  # fmt: skip
    """A record reads back as written, with or without its content; its content is verified
    only when it is the digest's."""
    try:
        record = NameRecord(name, _b3(content), len(content), url, None,
                            content if with_content else None)  # fmt: skip
        encoded = record.to_json()
    except cas.UsageError:
        return
    try:
        back = NameRecord.from_json(encoded, "here")
    except cas.UsageError as error:  # a name that check_name refuses, as for any record
        assert "is not valid" in str(error)
        return
    assert back == record and back.content == record.content
    assert back.verified_content() == (content if with_content else None)
    other = NameRecord(name, _b3(content + b"x"), len(content), url, None, content)
    assert other.verified_content() is None


def test_a_record_read_that_fails_is_asked_again_through_botocore(
    tmp_path: Path, remote_url: str, bucket: str, proxy: Proxy
) -> None:
    """Records are read by a presigned GET; an answer other than 200 or 404 (here a 503 to
    the first read) is asked again through botocore, whose retries apply: the pull succeeds.
    A missing name costs its one 404, and the bucket's HEAD."""
    with open_store(tmp_path / "one", remote_url) as one:
        one.put(b"data", name="n")
        one.push().raise_for_failures()
    failed: list[str] = []

    def rule(method: str, path: str) -> int | None:
        if method == "GET" and "/names/" in path and not failed:
            failed.append(path)
            return 503
        return None

    proxy.rule = rule
    with open_store(tmp_path / "two", remote_url) as two:
        two.pull("n").raise_for_failures()
        assert two.read_bytes("n") == b"data"
        assert [r.status for r in proxy.requests("GET", "/names/")] == [503, 200]
        before = len(proxy.requests())
        assert isinstance(two.pull("nope").failed["nope"], cas.NotFound)
        after = [(r.method, r.status) for r in proxy.requests()[before:]]
        assert after.count(("GET", 404)) == 1 and len(after) <= 2, after


def test_processes_pulling_the_same_small_fixtures_at_once_agree(
    tmp_path: Path, remote_url: str, bucket: str
) -> None:
    """Four `cas pull` processes into one store at once, each of the same 30 small fixtures
    (inline content takes no single-flight lock): every one exits 0, every name reads back its
    bytes, each blob is stored once and nothing is left in tmp/."""
    bodies = {f"small/{n:02d}": os.urandom(2000 + n) for n in range(30)}
    with open_store(tmp_path / "one", remote_url) as one:
        for name, body in bodies.items():
            one.put(body, name=name)
        one.push().raise_for_failures()
    root = tmp_path / "shared"
    command = [sys.executable, "-m", "cas", "--root", str(root), "pull"]
    env = {**os.environ, "CAS_REMOTE": remote_url, "CAS_RETRIES": "1"}
    children = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE) for _ in range(4)]  # fmt: skip
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
    with cas.Store.open(root) as store:
        assert {entry.name: store.read_bytes(entry.name) for entry in store.entries()} == bodies
        assert not store.verify(full=True).damaged
    assert_clean(root, *bodies.values())
