"""Trees: a folder stored as one fixture, shown as a read-only folder, kept and evicted whole."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cas
from cas.ops import eviction
from cas.storage import trees
from cas.storage.layout import Layout

from tests.clock import Clock


def make_folder(base: Path, files: dict[str, bytes], executable: set[str] = frozenset(),
                empty: tuple[str, ...] = ()) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, 0o755 if relative in executable else 0o644)
    for folder in empty:
        (base / folder).mkdir(parents=True, exist_ok=True)
    return base


def contents(folder: Path) -> tuple[dict[str, tuple[bytes, bool]], set[str]]:
    """Files (content, executable) and every folder under ``folder``, by relative path."""
    files: dict[str, tuple[bytes, bool]] = {}
    folders: set[str] = set()
    for parent, subfolders, names in os.walk(folder):
        for sub in subfolders:
            folders.add(os.path.relpath(os.path.join(parent, sub), folder))
        for name in names:
            path = os.path.join(parent, name)
            files[os.path.relpath(path, folder)] = (
                Path(path).read_bytes(), bool(os.stat(path).st_mode & stat.S_IXUSR))
    return files, folders


_NAME = st.text("abcxyz_.-é0", min_size=1, max_size=6).filter(lambda n: n not in (".", ".."))


@st.composite
def folder_shapes(draw: st.DrawFn) -> tuple[dict[str, bytes], set[str], tuple[str, ...]]:
    paths = draw(st.lists(st.lists(_NAME, min_size=1, max_size=3).map("/".join),
                          max_size=12, unique=True))
    files: dict[str, bytes] = {}
    for path in sorted(paths, key=len):  # a file's path may not be another's folder
        if any(path.startswith(f"{other}/") or other.startswith(f"{path}/") for other in files):
            continue
        files[path] = draw(st.binary(max_size=40))
    executable = {path for path in files if draw(st.booleans())}
    empty = tuple(f"{e}/{n}" if e else n for e, n in draw(st.lists(
        st.tuples(st.sampled_from(["", "deep/er"]), st.sampled_from(["void", "nil"])),
        max_size=2)) if not any(p.startswith(f"{e}/{n}".lstrip("/")) or
                                f"{e}/{n}".lstrip("/").startswith(f"{p}/") for p in files))
    return files, executable, empty


@settings(max_examples=40)
@given(shape=folder_shapes())
def test_a_tree_round_trips_files_modes_and_paths(tmp_path_factory: pytest.TempPathFactory,
                                                  shape: tuple[dict[str, bytes], set[str],
                                                               tuple[str, ...]]) -> None:
    """Whatever the folder's shape, path(tree) holds the same files with the same contents,
    executable bits and relative paths, empty folders too; read-only."""
    files, executable, empty = shape
    base = tmp_path_factory.mktemp("tree")
    source = make_folder(base / "src", files, executable, empty)
    with cas.Store.open(base / "store") as store:
        digest = store.put(source, name="sets/data")
        shown = store.path("sets/data")
        assert shown.name == "data" and shown.is_dir()
        assert contents(shown) == contents(source)
        assert stat.S_IMODE(os.stat(shown).st_mode) == 0o555
        assert store.put(source) == digest  # canonical: the same folder, the same digest
        assert contents(store.path(digest)) == contents(source)


def test_the_record_is_canonical_json_with_a_format_marker(store: cas.Store,
                                                           tmp_path: Path) -> None:
    """The tree's digest is that of its record, a blob in the store."""
    source = make_folder(tmp_path / "src", {"b.txt": b"b", "a/x": b"x"}, {"a/x"}, ("e",))
    digest = store.put(source)
    record = store._blobs.open(digest).read()
    assert json.loads(record) == {
        "format": "cas-tree/1", "folders": ["e"],
        "files": [["a/x", cas.Store.open(tmp_path / "s2").put(b"x"), 1, 1],
                  ["b.txt", store.put(b"b"), 1, 0]],
    }
    assert trees.decode(record).encode() == record


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket", "outside link"])
def test_entries_a_tree_cannot_hold_are_refused_in_one_line(store: cas.Store, tmp_path: Path,
                                                            kind: str) -> None:
    """A symlink, a FIFO or a socket is named in one line and nothing is stored."""
    source = make_folder(tmp_path / "src", {"a.txt": b"a", "z/z.txt": b"z"})
    odd = source / "m" / "odd"
    odd.parent.mkdir()
    if kind == "symlink":
        odd.symlink_to("../a.txt")
    elif kind == "outside link":
        odd.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(odd))
    before = store.stats().usage.blobs
    with pytest.raises(cas.UsageError) as refused:
        store.put(source, name="t")
    message = str(refused.value)
    assert "\n" not in message and "'m/odd'" in message
    assert store.stats().usage.blobs == before
    assert not any(entry.name == "t" for entry in store.entries())


