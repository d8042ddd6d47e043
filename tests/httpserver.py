"""A real HTTP(S) server on 127.0.0.1, in a thread, that misbehaves on demand.

Each path serves a ``Resource`` (body, ETag, Last-Modified, Content-Encoding, throttle) and
honours ``Range``, ``If-Range``, ``If-None-Match`` and ``If-Modified-Since`` (a 304 without a
body) like a good server, and may require headers (401 without them), unless the path's script
says otherwise:
``server.script(path, Reply(...), ...)`` queues how to answer the next requests (drop the
connection mid-body, send fewer bytes than Content-Length, stall, ignore Range, answer a 206 at
the wrong offset, a status with headers, ...); a reply with ``at`` answers only the ranged request
that starts at that byte, so each range of a parallel download can misbehave on its own. Every
request is recorded with its headers, the
status sent and the body bytes actually written, so tests can assert what the server saw.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    """How to answer one request; the defaults serve the resource correctly."""

    status: int | None = None  #: answer with this status, ``headers`` and ``body`` instead
    headers: dict[str, str] = field(default_factory=dict)  #: added to (or replacing) defaults
    body: bytes = b""  #: the body of a ``status`` reply
    cut_after: int | None = None  #: write only this many body bytes, then close
    reset: bool = False  #: close with a TCP reset instead of a clean FIN
    stall: float = 0.0  #: after ``cut_after`` bytes, hang this long before closing
    ignore_range: bool = False  #: answer 200 with the whole body even to a Range request
    ignore_if_range: bool = False  #: honour Range even when If-Range no longer matches
    range_start: int | None = None  #: answer a Range with a 206 starting here instead
    after: Callable[[], None] | None = None  #: run once this reply is sent
    raw: bytes | None = None  #: write exactly these bytes as the whole response, then close
    drip: float = 0.0  #: write ``raw`` one byte at a time, this many seconds apart
    endless: bool = False  #: a 200 without Content-Length whose body repeats until the client quits
    at: int | None = None  #: answer only the request whose Range starts at this byte
    cap: int | None = None  #: answer a Range with at most this many bytes (a 206 of less)
    change: dict[str, Any] | None = None  #: change the resource so (Resource fields) first
    ignore_conditions: bool = False  #: answer 200 even when If-None-Match/If-Modified-Since match


@dataclass
class Resource:
    """What a path serves."""

    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 02 Jan 2006 15:04:05 GMT"
    encoding: str | None = None  #: a Content-Encoding header; the body is sent as it is
    chunk: int = 65536  #: bytes per write
    delay: float = 0.0  #: seconds between writes (a throttle)
    auth: str | None = None  #: "user:password" required as HTTP Basic authentication, else 401
    require: dict[str, str] = field(default_factory=dict)  #: headers required exactly, else 401
    pause: float = 0.0  #: seconds to wait before answering (a slow origin)
    script: list[Reply] = field(default_factory=list)
    ranges: bool = True  #: honour Range requests (else every answer is a 200 with the body)


@dataclass
class Seen:
    """One request the server received, and what it answered."""

    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0  #: body bytes written

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        seen = Seen(path, {key.lower(): value for key, value in self.headers.items()})
        with self.server.lock:
            self.server.seen.append(seen)
            resource = self.server.resources.get(path)
            reply = _next_reply(resource, seen.range) if resource else Reply()
            for key, value in (reply.change or {}).items():
                assert resource is not None
                setattr(resource, key, value)
        if resource is None:
            self._status(seen, Reply(status=404, body=b"no such path"))
        elif (resource.auth is not None and not _authorized(seen, resource.auth)) or any(
            seen.headers.get(key.lower()) != value for key, value in resource.require.items()
        ):
            self._status(seen, Reply(status=401, body=b"who are you?",
                                     headers={"WWW-Authenticate": 'Basic realm="cas"'}))
        elif reply.raw is not None:
            self._raw(seen, reply.raw, reply.drip)
        elif reply.endless:
            self._endless(seen, resource)
        elif reply.status is not None:
            self._status(seen, reply)
        else:
            self._serve(seen, resource, reply)
        if reply.after is not None:
            reply.after()

    def _status(self, seen: Seen, reply: Reply) -> None:
        assert reply.status is not None
        seen.status = reply.status
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._write(seen, reply.body, Resource(b""), reply)

    def _raw(self, seen: Seen, data: bytes, drip: float) -> None:
        """A server that dies part-way: these bytes (a cut header block, a cut chunked body, an
        HTTP/1.0 answer), then a clean close; with ``drip``, a byte at a time."""
        seen.status = int(data.split(b" ", 2)[1]) if data.count(b" ") >= 2 else 0
        self.close_connection = True
        try:
            for start in range(0, len(data), 1 if drip else len(data) or 1):
                self.wfile.write(data[start : start + 1] if drip else data)
                if drip and self.server.stopping.wait(drip):
                    break
        except OSError:  # the client gave up
            pass

    def _endless(self, seen: Seen, resource: Resource) -> None:
        """A 200 with no declared length whose body never ends (read until close)."""
        seen.status = 200
        self.close_connection = True
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        piece = resource.body[: resource.chunk] or b"x"
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(piece)
                seen.sent += len(piece)
                if resource.delay:
                    self.server.stopping.wait(resource.delay)
        except OSError:  # the client gave up, as it should
            pass

    def _serve(self, seen: Seen, resource: Resource, reply: Reply) -> None:
        if resource.pause:
            self.server.stopping.wait(resource.pause)
        if not reply.ignore_conditions and _not_modified(seen, resource):
            seen.status = 304
            self.send_response(304)
            for key, value in (("ETag", resource.etag), ("Last-Modified", resource.last_modified)):
                if value:
                    self.send_header(key, value)
            self.end_headers()
            return
        body = resource.body
        first, last = 0, len(body) - 1
        status = 200
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", seen.range or "")
        if_range = seen.headers.get("if-range")
        current = if_range is None or if_range in (resource.etag, resource.last_modified)
        honour = resource.ranges and not reply.ignore_range
        if asked and honour and (current or reply.ignore_if_range):
            first = int(asked[1])
            last = int(asked[2]) if asked[2] else len(body) - 1
            status = 206
            if first >= len(body):
                self._status(
                    seen, Reply(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
                )
                return
            if reply.range_start is not None:
                first = reply.range_start
            if reply.cap is not None:
                last = min(last, first + reply.cap - 1)
        payload = body[first : last + 1]
        seen.status = status
        self.send_response(status)
        headers = {"Content-Length": str(len(payload))}
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        if resource.etag:
            headers["ETag"] = resource.etag
        if resource.last_modified:
            headers["Last-Modified"] = resource.last_modified
        if resource.encoding:
            headers["Content-Encoding"] = resource.encoding
        headers.update(reply.headers)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._write(seen, payload, resource, reply)

    def _write(self, seen: Seen, payload: bytes, resource: Resource, reply: Reply) -> None:
        limit = len(payload) if reply.cut_after is None else min(reply.cut_after, len(payload))
        done = 0
        try:
            while done < limit:
                piece = payload[done : min(done + resource.chunk, limit)]
                self.wfile.write(piece)
                done += len(piece)
                seen.sent = done
                if resource.delay and self.server.stopping.wait(resource.delay):
                    break
        except OSError:  # the client went away (or was killed)
            self.close_connection = True
            return
        if reply.cut_after is None:
            return
        self.close_connection = True
        if reply.stall:
            self.server.stopping.wait(reply.stall)
        if reply.reset:
            # SO_LINGER 0: close() sends a RST, the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with self.server.lock:
                self.server.resets.add(id(self.connection))


def _next_reply(resource: Resource, asked: str | None) -> Reply:
    """Take the first scripted reply for a request asking ``asked`` (its Range header): one
    without ``at``, or one whose ``at`` is where the range starts; else the default reply."""
    match = re.fullmatch(r"bytes=(\d+)-\d*", asked or "")
    start = int(match[1]) if match else None
    for index, reply in enumerate(resource.script):
        if reply.at is None or reply.at == start:
            return resource.script.pop(index)
    return Reply()


def _not_modified(seen: Seen, resource: Resource) -> bool:
    """Whether a conditional GET matches the current resource (RFC 9110: If-None-Match, by
    weak comparison, wins over If-Modified-Since)."""
    tags = seen.headers.get("if-none-match")
    if tags is not None:
        current = (resource.etag or "").removeprefix("W/")
        return bool(current) and (tags.strip() == "*" or current in [
            tag.strip().removeprefix("W/") for tag in tags.split(",")])
    since = seen.headers.get("if-modified-since")
    if since is None or resource.last_modified is None:
        return False
    try:
        return parsedate_to_datetime(resource.last_modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False


def _authorized(seen: Seen, credentials: str) -> bool:
    """Whether the request carried ``credentials`` as HTTP Basic authentication."""
    sent = seen.headers.get("authorization", "")
    return sent == "Basic " + base64.b64encode(credentials.encode()).decode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.resources: dict[str, Resource] = {}
        self.seen: list[Seen] = []
        self.connections = 0
        self.resets: set[int] = set()
        self.stopping = threading.Event()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        with self.lock:
            self.connections += 1
        if self.tls is not None:
            # The handshake happens in the handler's thread, on its first read.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            reset = id(request) in self.resets
            self.resets.discard(id(request))
        if reset:
            self.close_request(request)  # no shutdown(SHUT_WR): that would send a FIN first
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed TLS handshakes and clients that hang up are expected here


class Server:
    """The server and its controls; use as a context manager (or the ``http_server`` fixture)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server(tls)
        host, port = self._server.server_address[:2]
        self.base_url = f"{'https' if tls else 'http'}://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # the default 0.5s poll makes every shutdown wait that long

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes, *replies: Reply, **options: Any) -> str:
        """Serve ``body`` at ``path`` (options: see Resource), scripted by ``replies``."""
        with self._server.lock:
            self._server.resources[path] = Resource(body, script=list(replies), **options)
        return self.url(path)

    def update(self, path: str, **changes: Any) -> None:
        """Change what ``path`` serves from now on (body, etag, delay, ...)."""
        with self._server.lock:
            resource = self._server.resources[path]
            for key, value in changes.items():
                setattr(resource, key, value)

    def script(self, path: str, *replies: Reply) -> None:
        """Queue how to answer the next requests for ``path``."""
        with self._server.lock:
            self._server.resources[path].script.extend(replies)

    def seen(self, path: str | None = None) -> list[Seen]:
        """The requests received (for ``path``), oldest first."""
        with self._server.lock:
            return [s for s in self._server.seen if path is None or s.path == path]

    def requests(self, path: str) -> int:
        return len(self.seen(path))

    def sent(self, path: str) -> int:
        """Body bytes written for ``path`` over all requests."""
        return sum(s.sent for s in self.seen(path))

    def bodies(self, path: str) -> int:
        """Responses for ``path`` that sent body bytes."""
        return sum(1 for s in self.seen(path) if s.sent)

    @property
    def connections(self) -> int:
        """TCP connections accepted (TLS handshakes attempted, for an HTTPS server)."""
        with self._server.lock:
            return self._server.connections


def serve(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """For a pytest fixture: ``yield from serve()``."""
    with Server(tls) as server:
        yield server
