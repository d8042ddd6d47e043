"""The cas pytest plugin: fixtures from a content-addressed store, leased for the session.

Registered through the ``pytest11`` entry point and inert until a test asks for ``cas_store``
or ``cas_fixture``: nothing is imported or opened before that. Under pytest-xdist every worker
opens the same store; a fixture wanted by N workers is downloaded once (cas's download lock),
each worker leases it until its session ends, and a killed worker's leases are reclaimed.

``cas_manifest`` is a local file. A URL there is refused once, at the start of the session, with
a pytest UsageError (a manifest is the list of what may be fetched; fetch it like any other
file, or sync it with ``cas sync``, and name the local copy).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cas.harness import FixtureSession
    from cas.store import Store

SKIP_MARKER = "cas_skip_unavailable"

#: A value that starts as an absolute URL does (``scheme://``), not as a file path.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cas", "cas fixture store")
    group.addoption("--cas-root", help="store root (default: settings, $CAS_HOME, user cache)")
    group.addoption("--cas-manifest", help="TOML manifest of the fixtures tests may ask for")
    group.addoption("--cas-profile", help="settings profile, e.g. ci")
    parser.addini("cas_root", "store root for the cas fixtures")
    parser.addini("cas_manifest", "manifest of the cas fixtures (relative to the rootdir)")
    parser.addini("cas_profile", "settings profile for the cas store")
    parser.addini(
        "cas_skip_unavailable",
        "skip, instead of failing, tests whose cas fixtures are not stored and may not be "
        "fetched (auto_download off)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SKIP_MARKER}: skip this test, instead of failing, when a cas fixture it asks for is "
        "not stored and may not be fetched",
    )
    _check_manifest_option(config)


def _check_manifest_option(config: pytest.Config) -> None:
    """Refuse a URL as the manifest, once and before any test runs (UsageError)."""
    value = _option(config, "manifest")
    if value is None or not _URL.match(value):
        return
    from cas.urls import redact  # only now: the plugin imports nothing of cas until it is used

    given = "--cas-manifest" if config.getoption("--cas-manifest") else "the cas_manifest ini key"
    raise pytest.UsageError(
        f"cas: {given} is a URL ({redact(value)}); it must be the path of a local TOML file:"
        " download the manifest first and name the copy"
    )


def _option(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(f"--cas-{name}") or config.getini(f"cas_{name}")
    return str(value) if value else None


def _relative(config: pytest.Config, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(config.rootpath) / path


@pytest.fixture(scope="session")
def _cas_session(pytestconfig: pytest.Config) -> Iterator[FixtureSession]:
    from cas.harness import FixtureSession

    session = FixtureSession.open(
        _relative(pytestconfig, _option(pytestconfig, "manifest")),
        root=_relative(pytestconfig, _option(pytestconfig, "root")),
        profile=_option(pytestconfig, "profile"),
    )
    with session:
        yield session


@pytest.fixture(scope="session")
def cas_store(_cas_session: FixtureSession) -> Store:
    """The session's cas store (root, manifest and profile from --cas-* options or ini)."""
    return _cas_session.store


@pytest.fixture
def cas_fixture(_cas_session: FixtureSession, request: pytest.FixtureRequest
                ) -> Callable[..., Path]:
    """``cas_fixture("name")`` -> the Path of a fixture, fetched if needed and leased until
    the session ends; ``cas_fixture("name", url=..., sha256=...)`` for one not in the
    manifest."""
    from cas.harness import FixtureUnavailable

    skip = bool(request.config.getini("cas_skip_unavailable")) or (
        request.node.get_closest_marker(SKIP_MARKER) is not None
    )

    def get(name: str, **source: Any) -> Path:
        try:
            return _cas_session.path(name, **source)
        except FixtureUnavailable as unavailable:
            if skip:
                pytest.skip(str(unavailable))
            raise

    return get
