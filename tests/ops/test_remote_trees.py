# ruff: noqa: F811 - the fixtures of tests/ops/test_remote.py, imported by name
"""Trees through the remote tier: pushed as members then record, pulled as record then
members, against moto and SeaweedFS (the fixtures of tests/ops/test_remote.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("boto3", reason="the remote tier's tests need the s3 extra (boto3)")
pytest.importorskip("moto.server", reason="the remote tier's tests need moto")

from tests.conftest import run_cas
from tests.ops.test_remote import (  # noqa: F401 - fixtures
    bucket,
    endpoint,
    moto_s3,
    objects,
    open_store,
    remote_url,
    s3,
    seaweedfs_s3,
)
from tests.ops.test_trees import contents, make_folder


def test_a_tree_pushed_from_one_store_is_pulled_whole_by_another(
    tmp_path: Path, remote_url: str, bucket: str,
) -> None:  # fmt: skip
    """push uploads every member and the record; pull by name brings back the same folder,
    and the tree is one fixture there too."""
    source = make_folder(tmp_path / "src", {"a.txt": b"a", "sub/b.bin": b"b" * 1000,
                                            "run.sh": b"#!/bin/sh\n"}, {"run.sh"}, ("empty",))
    with open_store(tmp_path / "one", remote_url) as one:
        digest = one.put(source, name="data/set")
        report = one.push("data/set")
        report.raise_for_failures()
        assert report.done == {"data/set": digest}
    keys = objects(bucket)
    blob_keys = [key for key in keys if "/blobs/" in key]
    assert len(blob_keys) == 4  # three files and the record
    with open_store(tmp_path / "two", remote_url) as two:
        pulled = two.pull("data/set")
        pulled.raise_for_failures()
        assert pulled.done == {"data/set": digest}
        assert contents(two.path("data/set")) == contents(source)
        (entry,) = two.entries()
        assert (entry.kind, entry.files) == ("tree", 3)
        assert not two.verify(full=True).damaged
        again = two.pull("data/set")
        assert again.present == {"data/set": digest}


def test_pull_refuses_a_record_that_is_not_valid(tmp_path: Path, remote_url: str) -> None:
    """A blob that looks like a tree record but leaves the folder is refused, not laid out."""
    hostile = json.dumps({"files": [["../escape", "ab" * 32, 1, 0]], "folders": [],
                          "format": "cas-tree/1"}, separators=(",", ":"),
                         sort_keys=True).encode()
    with open_store(tmp_path / "one", remote_url) as one:
        one.put(hostile, name="evil")
        one.push("evil").raise_for_failures()
    with open_store(tmp_path / "two", remote_url) as two:
        report = two.pull("evil")
        assert "evil" in report.failed
        assert "leaves the folder" in str(report.failed["evil"])
        assert not any(entry.name == "evil" for entry in two.entries())


def test_push_and_pull_a_tree_on_the_cli(tmp_path: Path, remote_url: str) -> None:
    source = make_folder(tmp_path / "src", {"x/y.txt": b"y"})
    one, two = tmp_path / "one", tmp_path / "two"
    env = {"CAS_REMOTE": remote_url}
    assert run_cas("put", str(source), "--name", "t", root=one).returncode == 0
    assert run_cas("push", "t", root=one, env=env).returncode == 0
    pulled = run_cas("pull", "t", root=two, env=env)
    assert pulled.returncode == 0, pulled.stderr
    folder = Path(run_cas("path", "t", root=two).stdout.decode().strip())
    assert (folder / "x" / "y.txt").read_bytes() == b"y"
