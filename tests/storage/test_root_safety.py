"""Never outside the root, never through a planted link (SPEC guarantee 7).

Roots whose path holds URI syntax (`?`, `#`, `%41`) keep their catalog inside them; a symlink
planted as `catalog.db` (or beside it) is refused; and folders of the root swapped for symlinks
while a store stays open are never written through: cas works relative to descriptors opened
without following links and checked against the names before each write.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cas
from cas.storage.catalog import Catalog
from cas.storage.hashing import hasher
from cas.storage.layout import CATALOG, PUT_PREFIX, Layout, shard_of

from tests.conftest import run_cas
from tests.httpserver import Server, serve

#: Characters that mean something in a URI or to SQLAlchemy's URL parser, and some that do not.
_TRICKY = "?#%& =;:@+'\"[]{}()!$,*é中🙂"


@pytest.fixture
def http_server() -> Iterator[Server]:
    yield from serve()


def _files_under(folder: Path) -> list[str]:
    return sorted(os.path.relpath(path, folder) for path in folder.rglob("*"))


# -- item 7: the catalog path reaches SQLite exactly ----------------------------------------------


_NAME_PART = st.text(alphabet=st.sampled_from(_TRICKY + "ab1"), max_size=6)


@settings(max_examples=12)
@given(name=st.builds(lambda head, mark, tail: head + mark + tail, _NAME_PART,
                      st.sampled_from(["?", "#", "%41", "%", " ", "é"]), _NAME_PART))
def test_roots_with_uri_characters_keep_their_catalog_inside(name: str) -> None:
    """Whatever a root's name holds (`?`, `#`, `%41`, spaces, unicode), its catalog is created
    inside it, and two roots that differ only after such a character stay independent."""
    with tempfile.TemporaryDirectory() as folder:
        parent = Path(folder)
        first, second = parent / f"x{name}1", parent / f"x{name}2"
        with cas.Store.open(first) as store:
            store.put(b"first", name="only-in-first")
        with cas.Store.open(second) as store:
            store.put(b"second", name="only-in-second")
            assert {entry.name for entry in store.entries()} == {"only-in-second"}
            store.verify()  # must not touch the other root's rows
        assert sorted(os.listdir(parent)) == sorted([first.name, second.name])
        for root in (first, second):
            assert Layout(root).catalog.is_file()
        with cas.Store.open(first) as store:
            assert store.read_bytes("only-in-first") == b"first"
            assert {entry.name for entry in store.entries()} == {"only-in-first"}


@pytest.mark.parametrize("name", ["x?a", "y#z", "p%41q", "sp ace%20"])
def test_read_only_catalog_of_a_root_with_uri_characters(tmp_path: Path, name: str) -> None:
    """The read-only opening (a `file:` URI) reaches the same catalog file."""
    root = tmp_path / name
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
    catalog = Catalog(Layout(root).catalog, Layout(root).setup_lock,
                      read_only="a test")
    try:
        with catalog.read() as conn:
            assert conn.execute("SELECT name FROM names").fetchall() == [("kept",)]
    finally:
        catalog.close_connections()
    assert sorted(os.listdir(tmp_path)) == [name]


# -- item 8: no symlink is followed, planted before or swapped in while open ---------------------


@pytest.mark.parametrize("companion", [CATALOG, f"{CATALOG}-wal", f"{CATALOG}-shm"])
def test_catalog_symlink_is_refused(tmp_path: Path, companion: str) -> None:
    """A symlink planted as catalog.db (or its -wal/-shm) is refused in one line; the file it
    points at is left alone."""
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = root / companion
    if planted.exists():
        shutil.move(planted, elsewhere / companion)
    planted.symlink_to(elsewhere / companion)
    before = _files_under(elsewhere)
    with pytest.raises(cas.CasError, match="symbolic link"):
        cas.Store.open(root)
    result = run_cas("ls", root=root)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("cas: error: ") and "symbolic link" in lines[0]
    assert _files_under(elsewhere) == before


def test_catalog_swapped_for_a_symlink_while_open_is_not_followed(tmp_path: Path) -> None:
    """A new connection of a store already open refuses a catalog.db swapped for a link."""
    root = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere.db"
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
        catalog = store._catalog
        catalog.close_connections()  # the next statement makes a new connection
        shutil.copy(Layout(root).catalog, elsewhere)
        os.unlink(Layout(root).catalog)
        Layout(root).catalog.symlink_to(elsewhere)
        with pytest.raises(cas.CasError, match="symbolic link"):
            store.put(b"other", name="other")
        os.unlink(Layout(root).catalog)
        shutil.copy(elsewhere, Layout(root).catalog)


def _outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def _swap_for_link(folder: Path, target: Path, moved: Path) -> None:
    """Move ``folder`` away to ``moved`` and put a symlink to ``target`` in its place."""
    os.rename(folder, moved)
    folder.symlink_to(target, target_is_directory=True)


def test_tmp_swapped_for_a_symlink_while_open(tmp_path: Path) -> None:
    """tmp/ swapped for a symlink while a store stays open: a put fails in one clear error and
    writes nothing outside, neither through the link nor into the folder moved away."""
    root, outside, moved = tmp_path / "store", _outside(tmp_path), tmp_path / "moved-tmp"
    with cas.Store.open(root) as store:
        store.put(b"before", name="before")
        _swap_for_link(Layout(root).tmp, outside, moved)
        before = _files_under(moved)
        for content in (b"after", b"a" * 100_000):
            with pytest.raises(cas.StoreError, match="symbolic link"):
                store.put(content, name="after")
        with pytest.raises(cas.StoreError, match="symbolic link"):
            store.put_many({"x": b"one", "y": b"two"})
        assert _files_under(outside) == []
        assert _files_under(moved) == before
        assert store.read_bytes("before") == b"before"
        Layout(root).tmp.unlink()  # the link removed: cas makes the folder again
        store.put(b"after", name="after")
        assert store.read_bytes("after") == b"after"
    assert stat.S_ISDIR(os.lstat(Layout(root).tmp).st_mode)


def test_tmp_deleted_while_open_is_made_again(tmp_path: Path) -> None:
    """tmp/ deleted while a store stays open is made again, with the store's folder mode."""
    root = tmp_path / "store"
    with cas.Store.open(root, shared=True) as store:
        shutil.rmtree(Layout(root).tmp)
        store.put(b"content", name="n")
        assert store.read_bytes("n") == b"content"
    assert stat.S_IMODE(os.lstat(Layout(root).tmp).st_mode) == 0o2770


