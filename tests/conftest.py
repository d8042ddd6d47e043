"""Shared fixtures and hypothesis profiles."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import cas
from cas.storage.layout import Layout

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests (marked ``slow``) go first: with ``-n 3`` they then run beside the short ones
    instead of being what the last worker still waits for."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, not yet created store root."""
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> Iterator[cas.Store]:
    """A fresh store in a temporary folder."""
    with cas.Store.open(root) as opened:
        yield opened




def run_cas(*args: str, root: Path | None = None, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the ``cas`` command line in this process, as its console entry point would.

    ``cas.cli.main`` is ``cli.main(prog_name="cas")``; click's CliRunner calls the same
    ``cli.main`` with stdin, stdout, stderr and the environment swapped, and turns its
    ``sys.exit`` into an exit code. The answer has the shape of ``run_cas_process``'s. An
    exception that escapes ``main`` (a traceback in a real process) is raised here.
    """
    from click.testing import CliRunner

    from cas.cli import cli

    words = [*(["--root", str(root)] if root is not None else []), *args]
    if "maintain" in args or ("lease" in args and "--" in args):
        # both block or wait for signals, which must not happen in the test process
        raise ValueError(f"{args}: handles signals; use run_cas_process")
    logger = logging.getLogger("cas")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        result = CliRunner().invoke(cli, words, input=input, env=env, prog_name="cas",
                                    catch_exceptions=False)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    return subprocess.CompletedProcess(
        ["cas", *words], result.exit_code, result.stdout_bytes, result.stderr_bytes
    )


def run_cas_process(*args: str, root: Path | None = None, input: bytes | None = None,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``cas`` command line in a child process: for exit statuses and stderr as
    a shell sees them, signals, pipes and terminals."""
    command = [sys.executable, "-m", "cas"]
    if root is not None:
        command += ["--root", str(root)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*command, *args], input=input, capture_output=True, env=full_env, timeout=120
    )


def blob_files(root: Path) -> list[Path]:
    """Every file under blobs/."""
    return sorted(path for path in Layout(root).blobs.rglob("*") if path.is_file())
