"""Signals and pipes through the real command line: `cas lease` forwards signals to its command
and releases its leases; Ctrl-C stops `cas sync` and keeps partial downloads; a closed pipe is
not an error (issue 13, items 12 and 19)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from .conftest import run_cas

CAS = [sys.executable, "-m", "cas"]


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it holds (no timing is asserted: the limit only ends a hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _leases(root: Path) -> int:
    with sqlite3.connect(root / "catalog.db") as conn:
        return int(conn.execute("SELECT count(*) FROM leases").fetchone()[0])


@pytest.fixture
def leased_root(tmp_path: Path) -> Path:
    """A store root holding one blob named ``held``."""
    root = tmp_path / "store"
    assert run_cas("put", "-", "--name", "held", root=root, input=b"held").returncode == 0
    return root


@pytest.fixture
def lease(leased_root: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[Popen[bytes], int]]]:
    """Start ``cas lease held -- sh -c 'TRAP; SCRIPT'``; give the wrapper and, once the command
    runs, the command's pid (written after TRAP, before SCRIPT). A command left running is
    killed after the test; output goes to files, so a leftover cannot hold a pipe open."""
    started: list[int] = []

    def start(script: str, trap: str = ":") -> tuple[Popen[bytes], int]:
        pid_file = tmp_path / "pid"
        with open(tmp_path / "stderr", "wb") as err:
            wrapper = subprocess.Popen(
                [*CAS, "--root", str(leased_root), "lease", "held", "--", "sh", "-c",
                 f"{trap}; echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; {script}"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        _wait_for(lambda: pid_file.exists() or wrapper.poll() is not None, "the command")
        assert wrapper.poll() is None, (tmp_path / "stderr").read_bytes()
        started.append(int(pid_file.read_text()))
        return wrapper, started[-1]

    yield start
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_lease_forwards_a_signal_that_ends_the_command(
    leased_root: Path, tmp_path: Path, lease: Callable[..., tuple[Popen[bytes], int]],
    signum: signal.Signals,
) -> None:
    """A signal sent to `cas lease` reaches the command; when it ends the command, cas waits,
    releases the lease and exits 128+N like a shell; nothing is left running."""
    wrapper, child = lease("exec sleep 600")
    assert _leases(leased_root) == 1
    wrapper.send_signal(signum)
    wrapper.wait(timeout=60)
    err = (tmp_path / "stderr").read_bytes()
    assert wrapper.returncode == 128 + signum, err
    assert not _alive(child)
    assert _leases(leased_root) == 0
    assert err == b""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_lease_waits_for_a_command_that_handles_the_signal(
    leased_root: Path, tmp_path: Path, lease: Callable[..., tuple[Popen[bytes], int]],
    signum: signal.Signals,
) -> None:
    """A command that catches the forwarded signal finishes on its own terms: cas keeps the
    lease until then and exits with the command's own status."""
    done = tmp_path / "cleaned-up"
    wrapper, _ = lease("while :; do sleep 0.05; done",
                       trap=f"trap 'touch {done}; exit 3' {signum.name[3:]}")
    wrapper.send_signal(signum)
    wrapper.wait(timeout=60)
    assert wrapper.returncode == 3, (tmp_path / "stderr").read_bytes()
    assert done.exists()
    assert _leases(leased_root) == 0


@pytest.mark.parametrize(
    ("command", "status"),
    [(["no-such-command-cas-test"], 127), (["sh", "-c", "kill -KILL $$"], 128 + 9),
     (["sh", "-c", "exit 0"], 0)],
    ids=["missing", "killed", "ok"],
)  # fmt: skip
def test_lease_exit_status_is_a_shells(
    leased_root: Path, command: list[str], status: int
) -> None:
    """127 when the command does not exist, 128+N when signal N ended it, else its status."""
    result = run_cas("lease", "held", "--", *command, root=leased_root)
    assert result.returncode == status, result.stderr
    assert len(result.stderr.decode().splitlines()) == (status == 127)
    assert _leases(leased_root) == 0


def test_lease_of_a_file_that_is_not_executable(leased_root: Path, tmp_path: Path) -> None:
    """126, with one line, when the command exists but cannot be executed."""
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = run_cas("lease", "held", "--", str(script), root=leased_root)
    if os.geteuid() == 0 and os.access(script, os.X_OK):
        pytest.skip("root may execute anything here")
    assert result.returncode == 126, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error:") and str(script) in lines[0]
    assert _leases(leased_root) == 0
