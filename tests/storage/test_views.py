"""Named views: path(name) ends in the name's last component and is the blob's own inode."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.storage.layout import LABEL_DIGITS, Layout, view_label

from tests.clock import Clock
from tests.conftest import run_cas


def test_a_named_file_shows_under_its_own_name(store: cas.Store, root: Path) -> None:
    """path(name) is views/ab/<digest>/<last component>, the very inode of the blob, read-only;
    path(digest) is still the blob under blobs/."""
    digest = store.put(b"GGUF model", name="models/tiny.gguf")
    shown = store.path("models/tiny.gguf")
    assert shown == Layout(root).view(digest, "tiny.gguf")
    assert shown.name == "tiny.gguf" and shown.suffix == ".gguf"
    blob = store.path(digest)
    assert blob == Layout(root).blob(digest)
    assert os.stat(shown).st_ino == os.stat(blob).st_ino  # a hard link: O(1), never drifts
    assert stat.S_IMODE(os.lstat(shown).st_mode) == 0o444 and not shown.is_symlink()
    assert os.path.realpath(shown) == str(shown)  # tools that resolve links keep the name
    assert shown.read_bytes() == b"GGUF model"


@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                    min_size=1, max_size=60).filter(lambda n: n.isprintable()))
def test_any_name_gives_a_view_inside_the_root(tmp_path: Path, name: str) -> None:
    """Whatever the name, its view is a file directly in views/ab/<digest>/, never outside."""
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        try:
            digest = store.put(name.encode(), name=name)
        except cas.UsageError:
            return  # a name refused as such (64 hex digits)
        shown = store.path(name)
        assert shown.parent == Layout(root).views_of(digest)
        assert shown.resolve().is_relative_to(Layout(root).views.resolve())
        assert shown.read_bytes() == name.encode()
        label = name.rpartition("/")[2]
        assert shown.name == (label if label not in ("", ".", "..") else digest[:LABEL_DIGITS])


def test_unusable_labels_get_the_digest() -> None:
    """'.', '..', an empty last component and one over 255 bytes become digest digits."""
    digest = "ab" * 32
    for name in ("a/.", "..", "models/", "x/" + "é" * 200):
        assert view_label(name, digest) == digest[:LABEL_DIGITS]
    assert view_label("data/train.parquet", digest) == "train.parquet"
    assert view_label(None, digest) == digest[:LABEL_DIGITS]


def test_retargeting_a_name_needs_no_rewrite(store: cas.Store) -> None:
    """Views are keyed by digest: a name moved elsewhere shows the new blob at once."""
    first = store.put(b"one", name="data/x.csv")
    old_view = store.path("data/x.csv")
    second = store.put(b"two", name="data/x.csv")
    new_view = store.path("data/x.csv")
    assert old_view.parent.name == first and new_view.parent.name == second
    assert new_view.read_bytes() == b"two" and old_view.read_bytes() == b"one"


def test_a_deleted_or_replaced_view_is_rebuilt(store: cas.Store) -> None:
    """A view removed, or replaced by another file, is built again by the next path()."""
    digest = store.put(b"content", name="a/file.txt")
    view = store.path("a/file.txt")
    view.unlink()
    assert store.path("a/file.txt") == view and view.read_bytes() == b"content"
    view.unlink()
    view.write_bytes(b"forged")  # another inode where the view stands
    again = store.path("a/file.txt")
    assert again.read_bytes() == b"content"
    assert os.stat(again).st_ino == os.stat(store.path(digest)).st_ino


def test_removing_or_evicting_a_blob_removes_its_views(root: Path) -> None:
    """No view outlives its blob (a hard link would keep the bytes on disk)."""
    clock = Clock()
    with cas.Store.open(root, clock=clock) as store:
        gone = store.put(b"remove me", name="r/one.bin")
        store.path("r/one.bin")
        store.remove("r/one.bin")
        assert not Layout(root).views_of(gone).exists()
        old = store.put(b"evict me", name="e/two.bin")
        store.path("e/two.bin")
        clock.advance(3600)
        store.gc(max_age="1m")
        assert not Layout(root).views_of(old).exists()
        assert not Layout(root).blob(old).exists()


def test_the_cli_prints_the_view_and_leases_hold_it(root: Path, tmp_path: Path) -> None:
    """`cas path NAME` prints the view; a lease of a name holds the view's path."""
    source = tmp_path / "weights.npz"
    source.write_bytes(b"npz")
    put = run_cas("put", str(source), "--name", "ckpt/weights.npz", root=root)
    assert put.returncode == 0
    shown = run_cas("path", "ckpt/weights.npz", root=root)
    assert shown.returncode == 0
    path = Path(shown.stdout.decode().strip())
    assert path.name == "weights.npz" and path.read_bytes() == b"npz"
    with cas.Store.open(root) as store, store.lease("ckpt/weights.npz") as leased:
        assert leased == path
        with store.open_blob("ckpt/weights.npz") as blob:
            assert blob.read() == b"npz"


def test_a_view_costs_little_more_than_the_blob_path(store: cas.Store) -> None:
    """path(name) stays a look-up: the warm view is one more lstat (measured properly in
    benchmarks/suite_small.py; here only that it does not rebuild every time)."""
    store.put(b"x", name="hot/x.bin")
    view = store.path("hot/x.bin")
    before = os.lstat(view).st_ctime_ns
    time.sleep(0.01)
    for _ in range(50):
        assert store.path("hot/x.bin") == view
    assert os.lstat(view).st_ctime_ns == before  # never relinked


def test_verify_removes_wrong_views_and_counts_links_as_no_damage(store: cas.Store,
                                                                  root: Path) -> None:
    """Views (links of blobs) are not damage; stray or wrong entries under views/ go."""
    digest = store.put(b"kept", name="k/kept.txt")
    store.path("k/kept.txt")
    assert not store.verify().damaged and not store.verify().findings
    views = Layout(root).views
    (views / "zz").mkdir()  # not a shard
    (views / digest[:2] / ("0" * 64)).mkdir()  # not of its shard, not stored
    wrong = Layout(root).view(digest, "other.txt")
    wrong.write_bytes(b"not the blob")
    report = store.verify()
    kinds = [finding.kind for finding in report.findings]
    assert kinds.count("view") == 3 and not report.damaged
    assert not (views / "zz").exists() and not wrong.exists()
    assert store.path("k/kept.txt").read_bytes() == b"kept"


def test_a_link_planted_as_views_is_never_followed(store: cas.Store, root: Path,
                                                   tmp_path: Path) -> None:
    """With a symlink standing as views/, path(name) serves the blob and writes nothing
    through the link; verify-free recovery once the link is removed."""
    digest = store.put(b"safe", name="s/safe.txt")
    outside = tmp_path / "outside"
    outside.mkdir()
    Layout(root).views.symlink_to(outside)
    assert store.path("s/safe.txt") == Layout(root).blob(digest)
    assert list(outside.iterdir()) == []
    Layout(root).views.unlink()
    assert store.path("s/safe.txt").name == "safe.txt"