def test_a_second_tree_sharing_most_files_stores_only_the_new_ones(store: cas.Store,
                                                                   root: Path,
                                                                   tmp_path: Path) -> None:
    """Files are blobs: a second tree sharing 90 % of its files adds only the other 10 %."""
    first = {f"f{i:03}.bin": os.urandom(1000) for i in range(100)}
    second = dict(first)
    for i in range(10):
        second[f"f{i:03}.bin"] = os.urandom(1000)
    store.put(make_folder(tmp_path / "one", first), name="one")
    before = store.stats().usage
    record = store.put(make_folder(tmp_path / "two", second), name="two")
    after = store.stats().usage
    assert after.blobs - before.blobs == 11  # ten files and the record
    assert after.bytes - before.bytes == 10_000 + Layout(root).blob(record).stat().st_size


def test_read_bytes_of_a_tree_is_a_usage_error(store: cas.Store, tmp_path: Path) -> None:
    store.put(make_folder(tmp_path / "src", {"a": b"a"}), name="t")
    with pytest.raises(cas.UsageError, match="is a tree") as refused:
        store.read_bytes("t")
    assert "\n" not in str(refused.value)


def test_ls_shows_a_tree_as_one_entry(store: cas.Store, tmp_path: Path) -> None:
    """Members are not listed; the tree is, with its kind, file count and total size."""
    store.put(make_folder(tmp_path / "src", {"a": b"aaa", "b/c": b"cc"}), name="t")
    (entry,) = store.entries()
    assert (entry.name, entry.kind, entry.files, entry.size) == ("t", "tree", 2, 5)
    assert store.stats().trees == 1


def test_members_are_never_victims_while_the_tree_is_stored(root: Path, tmp_path: Path) -> None:
    """However old, a stored tree's members stay; the tree's record goes as one fixture, its
    view with it, and its members in the same cleanup."""
    clock = Clock()
    with cas.Store.open(root, clock=clock) as store:
        digest = store.put(make_folder(tmp_path / "src", {"a": b"a" * 100, "b": b"b" * 100}),
                           name="t")
        shown = store.path("t")
        clock.advance(3600)
        store.path("t")  # the tree's record is used; its members are not touched
        clock.advance(600)
        plan = store.gc(max_age="30m")
        assert plan.removed == 0 and shown.is_dir()
        clock.advance(3600)
        plan = store.gc(max_age="30m")
        assert plan.removed == 3  # the record, then its members in a later batch
        assert store.stats().usage.blobs == 0
        assert not Layout(root).views_of(digest).exists()


def test_evicting_one_of_two_trees_keeps_what_the_other_uses(root: Path,
                                                             tmp_path: Path) -> None:
    """Evicting a tree removes its own files only: shared ones stay with the other tree."""
    clock = Clock()
    with cas.Store.open(root, clock=clock) as store:
        shared = {"shared.txt": b"shared", "also/shared.bin": b"also"}
        old = store.put(make_folder(tmp_path / "old", {**shared, "mine": b"old only"}),
                        name="old")
        store.path("old")
        clock.advance(7200)
        store.put(make_folder(tmp_path / "new", {**shared, "yours": b"new only"}), name="new")
        store.path("new")
        plan = store.gc(max_age="1h")
        assert plan.removed == 2  # the old record and "old only"
        assert not Layout(root).views_of(old).exists()
        files, _ = contents(store.path("new"))
        assert files == {"shared.txt": (b"shared", False), "also/shared.bin": (b"also", False),
                         "yours": (b"new only", False)}
        assert not store.verify().damaged


