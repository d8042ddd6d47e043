"""Fetch with unpack against a real HTTP server, through the API, the command line and
manifests: each kind unpacks to the files it holds, the archive is verified first, an unpacking
is done once and remembered (also once the archive is evicted), an evicted or damaged unpacked
fixture comes back from its archive, and many processes unpack one archive once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.storage.layout import PUT_PREFIX, Layout

from tests.archives import Files, compress, member, tar, tar_members, zip_of
from tests.conftest import run_cas
from tests.httpserver import Server, serve
from tests.transfer.test_http import _b3, fast

TEXT = b"line of a fixture file\n" * 2000
FILES: Files = {
    "README.md": (b"# data\n", False),
    "bin/run.sh": (b"#!/bin/sh\necho hi\n", True),
    "data/a/values.csv": (TEXT, False),
    "data/empty.txt": (b"", False),
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fstore(root: Path, clock: Clock) -> Iterator[cas.Store]:
    with cas.Store.open(root, downloader=fast(root), clock=clock) as store:
        yield store


def files_under(folder: Path) -> Files:
    """Every file under ``folder``: its bytes and whether it is executable."""
    found: Files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[path.relative_to(folder).as_posix()] = (
                path.read_bytes(), bool(path.stat().st_mode & 0o111))
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- each kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst"])
def test_a_bare_compressed_file_unpacks_to_one_file(kind: str, fstore: cas.Store,
                                                    server: Server) -> None:
    """A bare gz, bz2, xz or zst gives one blob with the decompressed bytes; the name's view
    keeps the name's last component; the archive is stored too, and both are verified."""
    archive = compress(TEXT, kind)
    url = server.add(f"/single/values.csv.{kind}", archive)
    digest = fstore.fetch(url, name="tables/values.csv", sha256=_sha(archive),
                          size=len(archive), unpack=kind)
    assert digest == _b3(TEXT)
    assert fstore.read_bytes("tables/values.csv") == TEXT
    assert fstore.path("tables/values.csv").name == "values.csv"
    assert fstore.read_bytes(_b3(archive)) == archive
    assert fstore.fetch(url, unpack="auto") == digest  # auto: by the suffix


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip"])
def test_an_archive_unpacks_to_a_tree(kind: str, fstore: cas.Store, server: Server) -> None:
    """zip and every tar unpack to a tree with the same relative paths, bytes and executable
    bits; auto tells the kind by magic bytes even without a suffix."""
    archive = zip_of(FILES) if kind == "zip" else tar(FILES, kind)
    url = server.add(f"/tree/data.{kind}", archive)
    digest = fstore.fetch(url, name="data", blake3=_b3(archive), unpack=kind)
    assert files_under(fstore.path("data")) == FILES
    bare = server.add(f"/tree/{kind}/download", archive)
    assert fstore.fetch(bare, unpack="auto") == digest


def test_cli_fetch_unpack_prints_the_unpacked_digest(root: Path, server: Server) -> None:
    """`cas fetch --unpack` prints the tree's digest, and `cas path` of the name is its folder."""
    archive = tar(FILES, "tar.gz")
    url = server.add("/cli/data.tar.gz", archive)
    done = run_cas("fetch", url, "--unpack", "auto", "--name", "data", "--sha256", _sha(archive),
                   root=root)
    assert done.returncode == 0, done.stderr
    shown = run_cas("path", "data", root=root).stdout.decode().strip()
    assert files_under(Path(shown)) == FILES
    again = run_cas("fetch", url, "--unpack", "tar.gz", root=root)
    assert again.stdout == done.stdout
    gz = server.add("/cli/one.txt.gz", compress(TEXT, "gz"))
    one = run_cas("fetch", gz, "--unpack", "gz", "--name", "one.txt", root=root)
    assert one.stdout.decode().strip() == _b3(TEXT)
    assert run_cas("cat", "one.txt", root=root).stdout == TEXT


def test_a_manifest_entry_unpacks(root: Path, tmp_path: Path, server: Server) -> None:
    """`unpack` in a manifest entry: sync stores the unpacked tree under the fixture's name."""
    archive = zip_of(FILES)
    url = server.add("/manifest/data.zip", archive)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(f'[fixtures."sets/data"]\nurl = "{url}"\nsha256 = "{_sha(archive)}"\n'
                        'unpack = "zip"\n')
    done = run_cas("sync", str(manifest), root=root)
    assert done.returncode == 0, done.stderr
    with cas.Store.open(root) as store:
        assert files_under(store.path("sets/data")) == FILES
        assert store.sync(manifest) == {"sets/data": done.stdout.decode().split()[0]}
    assert server.requests("/manifest/data.zip") == 1


