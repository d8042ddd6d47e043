"""Properties of put and read: content in equals content out, once, under its BLAKE3 name."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
import cas.ops.put
from cas.storage.hashing import CHUNK_SIZE
from cas.storage.layout import LOCKS, Layout

from tests.conftest import blob_files
from tests.strategies import BOUNDARY_SIZES, contents, names


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@given(data=contents(), kind=st.sampled_from(["bytes", "path", "file"]))
def test_put_then_read_gives_back_the_bytes(store: cas.Store, tmp_path: Path, data: bytes,
                                            kind: str) -> None:
    """Whatever the source kind and size, read_bytes returns exactly what was put."""
    if kind == "bytes":
        digest = store.put(data)
    elif kind == "path":
        source = tmp_path / "source"
        source.write_bytes(data)
        digest = store.put(source)
    else:
        digest = store.put(io.BytesIO(data))
    assert digest == _b3(data)
    assert store.read_bytes(digest) == data
    assert store.path(digest).read_bytes() == data


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_sizes_around_chunk_boundaries(store: cas.Store, tmp_path: Path, size: int) -> None:
    """Files of sizes around the copy chunk round-trip through a path put."""
    data = os.urandom(size)
    source = tmp_path / "source"
    source.write_bytes(data)
    digest = store.put(source)
    assert digest == _b3(data)
    assert store.path(digest).stat().st_size == size
    assert store.read_bytes(digest) == data


@given(data=contents(), first=names, second=names)
def test_putting_twice_stores_once(store: cas.Store, data: bytes, first: str,
                                   second: str) -> None:
    """The same content put twice, under any names, is one file and one blob row."""
    before = {entry.digest for entry in store.entries()}
    digest = store.put(data, name=first)
    assert store.put(io.BytesIO(data), name=second) == digest
    blobs = {entry.digest for entry in store.entries()}
    assert blobs == before | {digest}
    files = [path for path in blob_files(store.root) if path.name == digest]
    assert len(files) == 1
    assert store.read_bytes(first) == store.read_bytes(second) == data


def test_second_put_of_known_bytes_does_not_rewrite(store: cas.Store) -> None:
    """A second put of stored content leaves the published file untouched (same inode)."""
    digest = store.put(b"same content")
    inode = store.path(digest).stat().st_ino
    store.put(b"same content")
    assert store.path(digest).stat().st_ino == inode


def test_blobs_are_read_only_and_laid_out_by_digest(store: cas.Store) -> None:
    """A blob lives at blobs/<first two hex>/<digest> with mode 0444."""
    digest = store.put(b"layout")
    path = store.path(digest)
    assert path == Layout(store.root).blob(digest)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def test_staging_is_empty_after_puts(store: cas.Store, tmp_path: Path) -> None:
    """Nothing is left in tmp/ after successful and failed puts."""
    store.put(b"a")
    store.put(io.BytesIO(os.urandom(CHUNK_SIZE + 3)))
    with pytest.raises(cas.NotFound):
        store.put(tmp_path / "missing")
    left = [p for p in Layout(store.root).tmp.iterdir() if p.name != LOCKS]
    assert left == []


def test_text_stream_is_refused(store: cas.Store) -> None:
    """A text-mode file is a usage error, and nothing is staged."""
    with pytest.raises(cas.UsageError, match="binary"):
        store.put(io.StringIO("text"))  # type: ignore[arg-type]


def test_new_store_layout(root: Path) -> None:
    """First use creates blobs/, tmp/ and catalog.db under the root, private to the user."""
    with cas.Store.open(root):
        pass
    assert Layout(root).blobs.is_dir() and Layout(root).tmp.is_dir()
    assert Layout(root).catalog.is_file()
    assert stat.S_IMODE(Layout(root).blobs.stat().st_mode) == 0o700


def test_default_root_is_cas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a root, the store opens at $CAS_HOME."""
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    with cas.Store.open() as store:
        assert store.root == tmp_path / "home"
        store.put(b"x")
    assert Layout(tmp_path / "home").catalog.exists()


