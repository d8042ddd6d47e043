"""Is a process alive? One answer (cas/storage/processes.py) for leases, staging files and partial
downloads, everywhere: gc, ``rm``, verify, ``stats``, ``ls`` and a download looking for a partial
to resume. Holders are real processes: in another PID namespace
(``unshare``), SIGKILLed, or exited and not yet reaped (zombies)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.storage.layout import DOWNLOAD_PREFIX, LOCKS, PARTIAL_SUFFIX, PUT_PREFIX, Layout
from cas.storage.processes import (
    Holder,
    is_dead,
    place,
    staging_tag,
    start_time,
    written_by_dead_process,
)
from cas.transfer.http import Downloader

from tests.conftest import run_cas
from tests.httpserver import Reply, Server, serve

BODY = os.urandom(600_000)

LEASE = textwrap.dedent("""
    import sys, cas
    store = cas.Store.open(sys.argv[1])
    store.lease(sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin
""")

PUT = textwrap.dedent("""
    import sys, cas
    store = cas.Store.open(sys.argv[1])
    print(store.put(sys.stdin.buffer), flush=True)
    store.close()
""")

FETCH = textwrap.dedent("""
    import sys, cas
    store = cas.Store.open(sys.argv[1])
    print(store.fetch(sys.argv[2]), flush=True)
    store.close()
""")

NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


@pytest.fixture(scope="module")
def namespace() -> list[str]:
    """The command prefix that runs a process in a PID namespace of its own, with its own
    /proc (as in a container sharing the host's network and name), or a skip saying why not."""
    try:
        probe = subprocess.run([*NAMESPACE, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"unshare cannot run here: {error}")
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid needs privileges: {probe.stderr.decode().strip()}")
    return NAMESPACE


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each in a session of its own: all killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def start(children: list[subprocess.Popen[bytes]], prefix: list[str], script: str,
          *args: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [*prefix, sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    children.append(child)
    return child


def wait_for(condition: object, child: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        if child is not None and child.poll() is not None:
            raise AssertionError(child.stderr.read().decode())  # type: ignore[union-attr]
        time.sleep(0.01)


def staged(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in Layout(root).tmp.glob(pattern) if p.name != LOCKS)


def part_size(root: Path) -> int:
    return max((p.stat().st_size for p in staged(root, f"*{PARTIAL_SUFFIX}")), default=0)


def leased_digest(root: Path) -> str:
    with cas.Store.open(root) as store:
        return store.put(b"in use by a process", name="used")


# -- item 10: another PID namespace with the same host name --------------------------------------


def test_a_lease_held_in_another_pid_namespace_keeps_its_blob(
        root: Path, namespace: list[str], children: list[subprocess.Popen[bytes]]) -> None:
    """A live holder in another PID namespace: gc, verify and rm leave its lease and blob."""
    digest = leased_digest(root)
    holder = start(children, namespace, LEASE, str(root), digest)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    with cas.Store.open(root, grace_period=0) as store:
        assert store.verify().counts["lease"] == 0
        assert store.gc(max_size=0).removed == 0
        with pytest.raises(cas.InUse):
            store.remove(digest)
        assert store.stats().usage.live_leases == 1
        assert store.read_bytes(digest) == b"in use by a process"


def test_a_put_in_another_pid_namespace_keeps_its_staging_file(
        root: Path, namespace: list[str], children: list[subprocess.Popen[bytes]]) -> None:
    """A put in progress in another PID namespace: gc and verify leave its staging file, and
    the put then completes."""
    cas.Store.open(root).close()
    writer = start(children, namespace, PUT, str(root))
    assert writer.stdin is not None
    writer.stdin.write(b"first half, ")
    writer.stdin.flush()
    wait_for(lambda: staged(root, f"{PUT_PREFIX}*"), writer)
    with cas.Store.open(root) as store:
        store.gc()
        assert store.verify().counts["debris"] == 0
    assert len(staged(root, f"{PUT_PREFIX}*")) == 1
    out, err = writer.communicate(b"second half", timeout=60)
    assert writer.returncode == 0, err.decode()
    with cas.Store.open(root) as store:
        assert store.read_bytes(out.decode().strip()) == b"first half, second half"


def test_a_download_in_another_pid_namespace_keeps_its_partial(
        root: Path, server: Server, namespace: list[str],
        children: list[subprocess.Popen[bytes]]) -> None:
    """A download stalled in another PID namespace: gc and verify leave its partial, and a
    fetch of the same URL here transfers on its own instead of taking it over."""
    url = server.add("/big", BODY)
    server.script("/big", Reply(cut_after=200_000, stall=30))
    cas.Store.open(root).close()
    fetcher = start(children, namespace, FETCH, str(root), url)
    wait_for(lambda: part_size(root) >= 200_000, fetcher)
    layout = Layout(root)
    with cas.Store.open(root, downloader=Downloader(layout.tmp, layout.locks, lock=False)) as store:
        store.gc()
        assert store.verify().counts["debris"] == 0
        assert part_size(root) == 200_000
        store.fetch(url)
    assert [seen.range for seen in server.seen("/big")] == [None, None]
    assert part_size(root) == 200_000  # still the other writer's


def test_a_lease_from_an_unknown_place_is_left_to_expire(root: Path) -> None:
    """A lease recorded under a bare host name (an older cas, or no proof of the same boot and
    PID namespace) is never judged dead, even if its pid is gone here: it expires instead."""
    digest = leased_digest(root)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True).stdout
    now = time.time()
    with sqlite3.connect(Layout(root).catalog) as db:
        db.execute("INSERT INTO leases (digest, host, pid, started, created, expires)"
                   " VALUES (?, ?, ?, 1, ?, ?)",
                   (digest, socket.gethostname(), int(gone), now, now + 3600))
    db.close()
    with cas.Store.open(root, grace_period=0) as store:
        assert store.gc(max_size=0).removed == 0
        assert store.stats().usage.live_leases == 1
        with pytest.raises(cas.InUse):
            store.remove(digest)


@given(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.integers(1, 2**22),
       st.integers(0, 2**40), st.sampled_from([PUT_PREFIX, DOWNLOAD_PREFIX + "0" * 32 + "-"]))
def test_names_of_another_place_are_never_judged_dead(hash_: str, pid: int, started: int,
                                                      prefix: str) -> None:
    """A staging name whose writer's place is not this one is never taken for a dead writer's,
    whatever its pid and start time."""
    ours = staging_tag().split(".")[0]
    name = f"{prefix}{hash_}.{pid}.{started}-0123abcd"
    assert not written_by_dead_process(name) or hash_ == ours


# -- a zombie has exited: it holds nothing --------------------------------------------------------


def test_a_zombie_holds_no_lease(root: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """A holder that exited but is not reaped yet is dead for stats, rm and gc alike."""
    digest = leased_digest(root)
    holder = start(children, [], LEASE.replace("sys.stdin.read()", "os._exit(0)")
                   .replace("import sys", "import os, sys"), str(root), digest)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    wait_for(lambda: Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
             == "Z")
    assert start_time(holder.pid) is None
    assert is_dead(Holder(place(), holder.pid, time.time()))
    with cas.Store.open(root, grace_period=0) as store:
        assert store.stats().usage.live_leases == 0
        assert [entry.leases for entry in store.entries()] == [0]
        store.remove(digest)


# -- item 13: one answer to "is this lease live" ---------------------------------------------------


def test_a_killed_holders_lease_is_dead_for_stats_ls_rm_and_gc(
        root: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """After SIGKILL, stats, ls and rm agree that the lease protects nothing."""
    digest = leased_digest(root)
    holder = start(children, [], LEASE, str(root), digest)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with cas.Store.open(root) as store:
        assert store.stats().usage.live_leases == 0
    listed = run_cas("ls", "--json", root=root)
    assert listed.returncode == 0, listed.stderr
    assert [entry["leases"] for entry in json.loads(listed.stdout)] == [0]
    assert json.loads(run_cas("stats", "--json", root=root).stdout)["storage"]["live_leases"] == 0
    with cas.Store.open(root) as store:
        store.remove(digest)


def test_ls_shows_leases_and_tells_damaged_from_evicted(root: Path, server: Server) -> None:
    """``ls`` and ``ls --json`` show live leases and pins, and tell a blob whose file is missing
    or cut short (damaged) from one that cleanup removed (evicted)."""
    url = server.add("/fixture", b"fetched once")
    with cas.Store.open(root, grace_period=0) as store:
        store.fetch(url, name="evicted")
        store.gc(max_size=0)
        leased = store.put(b"leased and pinned", name="leased")
        store.pin("leased")
        missing = store.put(b"its file goes", name="missing")
        short = store.put(b"its file is cut short", name="short")
        Layout(root).blob(missing).unlink()
        path = Layout(root).blob(short)
        path.chmod(0o644)
        path.write_bytes(b"cut")
        with store.lease(leased):
            listed = run_cas("ls", "--json", root=root)
            text = run_cas("ls", root=root)
    assert listed.returncode == 0 and text.returncode == 0, listed.stderr + text.stderr
    fields = {entry["name"]: (entry["state"], entry["present"], entry["leases"], entry["pinned"])
              for entry in json.loads(listed.stdout)}
    assert fields == {
        "evicted": ("evicted", False, 0, False),
        "leased": ("stored", True, 1, True),
        "missing": ("damaged", True, 0, False),
        "short": ("damaged", True, 0, False),
    }
    states = {line.split()[-1]: line.split()[-2] for line in text.stdout.decode().splitlines()}
    assert states == {"evicted": "evicted", "leased": "pinned,leased", "missing": "damaged",
                      "short": "damaged"}


def test_ls_tells_a_blob_verify_dropped_as_damaged(root: Path) -> None:
    """A blob that verify found missing (its row dropped, its name kept) is listed as damaged,
    not as evicted."""
    with cas.Store.open(root) as store:
        digest = store.put(b"lost", name="lost")
        Layout(root).blob(digest).unlink()
        assert store.verify().counts["missing"] == 1
        [entry] = store.entries()
    assert (entry.name, entry.present, entry.state) == ("lost", False, "damaged")


# -- item 15: a killed download's partial is reclaimed and counted --------------------------------


def killed_fetch(root: Path, server: Server, children: list[subprocess.Popen[bytes]]) -> str:
    """SIGKILL a fetch once it has written 300,000 bytes of a partial; return the URL."""
    url = server.add("/big", BODY)
    server.script("/big", Reply(cut_after=300_000, stall=30))
    cas.Store.open(root).close()
    fetcher = start(children, [], FETCH, str(root), url)
    wait_for(lambda: part_size(root) >= 300_000, fetcher)
    os.killpg(fetcher.pid, signal.SIGKILL)
    fetcher.wait()
    return url


def test_a_killed_fetchs_partial_is_counted_then_reclaimed_by_gc(
        root: Path, server: Server, children: list[subprocess.Popen[bytes]]) -> None:
    """stats counts a killed fetch's partial at once; gc removes it and its sidecar."""
    killed_fetch(root, server, children)
    assert len(staged(root)) == 2  # the partial and its sidecar
    with cas.Store.open(root) as store:
        stats = store.stats()
        assert stats.staging_files == 2 and stats.staging_bytes >= 300_000
        assert stats.as_dict()["staging"]["bytes"] == stats.staging_bytes
        store.gc()
        assert staged(root) == []
        assert store.stats().staging_bytes == 0
    assert "staging (tmp/)" in run_cas("stats", root=root).stdout.decode()


def test_a_killed_fetchs_partial_is_reclaimed_by_verify(
        root: Path, server: Server, children: list[subprocess.Popen[bytes]]) -> None:
    """verify removes a killed fetch's partial and sidecar as debris, not a day later."""
    killed_fetch(root, server, children)
    with cas.Store.open(root) as store:
        assert store.verify().counts["debris"] == 2
    assert staged(root) == []


def test_a_live_partial_counts_toward_max_cache_size(
        root: Path, server: Server, children: list[subprocess.Popen[bytes]]) -> None:
    """A live download's partial stays, and size-based cleanup counts its bytes as stored:
    400 kB of blobs and a 300 kB partial are over a 600 kB limit."""
    url = server.add("/big", BODY)
    server.script("/big", Reply(cut_after=300_000, stall=30))
    with cas.Store.open(root, grace_period=0, low_water=0.5) as store:
        for index in range(4):
            store.put(os.urandom(100_000), name=f"b{index}")
        fetcher = start(children, [], FETCH, str(root), url)
        wait_for(lambda: part_size(root) >= 300_000, fetcher)
        assert store.gc(max_size=600_000, dry_run=True).removed == 4
        plan = store.gc(max_size=600_000)
        assert plan.removed == 4 and plan.stored_before >= 700_000
        assert part_size(root) == 300_000 and fetcher.poll() is None