# -- checks before and around unpacking ---------------------------------------------------------


def test_the_archive_is_verified_before_it_is_unpacked(fstore: cas.Store, server: Server) -> None:
    """A wrong expected digest of the archive is an IntegrityError, and nothing is unpacked."""
    url = server.add("/verified/data.tar.gz", tar(FILES))
    with pytest.raises(cas.IntegrityError):
        fstore.fetch(url, sha256="0" * 64, unpack="tar.gz", name="data")
    assert [entry.name for entry in fstore.entries()] == []


@pytest.mark.parametrize("unpack", ["rar", "", "TAR.GZ2", 3])
def test_an_unknown_kind_is_a_usage_error(unpack: object, fstore: cas.Store, root: Path,
                                          server: Server) -> None:
    """An unpack kind cas does not know is a one-line UsageError (exit 2) listing the kinds,
    before any request."""
    url = server.add("/kinds/a.bin", b"a")
    with pytest.raises(cas.UsageError, match=r"tar\.zst"):
        fstore.fetch(url, unpack=unpack)  # type: ignore[arg-type]
    if isinstance(unpack, str):
        done = run_cas("fetch", url, "--unpack", unpack, root=root)
        assert done.returncode == 2 and b"tar.zst" in done.stderr
    assert server.requests("/kinds/a.bin") == 0


