"""ranges: a 1 GiB parallel ranged fetch over unthrottled loopback from nginx.

Contenders, interleaved round by round, each writing a fresh file: ``Store.fetch`` with its
default settings (8 connections in ranges for files of 32 MiB and more) and the expected BLAKE3,
the same with ``connections=1`` (one stream), a bare urllib3 read loop into a file with no
hashing (the floor of a Python download), and ``curl -o``. Then the peak anonymous memory
(RssAnon, sampled every 2 ms, and VmHWM) of a default fetch in a child process, and a resume:
a child fetch is SIGKILLed once its partial's sidecar records half the file written, a second
fetch finishes it, and nginx's access log says how many body bytes were sent in all; once from
the unthrottled nginx, once from one with ``limit_rate 40m`` (per connection, as CDNs cap a flow).

The throttled origin (nginx ``limit_rate``) against aria2c and hf_transfer is suite_transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import urllib3
from harness import (
    Context,
    GiB,
    MiB,
    Row,
    SuiteResult,
    Target,
    curl_download,
    interleave,
    median,
    urllib3_download,
)
from harness import remove as remove_path
from suite_fetch import FETCH_CHILD, Nginx, served_input

import cas
from cas.storage.layout import SIDECAR_SUFFIX, Layout

SIZE = GiB
QUICK_SIZE = 64 * MiB
ROUNDS = 5

_ANON_CHILD = """
import sys, threading, time, cas
peak = [0]
def sample():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
with cas.Store.open(sys.argv[1]) as store:
    digest = store.fetch(sys.argv[2], blake3=sys.argv[3])
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(digest, peak[0], hwm)
"""


def _recorded(root: object) -> int:
    """Bytes the sidecar of a parallel partial in the store at ``root`` records as written."""
    done = 0
    for path in Layout(root).tmp.glob(f"*{SIDECAR_SUFFIX}"):  # type: ignore[arg-type]
        try:
            spans = json.loads(path.read_text()).get("done") or []
        except (OSError, ValueError):
            continue
        done = max(done, sum(end - start for start, end in spans))
    return done


def _killed_and_resumed(ctx: Context, server: Nginx, out: Path, blake3: str,
                        size: int) -> tuple[int, int]:
    """Bytes ``server`` sent for a fetch SIGKILLed once half the file is recorded written and a
    second fetch that finishes it; and the bytes recorded at the kill."""
    url = server.url("data.bin")
    before = server.sent()
    child = subprocess.Popen([ctx.python, "-c", FETCH_CHILD, str(out), url, blake3, "8"],
                             stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if out.exists() and _recorded(out) >= size // 2:
            break
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    recorded = _recorded(out)
    with cas.Store.open(out) as store:
        assert store.fetch(url, blake3=blake3) == blake3
    sent = server.sent() - before
    remove_path(out)
    return sent, recorded


def run(ctx: Context) -> SuiteResult:
    if shutil.which("nginx") is None:
        return SuiteResult([], ["nginx is not installed (`apt-get install -y nginx`): skipped."])
    size = QUICK_SIZE if ctx.quick else SIZE
    rounds = ctx.rounds_or(ROUNDS)
    folder, server, source, blake3 = served_input(ctx, "ranges", size)
    out = folder / "out"
    http = urllib3.PoolManager()

    with server:
        url = server.url("data.bin")

        def cas_fetch(connections: int = 8) -> float:
            remove_path(out)
            with cas.Store.open(out, connections=connections) as store:
                start = time.perf_counter()
                assert store.fetch(url, blake3=blake3) == blake3
                return time.perf_counter() - start

        curl = curl_download(url, out)
        bare_urllib3 = urllib3_download(http, url, out)

        contenders = {"cas": cas_fetch, "cas one stream": lambda: cas_fetch(connections=1),
                      "urllib3": bare_urllib3, "curl -o": curl}
        ctx.log(f"ranges: {rounds} rounds of {size // MiB} MiB over loopback")
        samples = interleave(contenders, rounds, ctx.log)
        remove_path(out)

        ctx.log("ranges: peak anonymous memory of a fetch in a child process")
        printed = subprocess.run([ctx.python, "-c", _ANON_CHILD, str(out), url, blake3],
                                 check=True, capture_output=True, text=True).stdout.split()
        assert printed[0] == blake3
        anon, hwm = int(printed[1]), int(printed[2])
        remove_path(out)

        ctx.log("ranges: kill half-way, then resume")
        resumed_bytes, recorded = _killed_and_resumed(ctx, server, out, blake3, size)

    slow_bytes = slow_recorded = None
    if not ctx.quick:  # (quick mode checks the runner: one resume is enough)
        throttled = Nginx(folder / "throttled", rate="40m")
        os.link(source, folder / "throttled" / "www" / "data.bin")
        with throttled:
            ctx.log("ranges: kill half-way, then resume, from nginx with limit_rate 40m")
            slow_bytes, slow_recorded = _killed_and_resumed(ctx, throttled, out, blake3, size)

    seconds = {name: median(values) for name, values in samples.items()}
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    what = f"fetch of {label} over unthrottled loopback, wall time"

    def row(peer: str, shown: str, target: Target | None) -> Row:
        return Row(what, "s", seconds["cas"], peer=shown, peer_value=seconds[peer],
                   target=target, cas_samples=tuple(samples["cas"]),
                   peer_samples=tuple(samples[peer]))

    rows = [
        row("urllib3", "urllib3 read loop into a file, no hashing", Target("<=", 1.25)),
        row("curl -o", "curl -o", Target("<", 1.0)),
        row("cas one stream", "cas, connections=1", None),
        Row(f"peak RssAnon of the {label} fetch (child process, sampled every 2 ms)", "bytes",
            anon, target=Target("<", 100 * MiB, on="value"),
            note=f"VmHWM (file pages included) {hwm / MiB:.1f} MiB"),
        Row("bytes sent for a parallel fetch killed half-way and resumed, per byte of the file",
            "x", resumed_bytes / size, target=Target("<=", 1.01, on="value"),
            note=f"{resumed_bytes:,} bytes sent for a {size:,}-byte file; the sidecar recorded"
                 f" {recorded:,} bytes written at the kill"),
    ]
    if slow_bytes is not None:
        rows.append(Row(
            "bytes sent for a parallel fetch killed half-way and resumed, per byte of the file,"
            " nginx limit_rate 40m", "x", slow_bytes / size, target=Target("<=", 1.01, on="value"),
            note=f"{slow_bytes:,} bytes sent for a {size:,}-byte file; the sidecar recorded"
                 f" {slow_recorded:,} bytes written at the kill"))
    notes = [
        "nginx 1.22 from Debian, `sendfile on`, one worker, on 127.0.0.1, no rate limit; every"
        " contender writes a new file (cas a new store) each round; the input is in the page"
        " cache. cas is given the expected BLAKE3 and runs with its default settings"
        " (connections 8, parallel_min_size 32MiB) unless the row says otherwise.",
    ]
    notes.append(
        "Resume: the second fetch asks for exactly the spans the sidecar does not record (tests"
        " check it byte for byte); what is sent twice is what the kill lost: the bytes in the"
        " sockets' buffers (on unthrottled loopback the reader is the bottleneck, so each of the"
        " 8 connections has its buffers full, some MiB each), the first response's body past"
        " its piece, and at most 1/1024 of the file written but not yet recorded.")
    return SuiteResult(rows, notes)
