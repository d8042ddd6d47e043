"""fetch: a 1 GiB download over loopback from nginx, against curl, bare urllib3 and pooch.

nginx (Debian's package) is started by the suite on 127.0.0.1 with a configuration of its own
in the scratch folder. Contenders, interleaved round by round, each writing a fresh file:
``Store.fetch`` with the expected BLAKE3 of the file (hashing while receiving, verifying,
publishing), ``curl -o``, a bare urllib3 stream into a file with no hashing (the floor of a
Python download), and ``pooch.retrieve`` with the known SHA-256. Then cas's peak RSS in a child
process, and a resume: a child fetch on one connection is SIGKILLed once half the file is in
tmp/, a second one finishes it, and nginx's access log says how many body bytes were sent in all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
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
    peak_rss,
    urllib3_download,
)
from harness import remove as remove_path
from suite_put_large import make_input, read_through

import cas
from cas.storage.layout import Layout

SIZE = GiB
QUICK_SIZE = 64 * MiB
ROUNDS = 5  # 1 GiB writes vary 2-3x from round to round on this VM: medians need five

NGINX_CONF = """
daemon on;
{user}
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format sent '$request_uri $status $body_bytes_sent';
    access_log {dir}/access.log sent;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    sendfile on;
    keepalive_requests 100000;
    limit_rate {rate};
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"""

FETCH_CHILD = """
import sys, cas
with cas.Store.open(sys.argv[1], connections=int(sys.argv[4])) as store:
    print(store.fetch(sys.argv[2], blake3=sys.argv[3]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx serving ``folder/www`` on 127.0.0.1, started and stopped by the suite: ``rate``
    bytes per second per connection (nginx's ``limit_rate``, 0 for none), with ``workers``
    worker processes."""

    def __init__(self, folder: Path, *, rate: str = "0", workers: str = "1") -> None:
        self.folder = folder
        self.port = _free_port()
        (folder / "www").mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""  # else nginx keeps the caller's user
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=folder, port=self.port, rate=rate, user=user,
                                          workers=workers))  # fmt: skip
        self.conf = conf

    def __enter__(self) -> Nginx:
        subprocess.run(["nginx", "-c", str(self.conf), "-e", str(self.folder / "error.log")],
                       check=True)
        return self

    def __exit__(self, *_: object) -> None:
        """Stop nginx and wait until its master has exited (and removed its pid file), so that
        its folder can go."""
        pid_file = self.folder / "nginx.pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        subprocess.run(["nginx", "-c", str(self.conf), "-e", str(self.folder / "error.log"),
                        "-s", "stop"], check=False)
        deadline = time.monotonic() + 30
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def sent(self) -> int:
        """Body bytes nginx reports sent, over every request so far."""
        log = self.folder / "access.log"
        return sum(int(line.split()[-1]) for line in log.read_text().splitlines() if line)


def served_input(ctx: Context, name: str, size: int) -> tuple[Path, Nginx, Path, str]:
    """A fresh folder ``name`` under the scratch folder whose nginx serves an input of ``size``
    bytes as ``data.bin``; the folder, the server (not started), the input and its BLAKE3
    digest (computed once). The input is read into the page cache."""
    folder = ctx.scratch / name
    remove_path(folder)
    folder.mkdir(parents=True)
    server = Nginx(folder)
    source = ctx.scratch / f"input-{size}.bin"
    make_input(source, size)
    os.link(source, folder / "www" / "data.bin")
    with cas.Store.open(folder / "hash-store") as store:
        blake3 = store.put(source)
    remove_path(folder / "hash-store")
    read_through(source)
    return folder, server, source, blake3


def run(ctx: Context) -> SuiteResult:
    if shutil.which("nginx") is None:
        return SuiteResult([], ["nginx is not installed (`apt-get install -y nginx`): skipped."])
    size = QUICK_SIZE if ctx.quick else SIZE
    rounds = ctx.rounds_or(ROUNDS)
    folder, server, source, blake3 = served_input(ctx, "fetch", size)
    sha256 = subprocess.run(["sha256sum", str(source)], check=True, capture_output=True,
                            text=True).stdout.split()[0]
    out = folder / "out"
    http = urllib3.PoolManager()

    with server:
        url = server.url("data.bin")

        def cas_fetch() -> float:
            remove_path(out)
            with cas.Store.open(out) as store:
                start = time.perf_counter()
                assert store.fetch(url, blake3=blake3) == blake3
                return time.perf_counter() - start

        curl = curl_download(url, out)
        bare_urllib3 = urllib3_download(http, url, out)

        def pooch_retrieve() -> float:
            import pooch  # type: ignore[import-untyped]

            remove_path(out)
            out.mkdir()
            start = time.perf_counter()
            pooch.retrieve(url, known_hash=f"sha256:{sha256}", path=out, progressbar=False)
            return time.perf_counter() - start

        contenders = {"cas fetch": cas_fetch, "curl -o": curl, "urllib3 stream": bare_urllib3,
                      "pooch.retrieve": pooch_retrieve}
        ctx.log(f"fetch: {rounds} rounds of {size // MiB} MiB over loopback")
        samples = interleave(contenders, rounds, ctx.log)
        remove_path(out)

        ctx.log("fetch: peak RSS of a fetch in a child process")
        rss, printed = peak_rss(ctx.python, FETCH_CHILD, [str(out), url, blake3, "8"])
        assert printed.strip() == blake3
        remove_path(out)

        ctx.log("fetch: kill half-way, then resume")
        before = server.sent()
        # One stream, whose partial grows as it goes (a parallel one has its final size at
        # once; suite_ranges measures its resume).
        child = subprocess.Popen([ctx.python, "-c", FETCH_CHILD, str(out), url, blake3, "1"],
                                 stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partials = [p for p in Layout(out).tmp.glob("*") if p.is_file()] if out.exists() else []
            if any(p.stat().st_size >= size // 2 for p in partials):
                break
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with cas.Store.open(out) as store:
            assert store.fetch(url, blake3=blake3) == blake3
        resumed_bytes = server.sent() - before
        remove_path(out)

    seconds = {name: median(values) for name, values in samples.items()}
    mib = size / MiB
    throughput = {name: mib / value for name, value in seconds.items()}
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    rows = [
        Row(f"fetch of {label} over loopback, throughput", "MiB/s", throughput["cas fetch"],
            peer="curl -o", peer_value=throughput["curl -o"], target=Target(">=", 1.0),
            cas_samples=tuple(mib / v for v in samples["cas fetch"]),
            peer_samples=tuple(mib / v for v in samples["curl -o"])),
        Row(f"fetch of {label} over loopback, wall time", "s", seconds["cas fetch"],
            peer="urllib3 stream, no hashing", peer_value=seconds["urllib3 stream"],
            target=Target("<=", 1.25), cas_samples=tuple(samples["cas fetch"]),
            peer_samples=tuple(samples["urllib3 stream"])),
        Row(f"fetch of {label} over loopback, wall time", "s", seconds["cas fetch"],
            peer="pooch.retrieve, known SHA-256", peer_value=seconds["pooch.retrieve"],
            target=Target("<", 1.0), cas_samples=tuple(samples["cas fetch"]),
            peer_samples=tuple(samples["pooch.retrieve"])),
        Row(f"peak RSS of the {label} fetch (child process)", "bytes", rss,
            target=Target("<", 100 * MiB, on="value")),
        Row("bytes sent for a fetch killed half-way and resumed, per byte of the file", "x",
            resumed_bytes / size, target=Target("<=", 1.01, on="value"),
            note=f"{resumed_bytes:,} bytes sent for a {size:,}-byte file"),
    ]
    notes = [
        "nginx 1.22 from Debian, `sendfile on`, one worker, on 127.0.0.1; every contender "
        "writes a new file (cas a new store) each round; the input is in the page cache.",
        "cas fetch is given the expected BLAKE3, so it hashes while receiving and verifies "
        "before publishing; pooch is given the SHA-256 and hashes after the download.",
    ]
    return SuiteResult(rows, notes)
