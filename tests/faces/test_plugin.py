"""The pytest plugin, run in real pytest sessions (pytester), against a real HTTP server."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas
from cas.storage.layout import Layout

from tests.conftest import run_cas_process
from tests.httpserver import Server, serve

pytest_plugins = ["pytester"]

BODY = os.urandom(3 << 20)


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


def _manifest(pytester: pytest.Pytester, server: Server, **options: object) -> Path:
    url = server.add("/data.bin", BODY, **options)
    sha256 = hashlib.sha256(BODY).hexdigest()
    return pytester.makefile(
        ".toml", fixtures=f'[fixtures."data/big"]\nurl = "{url}"\nsha256 = "{sha256}"\n'
    )


def _ini(pytester: pytest.Pytester, root: Path, *extra: str) -> None:
    pytester.makeini("\n".join(
        ["[pytest]", f"cas_root = {root}", "cas_manifest = fixtures.toml", *extra]
    ))


TESTS = """
import hashlib, pytest

@pytest.mark.parametrize("i", range({count}))
def test_uses_fixture(cas_fixture, i):
    path = cas_fixture("data/big")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == "{sha256}"
    assert cas_fixture("data/big") == path
"""


def _tests(pytester: pytest.Pytester, count: int) -> None:
    pytester.makepyfile(TESTS.format(count=count, sha256=hashlib.sha256(BODY).hexdigest()))


def test_fixture_from_manifest(pytester: pytest.Pytester, server: Server, tmp_path: Path) -> None:
    """cas_fixture returns the manifest fixture's path; one download serves every test."""
    root = tmp_path / "store"
    _manifest(pytester, server)
    _ini(pytester, root)
    _tests(pytester, 3)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=3)
    assert server.requests("/data.bin") == 1
    with sqlite3.connect(Layout(root).catalog) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_xdist_workers_share_one_download(pytester: pytest.Pytester, server: Server,
                                          tmp_path: Path) -> None:
    """4 xdist workers asking for one fixture cause one transfer; leases end with the run."""
    root = tmp_path / "store"
    _manifest(pytester, server, delay=0.01, chunk=256 << 10)  # slow enough to overlap
    _ini(pytester, root)
    _tests(pytester, 8)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "4")
    result.assert_outcomes(passed=8)
    assert server.sent("/data.bin") == len(BODY)
    with sqlite3.connect(Layout(root).catalog) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_offline_skips_when_asked(pytester: pytest.Pytester, server: Server, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With auto_download off and the fixture not stored, tests skip (ini) instead of failing."""
    monkeypatch.setenv("CAS_AUTO_DOWNLOAD", "false")
    root = tmp_path / "store"
    _manifest(pytester, server)
    _ini(pytester, root, "cas_skip_unavailable = true")
    _tests(pytester, 2)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*auto_download is off*"])
    assert server.requests("/data.bin") == 0


@pytest.mark.parametrize(("variable", "says"), [
    ("CAS_AUTO_DOWNLOAD=false", "*FixtureUnavailable*data/big*"),
    ("CAS_OFFLINE=1", "*FixtureUnavailable*data/big*cas is offline*"),
], ids=["auto-download-off", "offline"])
def test_unavailable_fixture_fails_without_the_option(
    pytester: pytest.Pytester, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    variable: str, says: str,
) -> None:
    """Without the skip option, an unavailable fixture (auto_download off, or cas offline) is an
    error naming it; the marker skips it; the origin sees no request."""
    monkeypatch.setenv(*variable.split("="))
    _manifest(pytester, server)
    _ini(pytester, tmp_path / "store")
    pytester.makepyfile("""
import pytest

def test_fails(cas_fixture):
    cas_fixture("data/big")

@pytest.mark.cas_skip_unavailable
def test_marked(cas_fixture):
    cas_fixture("data/big")
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines([says])
    assert server.requests("/data.bin") == 0


def test_offline_serves_what_is_cached(pytester: pytest.Pytester, server: Server,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With auto_download off, a fixture synced beforehand is served without the network."""
    root = tmp_path / "store"
    manifest = _manifest(pytester, server)
    with cas.Store.open(root) as store:
        store.sync(manifest)
    monkeypatch.setenv("CAS_AUTO_DOWNLOAD", "false")
    _ini(pytester, root)
    _tests(pytester, 2)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=2)
    assert server.requests("/data.bin") == 1


def test_explicit_url_and_command_line_options(pytester: pytest.Pytester, server: Server,
                                               tmp_path: Path) -> None:
    """cas_fixture(name, url=, sha256=) works without a manifest; --cas-root picks the store."""
    url = server.add("/other.bin", b"other content")
    sha256 = hashlib.sha256(b"other content").hexdigest()
    pytester.makepyfile(f"""
def test_explicit(cas_fixture, cas_store):
    path = cas_fixture("other", url="{url}", sha256="{sha256}")
    assert path.read_bytes() == b"other content"
    assert cas_store.read_bytes("other") == b"other content"
""")
    root = tmp_path / "cli-store"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0",
                                           f"--cas-root={root}")
    result.assert_outcomes(passed=1)
    assert Layout(root).catalog.exists()


def test_inert_until_used(pytester: pytest.Pytester, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that asks for no cas fixture opens no store."""
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "untouched"))
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=1)
    assert not (tmp_path / "untouched").exists()


