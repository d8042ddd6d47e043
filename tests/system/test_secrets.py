"""Credentials in URLs: used by the download, never recorded or shown.

A URL's ``user:password@`` goes into the HTTP Basic Authorization header of requests to its own
origin and nowhere else: not the catalog, a log line, ``ls --json``, an error message, a staging
file or the remote tier. Each test greps the bytes of what cas wrote and printed for the secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.storage.layout import BLOBS, Layout
from cas.urls import redact, split_credentials

from tests.conftest import run_cas
from tests.httpserver import Reply, Server, serve

SECRET = "s3cr3t-Pa55w0rd"
USER = "alice"
BODY = b"private fixture " * 1000


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _with_credentials(url: str, user: str = USER, password: str = SECRET) -> str:
    return url.replace("://", f"://{user}:{password}@", 1)


def _private(server: Server, path: str = "/private.bin", body: bytes = BODY) -> str:
    """The URL, with credentials, of ``body`` served only to USER:SECRET."""
    return _with_credentials(server.add(path, body, auth=f"{USER}:{SECRET}"))


def _files_of(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` but the blobs, with its bytes (catalog, WAL, tmp/, ...)."""
    return {
        path: path.read_bytes() for path in root.rglob("*")
        if path.is_file() and BLOBS not in path.relative_to(root).parts
    }  # fmt: skip


def assert_no_secret(root: Path, *texts: bytes | str) -> None:
    """Neither a file of the store (catalog and WAL included) nor any of ``texts`` holds it."""
    for path, data in _files_of(root).items():
        assert SECRET.encode() not in data, path
    for text in texts:
        assert SECRET not in (text.decode() if isinstance(text, bytes) else text)


def test_cli_fetch_uses_credentials_and_records_none(root: Path, server: Server) -> None:
    """`cas -vv fetch` with user:password@ authenticates, and neither the catalog, its
    output, its debug log nor `ls --json` holds the password (the recorded URL has no
    userinfo at all)."""
    url = _private(server)
    fetched = run_cas("-vv", "fetch", url, "--name", "fx", "--sha256", _sha(BODY), root=root)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.decode().strip() == blake3.blake3(BODY).hexdigest()
    assert server.seen("/private.bin")[-1].status == 200
    listed = run_cas("ls", "--json", root=root)
    assert listed.returncode == 0, listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == "fx")
    assert entry["source"] == server.url("/private.bin")
    assert_no_secret(root, fetched.stdout, fetched.stderr, listed.stdout, listed.stderr)
    assert server.url("/private.bin").encode() in fetched.stderr  # the log names the URL


def test_progress_bar_on_a_terminal_hides_the_password(root: Path, server: Server) -> None:
    """`cas fetch` with stderr on a terminal draws its bar labelled without the credentials,
    also for a URL whose path is only "/"."""
    server.add("/", BODY, auth=f"{USER}:{SECRET}")
    controller, terminal = os.openpty()
    # 24 rows of 120 columns: tqdm sizes its bar to the terminal, and draws nothing in 0 columns.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-m", "cas", "--root", str(root), "fetch",
         _with_credentials(server.url("/"))],
        stdout=subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert child.wait(timeout=60) == 0
    assert child.stdout is not None and child.stdout.read().strip() == blake3.blake3(
        BODY).hexdigest().encode()
    assert b"127.0.0.1" in drawn  # the bar was drawn, labelled with the URL
    assert_no_secret(root, drawn)


