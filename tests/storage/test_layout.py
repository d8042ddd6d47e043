"""The root's on-disk layout (cas/storage/layout.py), spelled out once.

Every other test builds its paths through ``Layout``; this one pins the names themselves, which
are the on-disk format older and newer cas versions share.
"""

from __future__ import annotations

from pathlib import Path

import cas
from cas.storage.layout import Layout, download_key, lock_name, partial_name, put_name

DIGEST = "ab" + "0" * 62


def test_the_names_under_a_root_are_the_on_disk_format() -> None:
    """Each folder and file of a root has the name the on-disk format gives it."""
    layout = Layout(Path("/r"))
    assert layout.catalog == Path("/r/catalog.db")
    assert layout.config == Path("/r/config.toml")
    assert layout.blobs == Path("/r/blobs")
    assert layout.shard(DIGEST) == Path("/r/blobs/ab")
    assert layout.blob(DIGEST) == Path(f"/r/blobs/ab/{DIGEST}")
    assert layout.tmp == Path("/r/tmp")
    assert layout.locks == Path("/r/tmp/locks")
    assert layout.setup_lock == Path("/r/tmp/locks/setup.lock")
    assert layout.quarantine == Path("/r/quarantine")
    assert layout.folders() == [Path("/r"), Path("/r/blobs"), Path("/r/tmp"), Path("/r/tmp/locks")]


def test_the_names_of_staging_files_and_locks() -> None:
    """Staging files, partial downloads and their locks are named as older versions expect."""
    key = download_key("https://example.org/f")
    assert key.startswith("dl-") and len(key) == len("dl-") + 32
    assert partial_name(key, "t") == f"{key}-t.part"
    assert lock_name(key) == f"{key}.lock"
    assert put_name("tag-", "0123") == "put-tag-0123"


def test_a_store_puts_its_files_where_the_layout_says(tmp_path: Path) -> None:
    """A store writes its catalog and blobs at the layout's paths, and makes its folders."""
    with cas.Store.open(tmp_path) as store:
        digest = store.put(b"laid out")
        assert store.path(digest) == Layout(tmp_path).blob(digest)
    layout = Layout(tmp_path)
    assert layout.catalog.is_file()
    assert all(folder.is_dir() for folder in layout.folders())