def test_killed_worker_leases_are_reclaimed(pytester: pytest.Pytester, server: Server,
                                            tmp_path: Path) -> None:
    """A worker SIGKILLed while holding a fixture leaves a lease the next gc reclaims."""
    root = tmp_path / "store"
    _manifest(pytester, server)
    _ini(pytester, root)
    pytester.makepyfile("""
import os, signal

def test_dies(cas_fixture):
    cas_fixture("data/big")
    os.kill(os.getpid(), signal.SIGKILL)
""")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1", "--max-worker-restart=0")
    with sqlite3.connect(Layout(root).catalog) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 1
    with cas.Store.open(root, grace_period=0) as store:
        plan = store.gc(max_size=0)
    assert [item.names for item in plan.victims] == [("data/big",)]


# -- the hint works, every expected value is checked, a URL manifest is refused --------------------


def _hint(output: str) -> list[str]:
    """The command of an unavailable fixture's hint (`run `CMD` beforehand`), as argv."""
    import re
    import shlex
    import sys

    found = re.search(r"run `([^`]+)` beforehand", output)
    assert found is not None, output
    words = shlex.split(found[1])
    assert words[0] == "cas"
    return [sys.executable, "-m", "cas", *words[1:]]


def test_following_the_offline_hint_makes_the_fixture_available(
    pytester: pytest.Pytester, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With auto_download off, the command an unavailable fixture's skip message names, run in
    a shell as it says, makes the next session pass without the network."""
    import subprocess

    monkeypatch.setenv("CAS_AUTO_DOWNLOAD", "false")
    root = tmp_path / "store"
    _manifest(pytester, server)
    _ini(pytester, root, "cas_skip_unavailable = true")
    _tests(pytester, 2)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "-rs")
    first.assert_outcomes(skipped=2)
    hint = subprocess.run(_hint(first.stdout.str()), capture_output=True, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    assert hint.returncode == 0, hint.stderr
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    again.assert_outcomes(passed=2)
    assert server.requests("/data.bin") == 1


def test_the_old_hint_cas_fetch_url_satisfies_a_sha256_entry(
    pytester: pytest.Pytester, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cas fetch URL` (no name, no digest) beforehand stores content that matches the entry:
    with auto_download off, the plugin hashes it and serves it."""
    from tests.conftest import run_cas

    root = tmp_path / "store"
    _manifest(pytester, server)
    fetched = run_cas("fetch", server.url("/data.bin"), root=root)
    assert fetched.returncode == 0, fetched.stderr
    monkeypatch.setenv("CAS_AUTO_DOWNLOAD", "false")
    _ini(pytester, root)
    _tests(pytester, 2)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=2)
    assert server.requests("/data.bin") == 1