def test_errors_and_logs_name_the_url_without_credentials(
    root: Path, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused password (401), a missing file (404) and a wrong digest are reported with
    the URL, never with its password, on the CLI and in the log."""
    caplog.set_level(logging.DEBUG, logger="cas")
    url = _private(server)
    wrong = _with_credentials(server.url("/private.bin"), password=SECRET + "-wrong")
    refused = run_cas("fetch", wrong, root=root)
    missing = run_cas("fetch", _with_credentials(server.url("/nothing")), root=root)
    assert (refused.returncode, missing.returncode) == (1, 1)
    assert b"401" in refused.stderr and b"404" in missing.stderr
    with cas.Store.open(root) as store, pytest.raises(cas.IntegrityError) as mismatch:
        store.fetch(url, sha256="0" * 64)
    assert server.url("/private.bin") in str(mismatch.value)
    messages = [record.getMessage() for record in caplog.records]
    assert_no_secret(root, refused.stderr, missing.stderr, str(mismatch.value), *messages)


def test_bad_url_messages_hide_the_password(root: Path, tmp_path: Path) -> None:
    """A URL that is not http(s), given to `cas fetch` or in a manifest, is named without it."""
    bad = f"ftp://{USER}:{SECRET}@example.org/a.bin"
    fetched = run_cas("fetch", bad, root=root)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(f'[fixtures."a"]\nurl = "{bad}"\nsha256 = "{"0" * 64}"\n')
    synced = run_cas("sync", str(manifest), root=root)
    assert (fetched.returncode, synced.returncode) == (2, 2)
    assert b"ftp://example.org/a.bin" in fetched.stderr
    assert b"ftp://example.org/a.bin" in synced.stderr
    assert_no_secret(root, fetched.stderr, synced.stderr)


def test_manifest_credentials_download_and_stay_out_of_the_catalog(
    root: Path, tmp_path: Path, server: Server
) -> None:
    """`cas sync` of a manifest whose URL carries credentials downloads with them, records
    the name's source without them, and a second sync is served from the store."""
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(f'[fixtures."fx"]\nurl = "{_private(server)}"\nsha256 = "{_sha(BODY)}"\n')
    first = run_cas("-v", "sync", str(manifest), root=root)
    second = run_cas("-v", "sync", str(manifest), root=root)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert server.requests("/private.bin") == 1
    with cas.Store.open(root) as store:
        assert [e.source for e in store.entries()] == [server.url("/private.bin")]
    assert_no_secret(root, first.stderr, second.stderr)


def test_credentials_go_to_their_origin_only(root: Path, server: Server) -> None:
    """A redirect to another origin (another port) is followed without the Authorization
    header; the same origin keeps it, as curl and requests do."""
    with Server() as elsewhere:
        foreign = elsewhere.add("/moved.bin", BODY)
        server.add("/there", b"", Reply(status=302, headers={"Location": foreign}))
        server.add("/here", b"", Reply(status=302, headers={"Location": "/private.bin"}))
        server.add("/private.bin", BODY, auth=f"{USER}:{SECRET}")
        with cas.Store.open(root) as store:
            store.fetch(_with_credentials(server.url("/there")))
            assert "authorization" in server.seen("/there")[0].headers
            assert "authorization" not in elsewhere.seen("/moved.bin")[0].headers
            store.fetch(_with_credentials(server.url("/here")), sha256=_sha(BODY))
            assert server.seen("/private.bin")[0].status == 200
        assert_no_secret(root)


def test_refetch_from_the_recorded_source_goes_without_credentials(
    root: Path, server: Server
) -> None:
    """An evicted fixture fetched again from its recorded source has no password to send: a
    server that needs one refuses (401), and the error says how to bring it back; the same
    fetch with the credentials does."""
    url = _private(server)
    with cas.Store.open(root, grace_period=0) as store:
        store.fetch(url, name="fx", sha256=_sha(BODY))
        store.gc(max_size=0)
        with pytest.raises(cas.DownloadError, match="401") as refused:
            store.path("fx")
        assert "authorization" not in server.seen("/private.bin")[-1].headers
        assert store.fetch(url, name="fx", sha256=_sha(BODY)) == blake3.blake3(BODY).hexdigest()
        assert store.read_bytes("fx") == BODY
    assert_no_secret(root, str(refused.value))


def test_remote_tier_gets_no_credentials(
    root: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fetch with credentials pushes to the remote tier (blob, name record, alias)
    holds no password."""
    remote = pytest.importorskip("tests.ops.test_remote", reason="the remote tier needs moto")
    moto_server = pytest.importorskip("moto.server")
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        remote._aws_env(monkeypatch, tmp_path, f"http://{host}:{port}")
        import boto3

        boto3.client("s3").create_bucket(Bucket="secrets")
        with cas.Store.open(root, remote="s3://secrets/team") as store:
            store.fetch(_private(server), name="fx", sha256=_sha(BODY))
        stored = remote.objects("secrets")
    finally:
        moto.stop()
    names = [key for key in stored if "/names/" in key]
    assert names, sorted(stored)
    assert json.loads(stored[names[0]])["url"] == server.url("/private.bin")
    assert_no_secret(root, *(data for key, data in stored.items() if "/blobs/" not in key))


def test_credentials_left_by_an_older_cas_are_not_shown(root: Path, server: Server) -> None:
    """A name whose source an older cas recorded with its password is listed (`ls`, `ls
    --json`) and re-fetched from without it."""
    url = server.add("/legacy.bin", BODY)
    with cas.Store.open(root, grace_period=0) as store:
        store.fetch(url, name="old", sha256=_sha(BODY))
        store.gc(max_size=0)
    with sqlite3.connect(Layout(root).catalog) as db:  # as the catalog of an older cas held it
        db.execute("UPDATE names SET url = ? WHERE name = 'old'", (_with_credentials(url),))
    db.close()
    listed, as_json = run_cas("ls", root=root), run_cas("ls", "--json", root=root)
    assert json.loads(as_json.stdout)[0]["source"] == url
    read = run_cas("-vv", "cat", "old", root=root)
    assert read.returncode == 0 and read.stdout == BODY, read.stderr
    assert SECRET.encode() not in listed.stdout + as_json.stdout + read.stderr
    assert "authorization" not in server.seen("/legacy.bin")[-1].headers


# -- the one function that takes credentials out of a URL -----------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@given(user=_TEXT, password=_TEXT, path=st.sampled_from(["", "/", "/a/b.bin?x=1#f"]))
def test_split_credentials_round_trips_any_userinfo(user: str, password: str, path: str) -> None:
    """Any percent-encoded user and password come back decoded, and the URL without them
    has neither."""
    url = f"https://{quote(user, safe='')}:{quote(password, safe='')}@example.org:8443{path}"
    public, credentials = split_credentials(url)
    assert public == f"https://example.org:8443{path}"
    assert credentials == f"{user}:{password}"
    assert redact(url) == public and redact(public) == public


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("http://token@host/x", "http://host/x"),  # a token as the user is a secret too
        ("http://u:p@ss@host/x", "http://host/x"),  # the authority's last @ ends the userinfo
        ("http://u:pw@[::1/x", "http://[::1/x"),  # not parsable: still no userinfo
        ("http://host/a@b", "http://host/a@b"),  # an @ in the path is not userinfo
    ],
)
def test_redact_edge_cases(url: str, public: str) -> None:
    """Userinfo goes however it is written; an @ outside the authority stays."""
    assert redact(url) == public


# -- extra request headers -------------------------------------------------------------------------

TOKEN_VARIABLE = "CAS_TEST_TOKEN"
BEARER = {"Authorization": f"Bearer {SECRET}"}


def _guarded(server: Server, path: str = "/guarded.bin", body: bytes = BODY) -> str:
    """The URL of ``body`` served only to a request carrying ``Authorization: Bearer SECRET``
    (401 without it)."""
    return server.add(path, body, require=BEARER)


def _catalog_dump(root: Path) -> str:
    """Every row of every table of the catalog, as SQL text."""
    with sqlite3.connect(Layout(root).catalog) as db:
        dumped = "\n".join(db.iterdump())
    db.close()
    return dumped


def test_headers_authenticate_and_are_never_recorded_or_shown(
    root: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that requires a bearer token gets it from a fetch's headers (API, `${VAR}`),
    `cas fetch --header` (literal and `${VAR}`) and a manifest entry (`${VAR}`); without it
    the server refuses (401). Neither the catalog (every table, its WAL), the debug log, the
    output of any command, `ls --json`, `config` nor `stats` holds the token."""
    caplog.set_level(logging.DEBUG, logger="cas")
    monkeypatch.setenv(TOKEN_VARIABLE, SECRET)
    template = {"Authorization": "Bearer ${" + TOKEN_VARIABLE + "}"}
    refused = run_cas("fetch", _guarded(server, "/refused.bin"), root=root)
    assert refused.returncode == 1 and b"401" in refused.stderr
    with cas.Store.open(root) as store:
        assert store.fetch(_guarded(server, "/api.bin"), name="api",
                           headers=template) == blake3.blake3(BODY).hexdigest()  # fmt: skip
        api_error = ""
        try:
            store.fetch(_guarded(server, "/api-wrong.bin"), headers={"Authorization": "Bearer x"})
        except cas.DownloadError as error:
            api_error = str(error)
        assert "401" in api_error
    literal = run_cas("-vv", "fetch", _guarded(server, "/literal.bin"), "--name", "literal",
                      "--header", f"Authorization: Bearer {SECRET}", "--header", "X-Team: ci",
                      root=root)  # fmt: skip
    token = run_cas("-vv", "fetch", _guarded(server, "/token.bin"), "--name", "token",
                    "--header", "Authorization: Bearer ${" + TOKEN_VARIABLE + "}", root=root)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(
        f'[fixtures."entry"]\nurl = "{_guarded(server, "/entry.bin")}"\n'
        f'headers = {{Authorization = "Bearer ${{{TOKEN_VARIABLE}}}"}}\n'
    )
    synced = run_cas("-vv", "sync", str(manifest), root=root)
    outputs = [literal, token, synced]
    assert [result.returncode for result in outputs] == [0, 0, 0], [r.stderr for r in outputs]
    assert server.seen("/literal.bin")[-1].headers["x-team"] == "ci"
    for path in ("/api.bin", "/literal.bin", "/token.bin", "/entry.bin"):
        assert [s.status for s in server.seen(path)] == [200], path
    shown = [run_cas(*words, root=root) for words in (
        ["ls"], ["ls", "--json"], ["config"], ["config", "--json"], ["stats", "--json"],
        ["-vv", "sync", str(manifest)], ["-vv", "fetch", server.url("/token.bin"), "--refresh",
                                         "--header", f"Authorization: Bearer {SECRET}"])]
    assert [result.returncode for result in shown] == [0] * len(shown)
    assert {e["name"] for e in json.loads(shown[1].stdout)} == {"api", "literal", "token", "entry"}
    messages = [record.getMessage() for record in caplog.records]
    assert_no_secret(root, _catalog_dump(root), api_error, refused.stderr, *messages,
                     *(r.stdout + r.stderr for r in outputs + shown))


def test_headers_setting_is_used_and_never_shown(
    root: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The `headers` setting, from a config file (literal) or CAS_HEADERS (JSON or lines),
    authenticates; `cas config` names the header without its value, as does the Settings
    repr; a fetch's own Authorization header wins over the setting's."""
    config = tmp_path / "team.toml"  # outside the root: a user's file may hold the token
    config.write_text(f'[headers]\nAuthorization = "Bearer {SECRET}"\nX-Team = "ci"\n')
    url = _guarded(server)
    fetched = run_cas("--config", str(config), "fetch", url, "--name", "a", root=root)
    assert fetched.returncode == 0, fetched.stderr
    assert server.seen("/guarded.bin")[-1].headers["x-team"] == "ci"
    listed = run_cas("--config", str(config), "config", root=root)
    as_json = run_cas("--config", str(config), "config", "--json", root=root)
    assert b"Authorization, X-Team (values hidden)" in listed.stdout
    assert json.loads(as_json.stdout)["settings"]["headers"]["value"] == [
        "Authorization", "X-Team"]
    overridden = run_cas("--config", str(config), "fetch", _guarded(server, "/other.bin"),
                         "--header", "Authorization: Bearer wrong", root=root)
    assert overridden.returncode == 1 and b"401" in overridden.stderr
    outputs = [fetched, listed, as_json, overridden]
    for form in (json.dumps(BEARER), f"Authorization: Bearer {SECRET}\n"):
        monkeypatch.setenv("CAS_HEADERS", form)
        with cas.Store.open(root) as store:
            assert store.fetch(_guarded(server, "/env.bin"), refresh=True)
            assert SECRET not in repr(store.settings)
        outputs.append(run_cas("config", "--json", root=root))
    assert_no_secret(root, _catalog_dump(root), *(r.stdout + r.stderr for r in outputs))


@pytest.mark.parametrize(
    "given",
    [f"Authorization Bearer {SECRET}",  # no colon
     f"Authorization Bearer {SECRET}: x",  # no header name
     '{"Authorization": ["Bearer", "' + SECRET + '"]}'],  # not a string
)  # fmt: skip
def test_a_bad_header_setting_is_one_line_without_its_value(root: Path, given: str) -> None:
    """A malformed header (in CAS_HEADERS, or --header) is a one-line error that does not
    repeat the line it could not read: it may be a token with a typo."""
    for result in (run_cas("config", root=root, env={"CAS_HEADERS": given}),
                   run_cas("fetch", "http://127.0.0.1:9/a", "--header", given, root=root)):
        assert result.returncode == 2
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and "header" in lines[0], lines
        assert SECRET not in lines[0]


def test_an_unset_variable_is_one_line_naming_it(root: Path, server: Server,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A header naming an unset variable fails before any request, in one line naming the
    variable; a variable holding a line break (a header injection) fails naming it, not its
    value."""
    url = _guarded(server)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    header = "Authorization: Bearer ${" + TOKEN_VARIABLE + "}"
    with cas.Store.open(root) as store, pytest.raises(cas.UsageError) as unset:
        store.fetch(url, headers=[header])
    assert f"environment variable {TOKEN_VARIABLE} is not set" in str(unset.value)
    result = run_cas("fetch", url, "--header", header, root=root)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [f"cas: error: {unset.value}"]
    monkeypatch.setenv(TOKEN_VARIABLE, f"{SECRET}\r\nX-Injected: 1")
    injected = run_cas("fetch", url, "--header", header, root=root)
    assert injected.returncode == 2 and b"line break" in injected.stderr
    assert TOKEN_VARIABLE.encode() in injected.stderr
    assert server.requests("/guarded.bin") == 0
    assert_no_secret(root, injected.stderr)


def test_extra_headers_go_to_their_origin_only(root: Path, server: Server) -> None:
    """A redirect to another origin is followed without any extra header (nor Authorization);
    a redirect within the origin keeps them."""
    with Server() as elsewhere:
        foreign = elsewhere.add("/moved.bin", BODY)
        server.add("/there", b"", Reply(status=302, headers={"Location": foreign}))
        server.add("/here", b"", Reply(status=302, headers={"Location": "/guarded.bin"}))
        _guarded(server)
        with cas.Store.open(root) as store:
            store.fetch(server.url("/there"), headers={**BEARER, "X-Token": SECRET})
            assert server.seen("/there")[0].headers["x-token"] == SECRET
            moved = elsewhere.seen("/moved.bin")[0].headers
            assert "x-token" not in moved and "authorization" not in moved
            store.fetch(server.url("/here"), headers=BEARER)
        assert [s.status for s in server.seen("/guarded.bin")] == [200]
        result = run_cas("fetch", server.url("/there"), "--header", f"X-Token: {SECRET}",
                         "--refresh", root=root)
        assert result.returncode == 0, result.stderr
        assert all("x-token" not in s.headers for s in elsewhere.seen("/moved.bin"))
    assert_no_secret(root, _catalog_dump(root))


def test_remote_tier_gets_no_headers(
    root: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fetch with a bearer token pushes to the remote tier holds no token."""
    remote = pytest.importorskip("tests.ops.test_remote", reason="the remote tier needs moto")
    moto_server = pytest.importorskip("moto.server")
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        remote._aws_env(monkeypatch, tmp_path, f"http://{host}:{port}")
        import boto3

        boto3.client("s3").create_bucket(Bucket="secrets")
        with cas.Store.open(root, remote="s3://secrets/team", headers=BEARER) as store:
            store.fetch(_guarded(server), name="fx", sha256=_sha(BODY))
            store.fetch(_guarded(server, "/other.bin", b"other"), name="other",
                        headers={"X-Token": SECRET})
            store.push()
        stored = remote.objects("secrets")
    finally:
        moto.stop()
    assert any("/names/" in key for key in stored), sorted(stored)
    assert_no_secret(root, *(data for key, data in stored.items() if "/blobs/" not in key))


def test_https_redirect_to_plain_http_is_refused_in_one_line(
    root: Path, server: Server, tmp_path: Path
) -> None:
    """`cas fetch` of an https URL that redirects to plain http fails in one line, and the
    http server is never asked (its content would come unprotected, its token in clear)."""
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    plain = server.add("/a.bin", BODY)
    with Server(context) as tls:
        url = tls.add("/old", b"", Reply(status=302, headers={"Location": plain}))
        result = run_cas("fetch", url, "--header", f"X-Token: {SECRET}", root=root,
                         env={"SSL_CERT_FILE": str(bundle)})
        assert tls.requests("/old") == 1
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "from https to plain http" in lines[0], lines
    assert server.requests("/a.bin") == 0
    assert_no_secret(root, result.stderr)


def test_fixture_session_sends_a_manifest_entrys_headers(
    root: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`FixtureSession` (what the pytest plugin uses) fetches a declared fixture with its
    entry's headers, `${VAR}` read from the environment, and records none of them."""
    monkeypatch.setenv(TOKEN_VARIABLE, SECRET)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(
        f'[fixtures."entry"]\nurl = "{_guarded(server)}"\nsha256 = "{_sha(BODY)}"\n'
        f'headers = {{Authorization = "Bearer ${{{TOKEN_VARIABLE}}}"}}\n'
    )
    with cas.FixtureSession.open(manifest, root=root) as fixtures:
        assert fixtures.path("entry").read_bytes() == BODY
    assert [s.status for s in server.seen("/guarded.bin")] == [200]
    literal = tmp_path / "literal.toml"
    literal.write_text(f'[fixtures."x"]\nurl = "{server.url("/x")}"\n'
                       f'headers = {{Authorization = "Bearer {SECRET}"}}\n')
    from cas.ops import manifest as manifests

    assert_no_secret(root, _catalog_dump(root), repr(manifests.load(literal)))


def test_an_evicted_fixture_comes_back_with_the_headers_setting_only(
    root: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers are never recorded: an evicted fixture read again by name is fetched with the
    `headers` setting (its `${VAR}` read then), and without it the server refuses. A fetch
    served from the store makes no request, so its unset `${VAR}` is no error."""
    url = _guarded(server)
    monkeypatch.setenv(TOKEN_VARIABLE, SECRET)
    setting = {"Authorization": "Bearer ${" + TOKEN_VARIABLE + "}"}
    with cas.Store.open(root, grace_period=0) as store:
        store.fetch(url, name="fx", headers=setting)
        store.gc(max_size=0)
        with pytest.raises(cas.DownloadError, match="401"):
            store.path("fx")
    with cas.Store.open(root, grace_period=0, headers=setting) as store:
        assert store.read_bytes("fx") == BODY
        monkeypatch.delenv(TOKEN_VARIABLE)
        assert store.fetch(url, headers=setting) == blake3.blake3(BODY).hexdigest()
        with pytest.raises(cas.UsageError, match=TOKEN_VARIABLE):
            store.fetch(url, headers=setting, refresh=True)
    assert [s.status for s in server.seen("/guarded.bin")] == [200, 401, 200]
    assert_no_secret(root, _catalog_dump(root))
