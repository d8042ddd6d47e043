"""Signals and pipes through the real command line: `cas lease` forwards signals to its command
and releases its leases; Ctrl-C stops `cas sync` and keeps partial downloads; a closed pipe is
not an error."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

import cas
from cas.storage.layout import DOWNLOAD_PREFIX, PARTIAL_SUFFIX, Layout

from tests.conftest import run_cas_process as run_cas
from tests.httpserver import Server

CAS = [sys.executable, "-m", "cas"]


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it holds (no timing is asserted: the limit only ends a hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _foreground() -> None:
    """Start a child as a terminal's shell starts a foreground command: SIGINT and SIGQUIT at
    their defaults, even when this run inherited them ignored (a background job of a
    non-interactive shell does), so that Ctrl-C is tested as a user sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _leases(root: Path) -> int:
    with sqlite3.connect(Layout(root).catalog) as conn:
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
                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_foreground,
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


# -- item 19: pipes, Ctrl-C during sync, -q, flag names, closed stores, InUse -------------------


def test_cat_into_a_closed_pipe_exits_0_quietly(leased_root: Path, tmp_path: Path) -> None:
    """`cas cat BIG | head -c 1` exits 0 with nothing on stderr, as other Unix tools do."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))
    assert run_cas("put", str(big), "--name", "big", root=leased_root).returncode == 0
    cat = Popen([*CAS, "--root", str(leased_root), "cat", "big"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    head = Popen(["head", "-c", "1"], stdin=cat.stdout, stdout=subprocess.PIPE)
    assert cat.stdout is not None
    cat.stdout.close()  # head alone reads the pipe: its exit closes it
    assert len(head.communicate(timeout=60)[0]) == 1
    _, err = cat.communicate(timeout=60)
    assert (cat.returncode, err) == (0, b"")


def _manifest(tmp_path: Path, fixtures: dict[str, tuple[str, bytes]]) -> Path:
    path = tmp_path / "fixtures.toml"
    path.write_text("".join(
        f'[fixtures."{name}"]\nurl = "{url}"\nsha256 = "{hashlib.sha256(body).hexdigest()}"\n'
        for name, (url, body) in fixtures.items()
    ))  # fmt: skip
    return path


def test_ctrl_c_stops_sync_and_keeps_partials(tmp_path: Path) -> None:
    """SIGINT stops `cas sync` while it downloads from a slow server: it exits 130 with one
    line, and the partial download stays in tmp/ for a resume."""
    root = tmp_path / "store"
    body = os.urandom(4 << 20)
    with Server() as server:
        url = server.add("/slow.bin", body, chunk=4096, delay=0.05)  # about 20 minutes in all
        manifest = _manifest(tmp_path, {"slow.bin": (url, body)})
        with open(tmp_path / "stderr", "wb") as err:
            sync = Popen([*CAS, "--root", str(root), "sync", str(manifest)],
                         stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_foreground)  # fmt: skip
        pattern = f"{DOWNLOAD_PREFIX}*{PARTIAL_SUFFIX}"
        parts = lambda: [p for p in Layout(root).tmp.glob(pattern) if p.stat().st_size]  # noqa: E731
        _wait_for(lambda: Layout(root).tmp.is_dir() and bool(parts()), "a partial download")
        sync.send_signal(signal.SIGINT)
        try:
            sync.wait(timeout=60)
        finally:
            if sync.poll() is None:
                sync.kill()
    lines = (tmp_path / "stderr").read_bytes().decode().splitlines()
    assert sync.returncode == 130, lines
    assert lines == ["cas: error: interrupted"]
    assert parts(), "the partial download was not kept"


def test_quiet_prints_results_only(tmp_path: Path) -> None:
    """With -q, sync prints its digests on stdout and nothing at all on stderr."""
    root = tmp_path / "store"
    body = b"quiet fixture"
    with Server() as server:
        manifest = _manifest(tmp_path, {"q.bin": (server.add("/q.bin", body), body)})
        done = run_cas("-q", "sync", str(manifest), root=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.decode().split() == [cas.Store.open(root).path("q.bin").parent.name,
                                             "q.bin"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--profile", "nope"], "--profile"), (["--config", "/nonexistent/cas.toml"], "--config")],
)
def test_flag_errors_name_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    """Errors about --profile and --config name the flag, not "keyword argument"."""
    done = run_cas(*args, "ls", root=tmp_path / "store")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert f"(from {flag})" in lines[0] and "keyword argument" not in lines[0]


#: Arguments that each public method of Store would accept on an open store.
CALLS: dict[str, tuple[Any, ...]] = {
    "put": (b"x",), "put_many": ([b"x"],), "tag": ("n", "k"), "untag": ("k",), "remove": ("k",),
    "path": ("k",), "open_blob": ("k",), "read_bytes": ("k",), "entries": (),
    "fetch": ("http://127.0.0.1:9/x",), "stored": ("http://127.0.0.1:9/x",),
    "sync": ("m.toml",), "sync_report": ("m.toml",),
    "push": (), "pull": (),
    "stats": (), "verify": (), "lease": ("k",), "pin": ("k",), "unpin": ("k",), "gc": (),
    "wait_for_cleanup": (), "maintenance": (), "flush": (),
}  # fmt: skip


def test_closed_store_refuses_every_method(tmp_path: Path) -> None:
    """After close(), every public method raises StoreError "store ... is closed"; closing
    twice is harmless."""
    store = cas.Store.open(tmp_path / "store")
    store.put(b"kept", name="k")
    public = {name for name, value in vars(cas.Store).items()
              if not name.startswith("_") and inspect.isfunction(value)} - {"open", "close"}
    assert public == set(CALLS)
    store.close()
    store.close()
    for name, args in CALLS.items():
        with pytest.raises(cas.StoreError, match="is closed"):
            result = getattr(store, name)(*args)
            if name == "maintenance":
                result.__enter__()
    with pytest.raises(cas.StoreError, match="is closed"):
        list(store)


def test_in_use_message_names_no_flag(tmp_path: Path) -> None:
    """InUse from the API says what is wrong without a CLI flag; `cas rm` adds --force."""
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        store.put(b"held", name="held")
        with store.lease("held"), pytest.raises(cas.InUse) as raised:
            store.remove("held")
        assert "--force" not in str(raised.value) and "leased" in str(raised.value)
        with store.lease("held"):
            done = run_cas("rm", "held", root=root)
    assert done.returncode == 5
    assert "--force" in done.stderr.decode()
