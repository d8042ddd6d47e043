"""docs/migrating.md: its runnable examples run, and the rest is marked as not run.

Every ``python`` block runs, in order, in one namespace, against a local HTTP server serving
the files the page fetches (a tar.gz built here, a file that needs a bearer token); every ``py``
block is a sketch that says it is not run, and every ``toml`` block is valid TOML.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import Server, serve

PAGE = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_runnable_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               server: Server) -> None:
    """The python blocks run against a fresh store; each file is requested once (the
    unhashed entry is the URL's content already stored), the offline block requests nothing;
    the archive is unpacked, the token is sent, and a refresh is a revalidation without a body."""
    server.add("/data/table.csv", b"id,value\n1,42\n")
    server.add("/data/notes.txt", b"notes\n")
    images = _tar_gz({"cats/1.png": b"cat", "dogs/2.png": b"dog", "README": b"pets\n"})
    server.add("/data/images.tar.gz", images)
    config = "/org/tiny-model/resolve/0123abc/config.json"
    server.add(config, b'{"hidden_size": 8}\n', require={"Authorization": "Bearer hf_test"})
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FIXTURE_SERVER", server.base_url)
    monkeypatch.setenv("IMAGES_SHA256", hashlib.sha256(images).hexdigest())
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    blocks = _blocks("python")
    assert len(blocks) >= 8
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    assert server.requests("/data/table.csv") == 1  # fetched once, then served from the store
    assert server.requests("/data/notes.txt") == 1  # the unhashed entry: the URL's stored content
    assert server.requests("/data/never-fetched.bin") == 0
    assert server.requests("/data/images.tar.gz") == 1
    assert server.requests(config) == 2 and server.bodies(config) == 1  # the refresh: a 304
    assert all(seen.headers["authorization"] == "Bearer hf_test" for seen in server.seen(config))


def test_sketches_say_they_are_not_run_and_toml_parses() -> None:
    """Each py block starts with a line saying it is not run and why; toml blocks parse."""
    sketches = _blocks("py")
    assert len(sketches) == 1  # only what needs huggingface.co itself
    for sketch in sketches:
        assert sketch.startswith("# not run by the tests here: ")
    for block in _blocks("toml"):
        assert tomllib.loads(block)["fixtures"]