def _same_shard(digest: str) -> bytes:
    """Some content whose blob lands in the shard of ``digest``."""
    number = 0
    while True:
        content = f"candidate {number}".encode()
        hashing = hasher()
        hashing.update(content)
        if shard_of(hashing.hexdigest()) == shard_of(digest):
            return content
        number += 1


def test_shard_swapped_for_a_symlink_while_open(tmp_path: Path) -> None:
    """A shard folder swapped for a symlink while a store stays open: a put into that shard
    fails in one clear error, reads do not go through the link, nothing is written outside."""
    root, outside, moved = tmp_path / "store", _outside(tmp_path), tmp_path / "moved-shard"
    with cas.Store.open(root) as store:
        digest = store.put(b"kept", name="kept")
        assert store.read_bytes("kept") == b"kept"  # the shard seen as a real folder
        shard = Layout(root).shard(digest)
        _swap_for_link(shard, outside, moved)
        # The outside folder even holds a file of the right name and size.
        (outside / digest).write_bytes(b"KEPT")
        with pytest.raises(cas.StoreError, match="symbolic link"):
            store.put(_same_shard(digest), name="same-shard")
        with pytest.raises(cas.IntegrityError):
            store.read_bytes("kept")
        assert _files_under(outside) == [digest]
        assert _files_under(moved) == [digest]
        shard.unlink()
        os.rename(moved, shard)
        assert store.read_bytes("kept") == b"kept"
        store.put(_same_shard(digest), name="same-shard")