def test_a_manifest_with_an_unknown_kind_is_refused(fstore: cas.Store, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.toml"
    manifest.write_text('[fixtures.x]\nurl = "http://127.0.0.1:9/x"\nsha256 = "' + "0" * 64
                        + '"\nunpack = "rar"\n')
    with pytest.raises(cas.UsageError, match="fixture 'x': key 'unpack'"):
        fstore.sync(manifest)


def test_zst_without_zstandard_names_the_extra(fstore: cas.Store, server: Server,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the zstandard package, a zst unpack is one line naming the archives extra."""
    url = server.add("/nozstd/a.zst", compress(TEXT, "zst"))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(cas.UsageError, match=r"cas-fixtures\[archives\]"):
        fstore.fetch(url, unpack="zst")


def test_links_inside_the_archive_become_copies(fstore: cas.Store, server: Server) -> None:
    """A hard link, and a symbolic link (also through another link) to a file of the same
    archive, are stored as copies of that file: a tree holds no links."""
    import tarfile

    archive = tar_members(
        (member("real.txt"), b"real content"),
        member("sub/hard", tarfile.LNKTYPE, linkname="real.txt"),
        member("sub/soft", tarfile.SYMTYPE, linkname="../real.txt"),
        member("chain", tarfile.SYMTYPE, linkname="sub/soft"),
    )
    url = server.add("/links/links.tar.gz", archive)
    fstore.fetch(url, unpack="auto", name="links")
    folder = fstore.path("links")
    assert {path: data for path, (data, _) in files_under(folder).items()} == {
        "real.txt": b"real content", "sub/hard": b"real content", "sub/soft": b"real content",
        "chain": b"real content"}
    assert not [path for path in folder.rglob("*") if path.is_symlink()]


# -- once, and remembered ----------------------------------------------------------------------


def test_unpacking_is_remembered_after_the_archive_is_evicted(fstore: cas.Store, clock: Clock,
                                                              server: Server) -> None:
    """Once the archive blob is evicted, the same URL, or the archive's digests, with the same
    unpack are served from the store without a request; another kind needs the archive."""
    archive = tar(FILES, "tar.xz")
    url = server.add("/remembered/data.tar.xz", archive)
    digest = fstore.fetch(url, unpack="tar.xz", name="data", sha256=_sha(archive))
    fstore.remove(_b3(archive))
    assert fstore.fetch(url, unpack="tar.xz") == digest
    assert fstore.fetch(server.url("/nowhere"), blake3=_b3(archive), unpack="auto") == digest
    assert fstore.fetch(server.url("/nowhere"), sha256=_sha(archive), size=len(archive),
                        unpack="tar.xz", name="again") == digest
    with pytest.raises(cas.IntegrityError, match="expected size"):
        fstore.fetch(url, blake3=_b3(archive), size=1, unpack="tar.xz")
    assert server.requests("/remembered/data.tar.xz") == 1
    assert files_under(fstore.path("again")) == FILES
    assert fstore.fetch(url, unpack="xz") != digest  # a bare xz: the tar itself, one file
    assert server.requests("/remembered/data.tar.xz") == 2


def test_an_evicted_unpacked_fixture_comes_back(fstore: cas.Store, clock: Clock,
                                                server: Server) -> None:
    """With auto_download, path() of an unpacked fixture whose content and archive were
    evicted fetches the archive again and unpacks it to the same content."""
    archive = compress(TEXT, "bz2")
    url = server.add("/evicted/values.csv.bz2", archive)
    digest = fstore.fetch(url, unpack="bz2", name="values.csv")
    clock.now += 3600
    plan = fstore.gc(max_size=0)
    assert digest in {victim.digest for victim in plan.victims}
    assert fstore.path("values.csv").read_bytes() == TEXT
    assert server.requests("/evicted/values.csv.bz2") == 2
    entry = next(entry for entry in fstore.entries() if entry.name == "values.csv")
    assert entry.digest == digest and entry.source == url


def test_verify_repair_unpacks_a_damaged_fixture_again(fstore: cas.Store, server: Server) -> None:
    """A damaged unpacked blob is repaired by fetching and unpacking its archive again."""
    archive = compress(TEXT, "gz")
    url = server.add("/repair/values.csv.gz", archive)
    digest = fstore.fetch(url, unpack="gz", name="values.csv")
    fstore.remove(_b3(archive))
    blob = Layout(fstore.root).blob(digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"damaged" + TEXT[7:])
    report = fstore.verify(repair=True)
    assert not report.remaining, report.summary()
    assert fstore.read_bytes("values.csv") == TEXT


_WORKER = """
import sys, cas
with cas.Store.open(sys.argv[1]) as store:
    print(store.fetch(sys.argv[2], unpack="tar.gz", name="data"))
"""


@pytest.mark.slow
def test_many_processes_unpack_one_archive_once(root: Path, server: Server) -> None:
    """Six processes fetching the same archive with the same unpack at once: one download, one
    unpacking (logged once), one digest, no staging folder left."""
    files = {f"f{n:03}.bin": (os.urandom(20_000), False) for n in range(200)}
    url = server.add("/many/data.tar.gz", tar(files), chunk=16384, delay=0.002)
    cas.Store.open(root).close()
    command = [sys.executable, "-c", "import logging, runpy; logging.basicConfig(level=20,"
               " format='%(message)s'); exec(open(__import__('sys').argv.pop(1)).read())"]
    script = root.parent / "worker.py"
    script.write_text(_WORKER)
    workers = [subprocess.Popen([*command, str(script), str(root), url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(6)]  # fmt: skip
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert len({out for out, _ in outputs}) == 1
    logs = b"".join(err for _, err in outputs).decode()
    assert logs.count("unpacked http") == 1, logs
    assert server.requests("/many/data.tar.gz") == 1
    assert not list(Layout(root).tmp.glob(f"{PUT_PREFIX}*"))
    with cas.Store.open(root) as store:
        assert files_under(store.path("data")) == files


# -- round trip ----------------------------------------------------------------------------------

_names = st.text(alphabet="abcdefghij-_.0123456789", min_size=1, max_size=8).filter(
    lambda name: name not in (".", ".."))
_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=3).map("/".join),
    st.tuples(st.binary(max_size=2000), st.booleans()),
    min_size=1, max_size=8,
).filter(lambda files: not any(other.startswith(path + "/") for path in files
                               for other in files))


@given(files=_trees, kind=st.sampled_from(["tar.gz", "zip", "tar.zst", "tar"]))
def test_random_trees_round_trip(files: Files, kind: str, root: Path, server: Server) -> None:
    """Any small tree packed as tar.gz, zip, tar.zst or tar and fetched with unpack comes back
    as the same files, bytes and executable bits."""
    archive = zip_of(files) if kind == "zip" else tar(files, kind)
    url = server.add(f"/round/{_b3(archive)}.{kind}", archive)
    with cas.Store.open(root, downloader=fast(root)) as store:
        store.fetch(url, unpack="auto", name="tree")
        assert files_under(store.path("tree")) == files


def test_offline_unpacks_a_stored_archive_and_refuses_the_rest(root: Path,
                                                               server: Server) -> None:
    """Offline, an archive already stored is unpacked with no request; one not stored is a
    NotFound saying cas is offline, on the API and the command line."""
    archive = tar(FILES, "tar.bz2")
    url = server.add("/offline/data.tar.bz2", archive)
    missing = server.add("/offline/other.tar.gz", tar(FILES))
    with cas.Store.open(root, downloader=fast(root)) as store:
        store.fetch(url, sha256=_sha(archive))  # the archive alone, not unpacked
    with cas.Store.open(root, offline=True) as store:
        store.fetch(url, sha256=_sha(archive), unpack="auto", name="data")
        assert files_under(store.path("data")) == FILES
        with pytest.raises(cas.NotFound, match="offline"):
            store.fetch(missing, unpack="tar.gz")
    done = run_cas("--offline", "fetch", missing, "--unpack", "auto", root=root)
    assert done.returncode == 3 and b"offline" in done.stderr
    assert server.requests("/offline/data.tar.bz2") == 1
    assert server.requests("/offline/other.tar.gz") == 0


def test_the_archive_is_evicted_first(fstore: cas.Store, clock: Clock, server: Server) -> None:
    """Once unpacked, an unnamed archive is cleanup's first victim, before older content, and
    the unpacked fixture stays; a named archive keeps its place."""
    older = fstore.put(os.urandom(50_000), name="older")
    clock.now += 600
    archive = compress(os.urandom(40_000), "gz")
    url = server.add("/first/blob.gz", archive)
    digest = fstore.fetch(url, unpack="gz", name="unpacked")
    plan = fstore.gc(max_size=len(archive) + 100_000 + 1)
    assert [victim.digest for victim in plan.victims] == [_b3(archive)]
    assert fstore.path("older").exists() and fstore.path("unpacked").exists()
    assert fstore.path(digest).exists() and fstore.path(older).exists()
    named = server.add("/first/named.gz", compress(b"named", "gz"))
    fstore.fetch(named, name="the-archive")
    fstore.fetch(named, unpack="gz")
    assert fstore.path("the-archive").exists()
    entry = next(entry for entry in fstore.entries() if entry.name == "the-archive")
    assert entry.last_access is not None and entry.last_access > 0


def test_a_fixture_session_serves_an_unpacked_manifest_fixture(root: Path, tmp_path: Path,
                                                               server: Server) -> None:
    """FixtureSession (the pytest plugin's) fetches a manifest entry with unpack once and
    returns the tree's folder, leased; a second session reads it without a request."""
    from cas.harness import FixtureSession

    archive = tar(FILES, "tar.gz")
    url = server.add("/session/data.tar.gz", archive)
    manifest = tmp_path / "session.toml"
    manifest.write_text(f'[fixtures.data]\nurl = "{url}"\nsha256 = "{_sha(archive)}"\n'
                        'unpack = "tar.gz"\n')
    for _ in range(2):
        with FixtureSession.open(manifest, root=root) as session:
            assert files_under(session.path("data")) == FILES
    with FixtureSession.open(manifest, root=root, auto_download=False) as session:
        assert files_under(session.path("data")) == FILES
    assert server.requests("/session/data.tar.gz") == 1


def test_unpack_with_refresh_headers_and_md5(fstore: cas.Store, server: Server,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive's fetch takes every fetch option: an md5 expected of the archive, headers
    with ${VAR} (the server refuses without them), and refresh, which revalidates the archive's
    URL and unpacks a changed archive anew (the name follows it, through the CLI too)."""
    monkeypatch.setenv("ARCHIVE_TOKEN", "s3cret-token")
    first = tar(FILES, "tar.gz")
    url = server.add("/opts/data.tar.gz", first, etag='"v1"',
                     require={"Authorization": "Bearer s3cret-token"})
    auth = {"Authorization": "Bearer ${ARCHIVE_TOKEN}"}
    wrong = hashlib.md5(b"other").hexdigest()
    with pytest.raises(cas.IntegrityError, match="MD5"):
        fstore.fetch(url, name="data", md5=wrong, unpack="tar.gz", headers=auth)
    digest = fstore.fetch(url, name="data", md5=hashlib.md5(first).hexdigest(),
                          unpack="tar.gz", headers=auth)
    assert files_under(fstore.path("data")) == FILES
    changed = {**FILES, "README.md": (b"# data, second edition\n", False)}
    server.update("/opts/data.tar.gz", body=tar(changed, "tar.gz"), etag='"v2"')
    assert fstore.fetch(url, name="data", unpack="tar.gz", headers=auth) == digest  # stored
    newer = fstore.fetch(url, name="data", unpack="tar.gz", headers=auth, refresh=True)
    assert newer != digest and files_under(fstore.path("data")) == changed
    statuses = [seen.status for seen in server.seen("/opts/data.tar.gz")]
    assert statuses.count(200) == 3 and 401 not in statuses  # wrong md5, first, refresh