def test_offline_plugin_never_serves_other_content_under_the_name(
    pytester: pytest.Pytester, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With auto_download off, a sha256-only manifest entry whose name holds other content is
    unavailable, not served with the wrong bytes."""
    root = tmp_path / "store"
    _manifest(pytester, server)
    with cas.Store.open(root) as store:
        store.put(b"not the fixture", name="data/big")
    monkeypatch.setenv("CAS_AUTO_DOWNLOAD", "false")
    _ini(pytester, root)
    _tests(pytester, 1)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FixtureUnavailable*data/big*auto_download is off*"])
    assert server.requests("/data.bin") == 0


@pytest.mark.parametrize("where", ["ini", "option"])
def test_a_manifest_url_is_one_usage_error(pytester: pytest.Pytester, tmp_path: Path,
                                           where: str) -> None:
    """A URL as cas_manifest (ini or --cas-manifest) stops the session at its start with one
    usage error that names it (without credentials), instead of a traceback per test."""
    url = "https://user:hunter2@example.org/fixtures.toml"
    lines = ["[pytest]", f"cas_root = {tmp_path / 'store'}"]
    lines += [f"cas_manifest = {url}"] if where == "ini" else []
    pytester.makeini("\n".join(lines))
    _tests(pytester, 3)
    extra = [f"--cas-manifest={url}"] if where == "option" else []
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", *extra)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert output.count("is a URL (https://example.org/fixtures.toml)") == 1, output
    assert "hunter2" not in output and "Traceback" not in output


def test_offline_plugin_serves_stored_fixtures(pytester: pytest.Pytester, server: Server,
                                               tmp_path: Path) -> None:
    """With ``offline = true`` in the store's config.toml, synced fixtures are served."""
    root = tmp_path / "store"
    manifest = _manifest(pytester, server)
    # In a child process: pytester drops the modules a test imported, so a store opened here
    # after another pytester test may meet two copies of a cas module.
    synced = run_cas_process("sync", str(manifest), root=root)
    assert synced.returncode == 0, synced.stderr
    (root / "config.toml").write_text("offline = true\n")
    _ini(pytester, root)
    _tests(pytester, 2)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=2)
    assert server.requests("/data.bin") == 1


def test_a_stored_tree_and_a_named_file_come_as_folder_and_real_name(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    """cas_fixture of a tree's name is its read-only folder; of a file's name, a path ending in
    the name's last component."""
    import cas

    root = tmp_path / "store"
    folder = tmp_path / "images"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "1.png").write_bytes(b"png")
    with cas.Store.open(root) as store:
        store.put(folder, name="sets/images")
        store.put(b"GGUF", name="models/tiny.gguf")
    pytester.makeini(f"[pytest]\ncas_root = {root}\n")
    pytester.makepyfile("""
def test_tree(cas_fixture):
    folder = cas_fixture("sets/images")
    assert folder.is_dir() and folder.name == "images"
    assert (folder / "train" / "1.png").read_bytes() == b"png"

def test_file(cas_fixture):
    path = cas_fixture("models/tiny.gguf")
    assert path.name == "tiny.gguf" and path.read_bytes() == b"GGUF"
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=2)


FILE_AND_TREE = """
import hashlib
import pytest

@pytest.mark.parametrize("i", range(8))
def test_named_file_and_tree(cas_fixture, i):
    model = cas_fixture("models/tiny.gguf")
    assert model.name == "tiny.gguf"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == {sha256!r}
    tree = cas_fixture("data/images")
    assert tree.is_dir()
    found = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    assert found == {paths!r}
    assert (tree / "a/one.txt").read_bytes() == b"one\\n" * 1000
"""


def test_xdist_named_file_and_tree_from_a_manifest(pytester: pytest.Pytester, server: Server,
                                                   tmp_path: Path) -> None:
    """Under `pytest -n 4`, a manifest's named file comes back with its real file name and an
    archive entry as a folder with its relative paths; each is transferred once."""
    import io
    import tarfile

    files = {"a/one.txt": b"one\n" * 1000, "b/two.bin": os.urandom(200_000), "top.md": b"# t\n"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    model = os.urandom(1 << 20)
    model_url = server.add("/tiny.gguf", model, delay=0.01, chunk=128 << 10)
    tree_url = server.add("/images.tar.gz", buffer.getvalue(), delay=0.01, chunk=32 << 10)
    pytester.makefile(".toml", fixtures=(
        f'[fixtures."models/tiny.gguf"]\nurl = "{model_url}"\n'
        f'sha256 = "{hashlib.sha256(model).hexdigest()}"\n'
        f'[fixtures."data/images"]\nurl = "{tree_url}"\nunpack = "tar.gz"\n'
        f'sha256 = "{hashlib.sha256(buffer.getvalue()).hexdigest()}"\n'
    ))
    root = tmp_path / "store"
    _ini(pytester, root)
    pytester.makepyfile(FILE_AND_TREE.format(sha256=hashlib.sha256(model).hexdigest(),
                                            paths=sorted(files)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "4")
    result.assert_outcomes(passed=8)
    assert server.requests("/tiny.gguf") == 1 and server.sent("/tiny.gguf") == len(model)
    assert server.requests("/images.tar.gz") == 1
    with sqlite3.connect(Layout(root).catalog) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