def test_blobs_swapped_for_a_symlink_while_open(tmp_path: Path) -> None:
    """blobs/ itself swapped for a symlink while a store stays open is not written through."""
    root, outside, moved = tmp_path / "store", _outside(tmp_path), tmp_path / "moved-blobs"
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
        _swap_for_link(Layout(root).blobs, outside, moved)
        with pytest.raises(cas.StoreError, match="symbolic link"):
            store.put(b"new content", name="new")
        assert _files_under(outside) == []


def test_download_into_swapped_tmp_writes_nothing_outside(tmp_path: Path,
                                                          http_server: Server) -> None:
    """A fetch after tmp/ (or tmp/locks/) was swapped for a symlink fails in one clear error;
    no partial, sidecar or lock file is made outside."""
    root, outside = tmp_path / "store", _outside(tmp_path)
    url = http_server.add("/fixture.bin", b"fixture bytes" * 1000)
    with cas.Store.open(root) as store:
        store.fetch(http_server.add("/warm.bin", b"warm"))  # folders opened and in use
        _swap_for_link(Layout(root).locks, outside, tmp_path / "moved-locks")
        with pytest.raises(cas.CasError, match="symbolic link"):
            store.fetch(url)
        Layout(root).locks.unlink()
        Layout(root).locks.mkdir()
        _swap_for_link(Layout(root).tmp, outside, tmp_path / "moved-tmp")
        with pytest.raises(cas.CasError, match="symbolic link"):
            store.fetch(url, name="fixture")
        assert _files_under(outside) == []
        Layout(root).tmp.unlink()
        store.fetch(url, name="fixture")
        assert store.read_bytes("fixture") == b"fixture bytes" * 1000


def test_cleanup_with_tmp_swapped_removes_nothing_outside(tmp_path: Path) -> None:
    """gc and verify never remove old files through a symlink planted in place of tmp/."""
    root, outside = tmp_path / "store", _outside(tmp_path)
    old = outside / f"{PUT_PREFIX}old-staging-file"
    old.write_bytes(b"someone else's")
    os.utime(old, (0, 0))
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
        _swap_for_link(Layout(root).tmp, outside, tmp_path / "moved-tmp")
        for work in (store.gc, store.verify):
            with pytest.raises(cas.StoreError, match="symbolic link"):
                work()
    assert old.read_bytes() == b"someone else's"


def test_config_toml_may_be_a_symlink(tmp_path: Path) -> None:
    """config.toml may be a symlink (users keep dotfiles elsewhere): it is read, never
    written (docs/architecture.md)."""
    root = tmp_path / "store"
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "cas.toml").write_text('max_cache_size = "123MiB"\n')
    root.mkdir()
    Layout(root).config.symlink_to(dotfiles / "cas.toml")
    with cas.Store.open(root) as store:
        assert store.settings.max_cache_size == 123 << 20
        store.put(b"content")
    assert (dotfiles / "cas.toml").read_text() == 'max_cache_size = "123MiB"\n'


def test_quarantine_swapped_for_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    """verify moves a stray aside only into the real quarantine/ folder: with a symlink in its
    place it fails in one clear error and the stray stays where it was."""
    root, outside = tmp_path / "store", _outside(tmp_path)
    with cas.Store.open(root) as store:
        digest = store.put(b"kept", name="kept")
        stray = Layout(root).shard(digest) / "not-a-blob"
        stray.write_bytes(b"stray")
        Layout(root).quarantine.symlink_to(outside, target_is_directory=True)
        with pytest.raises(cas.StoreError, match="symbolic link"):
            store.verify()
        assert _files_under(outside) == []
        assert stray.read_bytes() == b"stray"
        Layout(root).quarantine.unlink()
        report = store.verify()
        assert report.counts["stray"] == 1
        assert not stray.exists() and len(os.listdir(Layout(root).quarantine)) == 1


def test_root_moved_away_while_open_is_not_made_again(tmp_path: Path) -> None:
    """A root moved away while a store stays open is not silently made again (its catalog
    lives on elsewhere): the put fails, and nothing appears at the old place."""
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        store.put(b"kept", name="kept")
        os.rename(root, tmp_path / "moved")
        with pytest.raises(cas.CasError):
            store.put(b"new content", name="new")
        assert not root.exists()
        os.rename(tmp_path / "moved", root)