# -- put_many: batches share one transaction and one filesystem sync ------------------------------


@given(
    items=st.lists(
        st.tuples(contents(), st.sampled_from(["bytes", "path", "file"])), max_size=12
    ),
    named=st.booleans(),
)
def test_put_many_equals_put_one_by_one(store: cas.Store, tmp_path: Path,
                                        items: list[tuple[bytes, str]], named: bool) -> None:
    """put_many gives the digests put would, in order, and every content reads back, named or
    not, with repeats inside one batch stored once."""
    sources: list[cas.store.Source] = []
    for index, (data, kind) in enumerate(items):
        if kind == "bytes":
            sources.append(data)
        elif kind == "path":
            source = tmp_path / f"source-{index}"
            source.write_bytes(data)
            sources.append(source)
        else:
            sources.append(io.BytesIO(data))
    keys = [f"batch/{index}" for index in range(len(items))]
    digests = store.put_many(dict(zip(keys, sources, strict=True)) if named else sources)
    assert digests == [_b3(data) for data, _ in items]
    for key, digest, (data, _) in zip(keys, digests, items, strict=True):
        assert store.read_bytes(digest) == data
        if named:
            assert store.read_bytes(key) == data
    files = [path.name for path in blob_files(store.root)]  # the store outlives one example
    assert set(digests) <= set(files) and len(files) == len(set(files))
    assert [p for p in Layout(store.root).tmp.iterdir() if p.name != LOCKS] == []


def test_put_many_batches_larger_than_one_transaction(store: cas.Store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Items beyond one batch go in further transactions, in order, none lost."""
    monkeypatch.setattr(cas.ops.put, "PUT_BATCH", 7)
    blobs = {f"many/{index}": b"blob %d" % index for index in range(30)}
    digests = store.put_many(blobs)
    assert digests == [_b3(data) for data in blobs.values()]
    assert {entry.name for entry in store.entries()} == set(blobs)


def test_put_many_bad_item_records_nothing_of_its_batch(store: cas.Store,
                                                        tmp_path: Path) -> None:
    """A missing file or a bad name fails the batch before it is recorded, with the usual
    error; what was stored before stays, and staging is left empty."""
    kept = store.put(b"stored before", name="kept")
    with pytest.raises(cas.NotFound, match="does not exist"):
        store.put_many({"a": b"first", "b": tmp_path / "missing"})
    with pytest.raises(cas.UsageError, match=r"64 hex|hexadecimal|digest"):
        store.put_many({"c": b"third", "f" * 64: b"fourth"})
    assert [(entry.name, entry.digest) for entry in store.entries()] == [("kept", kept)]
    assert [path.name for path in blob_files(store.root)] == [kept]
    assert [p for p in Layout(store.root).tmp.iterdir() if p.name != LOCKS] == []
    with pytest.raises(cas.UsageError, match="put_many takes a collection"):
        store.put_many(b"not a collection")


def test_put_many_of_stored_content_writes_nothing(store: cas.Store) -> None:
    """Known bytes in a batch are not staged again: their files keep their inodes."""
    digest = store.put(b"known")
    inode = store.path(digest).stat().st_ino
    assert store.put_many([b"known", b"new"])[0] == digest
    assert store.path(digest).stat().st_ino == inode


def test_put_many_copies_buffers_a_generator_reuses(store: cas.Store, tmp_path: Path) -> None:
    """Items are read when their batch is stored: a reused buffer still stores each content,
    and an open file is refused rather than stored line by line."""
    buffer = bytearray(3)

    def contents() -> Iterator[bytearray]:
        for index in range(5):
            buffer[:] = b"%03d" % index
            yield buffer

    digests = store.put_many(contents())
    assert [store.read_bytes(digest) for digest in digests] == [b"%03d" % i for i in range(5)]
    source = tmp_path / "lines.txt"
    source.write_bytes(b"one\ntwo\n")
    with source.open("rb") as stream, pytest.raises(cas.UsageError, match="use put for one"):
        store.put_many(stream)  # type: ignore[arg-type]
