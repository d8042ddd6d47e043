"""Downloads through a forward proxy named by HTTP_PROXY, HTTPS_PROXY and NO_PROXY.

The proxy is a real one (PyPI's proxy.py, from the test extra) started on a free 127.0.0.1
port; it demands Basic proxy authentication, so every fetch that works through it proves that
the credentials of the proxy URL went out as Proxy-Authorization. Its access log says which
requests went through it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import cas

from tests.httpserver import Reply, Server, serve
from tests.transfer.test_http import BODY, CUT, _b3, _sha, assert_holds, fast

SECRET = "s3cret-pw"
VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proxy:
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The proxy URL with its credentials, as a user would set HTTP_PROXY."""
        return f"http://user:{SECRET}@127.0.0.1:{self.port}"

    def saw(self, text: str) -> bool:
        """Whether the access log shows ``text`` (a line is written when a connection ends,
        so it is waited for a little)."""
        deadline = time.monotonic() + 5
        while text not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """proxy.py on a free 127.0.0.1 port, requiring ``user:SECRET``; stopped after the module."""
    folder = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    log_path = folder / "proxy.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
             "--num-workers", "1", "--num-acceptors", "1", "--basic-auth", f"user:{SECRET}",
             "--log-level", "INFO"],
            cwd=folder, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"proxy.py did not start:\n{log_path.read_text()}") from None
                time.sleep(0.05)
        yield Proxy(port, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the outside, in either case: each test sets its own."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # the standard library's CGI guard
    return monkeypatch


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _proxied(server: Server, path: str) -> list[bool]:
    """For each request for ``path``, whether it came through proxy.py (its Via header)."""
    return ["proxy.py" in seen.headers.get("via", "") for seen in server.seen(path)]


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


def _dead_proxy() -> str:
    return f"http://user:{SECRET}@127.0.0.1:{_free_port()}"


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
def test_fetch_goes_through_the_proxy(root: Path, server: Server, proxy: Proxy,
                                      environment: pytest.MonkeyPatch, name: str) -> None:
    """Either case of HTTP_PROXY sends the request through the proxy, with its credentials."""
    environment.setenv(name, proxy.url)
    url = server.add(f"/{name}.bin", BODY)
    with cas.Store.open(root, downloader=fast(root)) as store:
        assert store.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    assert _proxied(server, f"/{name}.bin") == [True]
    assert_holds(root, BODY)


def test_unreachable_proxy_is_named_and_retried(root: Path, server: Server,
                                                environment: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A proxy nobody listens on fails like a connection error: retried, then a DownloadError
    that names the proxy (without its credentials) and the URL; the origin is never asked."""
    dead = _dead_proxy()
    environment.setenv("HTTP_PROXY", dead)
    url = server.add("/a.bin", BODY)
    caplog.set_level(logging.DEBUG)
    with (cas.Store.open(root, downloader=fast(root, retries=2)) as store,
          pytest.raises(cas.DownloadError) as info):
        store.fetch(url)
    message = str(info.value)
    assert f"through proxy {dead.replace(f'user:{SECRET}@', '')}" in message and url in message
    assert info.value.attempts == 3 and server.requests("/a.bin") == 0
    assert SECRET not in message and SECRET not in caplog.text
    assert_holds(root)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "localhost,127.0.0.1", "PORT"])
@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_no_proxy_bypasses(root: Path, server: Server, environment: pytest.MonkeyPatch,
                           no_proxy: str, case: object) -> None:
    """A host, ``*``, a list, or host:port in NO_PROXY (either case) goes direct: the dead
    proxy is never tried."""
    port = _port(server.base_url)
    environment.setenv(case("http_proxy"), _dead_proxy())  # type: ignore[operator]
    environment.setenv(case("no_proxy"),  # type: ignore[operator]
                       f"127.0.0.1:{port}" if no_proxy == "PORT" else no_proxy)
    url = server.add("/a.bin", BODY)
    with cas.Store.open(root, downloader=fast(root, retries=0)) as store:
        assert store.fetch(url) == _b3(BODY)


def test_domain_suffix_bypasses_and_other_hosts_do_not(root: Path, server: Server,
                                                       environment: pytest.MonkeyPatch) -> None:
    """NO_PROXY=.example.org bypasses its subdomains only: 127.0.0.1 still uses the proxy."""
    environment.setenv("HTTP_PROXY", _dead_proxy())
    environment.setenv("NO_PROXY", ".example.org")
    url = server.add("/a.bin", BODY)
    with (cas.Store.open(root, downloader=fast(root, retries=0)) as store,
          pytest.raises(cas.DownloadError, match="through proxy")):
        store.fetch(url)
    assert server.requests("/a.bin") == 0


def test_each_redirect_target_is_decided_on_its_own(root: Path, server: Server,
                                                    environment: pytest.MonkeyPatch) -> None:
    """A bypassed origin redirecting to a host that is not bypassed goes to the proxy."""
    environment.setenv("HTTP_PROXY", _dead_proxy())
    environment.setenv("NO_PROXY", "127.0.0.1")
    port = _port(server.base_url)
    target = f"http://localhost:{port}/a.bin"
    server.add("/a.bin", BODY)
    url = server.add("/old", b"", Reply(status=302, headers={"Location": target}))
    with (cas.Store.open(root, downloader=fast(root, retries=0)) as store,
          pytest.raises(cas.DownloadError, match="through proxy") as info):
        store.fetch(url)
    assert target in str(info.value)
    assert server.requests("/old") == 1 and server.requests("/a.bin") == 0


def test_interrupted_body_resumes_through_the_proxy(root: Path, server: Server, proxy: Proxy,
                                                    environment: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A body cut by the origin resumes with a Range request, through the proxy; the log
    never shows the proxy's password."""
    environment.setenv("http_proxy", proxy.url)
    caplog.set_level(logging.DEBUG)
    url = server.add("/cut.bin", BODY, Reply(cut_after=CUT))
    with cas.Store.open(root, downloader=fast(root)) as store:
        assert store.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
    ranges = [seen.range for seen in server.seen("/cut.bin")]
    assert ranges[0] is None and ranges[-1] == f"bytes={CUT}-"
    assert _proxied(server, "/cut.bin") == [True] * len(ranges)
    assert SECRET not in caplog.text and "interrupted" in caplog.text
    assert_holds(root, BODY)


def test_without_proxy_variables_nothing_is_set_up(environment: pytest.MonkeyPatch) -> None:
    """With no proxy variable the downloader goes direct, as before (no ProxyManager)."""
    from cas.transfer.proxies import configured

    assert configured() is None
    environment.setenv("NO_PROXY", "example.org")
    assert configured() == {"no": "example.org"}


def test_proxy_urls_as_users_write_them() -> None:
    """A proxy without a scheme is an http proxy; another scheme (socks5) is a UsageError
    that names the proxy without its credentials."""
    import urllib3

    from cas.transfer.proxies import Proxies

    proxies = Proxies({"http": "proxy:3128", "https": f"socks5://u:{SECRET}@proxy:1080",
                       "no": "direct.example"}, urllib3.PoolManager())  # fmt: skip
    assert proxies.proxy_for("http://files.example/a") == "http://proxy:3128"
    assert proxies.proxy_for("http://u:p@direct.example/a") is None
    assert proxies.route("http://direct.example/a")[1] == ""
    with pytest.raises(cas.UsageError, match="socks5://proxy:1080") as info:
        proxies.route("https://files.example/a")
    assert SECRET not in str(info.value)


def test_wrong_proxy_password_is_not_shown(root: Path, server: Server, proxy: Proxy,
                                           environment: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The proxy refuses a wrong password (407): the error names the proxy's answer, and
    neither it nor the log shows the password."""
    wrong = "not-the-" + SECRET
    environment.setenv("HTTP_PROXY", f"http://user:{wrong}@127.0.0.1:{proxy.port}")
    url = server.add("/a.bin", BODY)
    caplog.set_level(logging.DEBUG)
    with (cas.Store.open(root, downloader=fast(root, retries=0)) as store,
          pytest.raises(cas.DownloadError, match="407") as info):
        store.fetch(url)
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert server.requests("/a.bin") == 0


def test_https_goes_through_a_connect_tunnel(root: Path, proxy: Proxy, tmp_path: Path,
                                             environment: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY tunnels with CONNECT; the origin's certificate is checked end to end."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    environment.setenv("HTTPS_PROXY", proxy.url)
    for tls_server in serve(context):
        url = tls_server.add("/tls.bin", BODY)
        downloader = fast(root, ca_bundle=bundle)
        with cas.Store.open(root, downloader=downloader) as store:
            assert store.fetch(url, sha256=_sha(BODY)) == _b3(BODY)
        downloader.close()  # the proxy logs the tunnel when it ends
        assert tls_server.requests("/tls.bin") == 1
    assert proxy.saw(f"CONNECT 127.0.0.1:{_port(url)}")
    assert_holds(root, BODY)
