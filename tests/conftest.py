"""Shared fixtures and hypothesis profiles."""

from __future__ import annotations

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
    """Run the real ``cas`` command line in a child process."""
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
