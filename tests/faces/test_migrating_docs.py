"""docs/migrating.md: its runnable examples run, and the rest is marked as not run.

Every ``python`` block runs, in order, in one namespace, against a local HTTP server serving
the files the page fetches; every ``py`` block is a sketch that says it is not run, and every
``toml`` block is valid TOML.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import Server, serve

PAGE = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_runnable_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               server: Server) -> None:
    """The python blocks run against a fresh store; each file is requested once (the
    unhashed entry is the URL's content already stored), the offline block requests nothing."""
    server.add("/data/table.csv", b"id,value\n1,42\n")
    server.add("/data/notes.txt", b"notes\n")
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FIXTURE_SERVER", server.base_url)
    blocks = _blocks("python")
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    assert server.requests("/data/table.csv") == 1  # fetched once, then served from the store
    assert server.requests("/data/notes.txt") == 1  # the unhashed entry: the URL's stored content
    assert server.requests("/data/never-fetched.bin") == 0


def test_sketches_say_they_are_not_run_and_toml_parses() -> None:
    """Each py block starts with a line saying it is not run and why; toml blocks parse."""
    sketches = _blocks("py")
    assert sketches
    for sketch in sketches:
        assert sketch.startswith("# not run by the tests here: ")
    for block in _blocks("toml"):
        assert tomllib.loads(block)["fixtures"]
