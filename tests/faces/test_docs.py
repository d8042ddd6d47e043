"""The documentation's examples run, and the public surface is what the docs say."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas

from tests.httpserver import Server, serve

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def test_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          server: Server) -> None:
    """Every python block of docs/api.md runs, in order, against a fresh store."""
    server.add("/hello.txt", b"hello\n")
    server.add("/hello.txt.gz", gzip.compress(b"hello\n"))
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIXTURE_SERVER", server.base_url)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)


def documented_names() -> set[str]:
    """The public names docs/api.md lists in its table of every public name."""
    text = (DOCS / "api.md").read_text()
    table = text.split("## Every public name", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `cas\.(\w+)` \|", table, re.M))


def test_public_surface() -> None:
    """cas exports exactly the names docs/api.md documents, each loads, and every error is a
    CasError."""
    documented = documented_names()
    assert {"Store", "CasError", "__version__"} <= documented  # the table was found
    assert set(cas.__all__) == documented
    assert set(cas._HOMES) | {"__version__"} == documented  # the lazy map names the same
    assert set(dir(cas)) >= documented
    for name in cas.__all__:
        value = getattr(cas, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, cas.CasError)


def test_every_error_class_is_public() -> None:
    """Every error class of cas.errors is exported from cas and documented."""
    import cas.errors

    errors = {name for name, value in vars(cas.errors).items()
              if isinstance(value, type) and issubclass(value, Exception)}
    assert errors <= set(cas.__all__)


def test_every_cli_command_has_help_and_is_in_the_readme() -> None:
    """Each `cas` command has a help text and appears in the README or the docs."""
    from cas.cli import cli

    readme = (DOCS.parent / "README.md").read_text() + "".join(
        path.read_text() for path in DOCS.glob("*.md")
    )
    for name, command in cli.commands.items():
        assert command.help, name
        assert f"cas {name}" in readme, f"`cas {name}` is not documented"
