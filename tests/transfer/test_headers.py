"""Extra request headers: how they are read (cas/values.py) and made at request time
(cas/transfer/headers.py), and that a real request carries the environment of its moment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.transfer.headers import private_headers
from cas.values import RESERVED_HEADERS, expand_header, parse_headers

from tests.conftest import run_cas
from tests.httpserver import Server, serve

_NAMES = st.from_regex(r"X-[A-Za-z0-9][A-Za-z0-9\-]{0,20}", fullmatch=True)
_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).filter(
    lambda text: "${" not in text and text == text.strip())


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@given(st.dictionaries(_NAMES, _VALUES, max_size=5).filter(
    lambda table: len({name.lower() for name in table}) == len(table)))
def test_every_form_reads_the_same_headers(table: dict[str, str]) -> None:
    """A table, a JSON object, `Name: value` lines and a list of them are the same headers."""
    pairs = tuple(table.items())
    lines = [f"{name}: {value}" for name, value in table.items()]
    assert parse_headers(table) == pairs
    assert parse_headers(json.dumps(table)) == pairs
    assert parse_headers("\n".join(lines)) == pairs
    assert parse_headers(lines) == pairs
    assert parse_headers(pairs) == pairs


@given(secret=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8,
                      max_size=30).filter(lambda text: "${" not in text),
       bad=st.sampled_from(["\r\n", "\n", "\x00", "\x7f"]))  # fmt: skip
def test_a_control_character_is_refused_without_the_value(secret: str, bad: str) -> None:
    """A value holding a line break or control character is refused by a message naming
    the header, never holding the value."""
    with pytest.raises(ValueError, match="X-Token") as refused:
        parse_headers({"X-Token": secret + bad + secret})
    assert secret not in str(refused.value)


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS))
def test_headers_cas_sets_itself_cannot_be_given(name: str) -> None:
    """Range, validators, framing and the proxy's credentials are cas's own."""
    with pytest.raises(ValueError, match="set by cas itself"):
        parse_headers({name.title(): "x"})


def test_the_same_header_twice_is_refused() -> None:
    """Header names are case-insensitive: one given twice is a mistake, whichever case."""
    with pytest.raises(ValueError, match="given twice"):
        parse_headers(["X-A: 1", "x-a: 2"])


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), _VALUES,
                       min_size=1, max_size=4))  # fmt: skip
def test_tokens_expand_from_the_environment(environ: dict[str, str]) -> None:
    """Each ${VAR} is its variable's value; $${ is a literal ${; other $ stay."""
    template = " ".join("${" + name + "}" for name in environ) + " $5 $${X}"
    assert expand_header(template, environ) == " ".join(environ.values()) + " $5 ${X}"


def test_private_headers_are_made_from_the_environment_of_the_moment() -> None:
    """The environment is read when the headers are made; an extra Authorization replaces the
    URL's credentials; an unset variable names itself."""
    headers = (("Authorization", "Bearer ${T}"),)
    assert private_headers("http://h/", None, headers, {"T": "one"}) == {
        "Authorization": "Bearer one"}
    assert private_headers("http://h/", "u:p", headers, {"T": "two"}) == {
        "Authorization": "Bearer two"}
    assert private_headers("http://h/", "u:p", (), {})["authorization"].startswith("Basic ")
    with pytest.raises(cas.UsageError, match="environment variable T is not set"):
        private_headers("http://h/", None, headers, {})


def test_a_request_carries_the_environment_of_its_moment(
    root: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token rotated between two requests of one store is sent as it is at each request,
    through the API and the command line; the setting's headers go with each."""
    url = server.add("/a.bin", b"content")
    with cas.Store.open(root, headers={"X-Team": "ci"}) as store:
        monkeypatch.setenv("ROTATING", "first")
        store.fetch(url, headers={"X-Token": "${ROTATING}"})
        monkeypatch.setenv("ROTATING", "second")
        store.fetch(url, headers={"X-Token": "${ROTATING}"}, refresh=True)
    monkeypatch.setenv("ROTATING", "third")
    result = run_cas("fetch", url, "--refresh", "--header", "X-Token: ${ROTATING}", root=root)
    assert result.returncode == 0, result.stderr
    seen = server.seen("/a.bin")
    assert [s.headers["x-token"] for s in seen] == ["first", "second", "third"]
    assert [s.headers.get("x-team") for s in seen] == ["ci", "ci", None]