def test_size_cleanup_continues_into_a_trees_members(root: Path, tmp_path: Path) -> None:
    """Over the size limit, evicting a tree's record frees its members in the same gc."""
    clock = Clock()
    with cas.Store.open(root, clock=clock) as store:
        store.put(make_folder(tmp_path / "big", {f"{i}": os.urandom(10_000) for i in range(5)}),
                  name="big")
        clock.advance(3600)
        plan = store.gc(max_size="10KB")
        assert plan.removed == 6 and store.stats().usage.blobs == 0


@pytest.mark.parametrize("hold", ["lease", "pin"])
def test_a_lease_or_pin_of_the_tree_holds_its_members(root: Path, tmp_path: Path,
                                                      hold: str) -> None:
    clock = Clock()
    with cas.Store.open(root, clock=clock, lease_ttl="1d") as store:
        store.put(make_folder(tmp_path / "src", {"a": b"a", "b": b"b"}), name="t")
        lease = None
        if hold == "lease":
            lease = store.lease("t")
            assert lease.path == store.path("t") and lease.path.is_dir()
        else:
            store.pin("t")
        clock.advance(7200)
        assert store.gc(max_age="1m").removed == 0
        assert contents(store.path("t"))[0] == {"a": (b"a", False), "b": (b"b", False)}
        if lease is not None:
            lease.release()


def test_the_victim_query_probes_the_members_index(root: Path) -> None:
    """Excluding members costs an index probe per candidate, not a scan of tree_entries."""
    with cas.Store.open(root) as store:
        store.put(b"x")
    conn = sqlite3.connect(Layout(root).catalog)
    plan = conn.execute(f"EXPLAIN QUERY PLAN {eviction.VICTIMS_SQL}",
                        {"now": 0, "grace_cutoff": 0, "age_cutoff": 0, "dead": "[]"}).fetchall()
    conn.close()
    details = [row[-1] for row in plan if "tree_entries" in row[-1]]
    assert details and all("USING COVERING INDEX tree_entries_by_digest" in d for d in details)


def test_verify_reports_a_tree_missing_a_member(store: cas.Store, tmp_path: Path) -> None:
    """A member removed by hand is damage of its tree, reported and left (nothing to re-put)."""
    store.put(make_folder(tmp_path / "src", {"a": b"aaa", "b": b"bbb"}), name="t")
    member = store.put(b"aaa", name="also-a-name")
    store.remove("also-a-name")  # the name goes, the blob stays with its tree
    assert store.read_bytes(member) == b"aaa"
    with pytest.raises(cas.InUse, match="file of the stored tree"):
        store.remove(member)
    store.remove(member, force=True)
    report = store.verify()
    trees_found = [finding for finding in report.findings if finding.kind == "tree"]
    assert len(trees_found) == 1 and trees_found[0].remains and trees_found[0].names == ("t",)
    assert report.damaged
    with pytest.raises(cas.IntegrityError, match="missing"):
        store.path("t")


def test_a_deleted_tree_view_is_rebuilt_and_a_damaged_one_removed(store: cas.Store,
                                                                  tmp_path: Path) -> None:
    """A tree view removed is built again; one whose files were changed is found by a full
    verify, removed, and built again."""
    from cas.storage.folder import remove_tree

    store.put(make_folder(tmp_path / "src", {"a/b": b"b", "c": b"c"}), name="t")
    shown = store.path("t")
    fd = os.open(shown.parent, os.O_RDONLY)
    remove_tree(shown.name, fd)
    os.close(fd)
    assert contents(store.path("t"))[0] == {"a/b": (b"b", False), "c": (b"c", False)}
    os.chmod(shown, 0o755)
    (shown / "c").unlink()
    (shown / "c").write_bytes(b"c")  # the same bytes, but no longer the blob
    os.chmod(shown, 0o555)
    report = store.verify(full=True)
    assert [f.kind for f in report.findings] == ["view"] and not report.damaged
    assert os.stat(store.path("t") / "c").st_ino == os.stat(store.path(store.put(b"c"))).st_ino


def test_fixture_session_returns_a_trees_folder(root: Path, tmp_path: Path) -> None:
    """FixtureSession (the pytest plugin's engine) leases a stored tree and gives its folder."""
    with cas.Store.open(root) as store:
        store.put(make_folder(tmp_path / "src", {"img/1.png": b"png"}), name="images")
        with cas.FixtureSession(store) as session:
            folder = session.path("images")
            assert folder.is_dir() and (folder / "img" / "1.png").read_bytes() == b"png"
