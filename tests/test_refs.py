"""Names, digests, tags and removal: the catalog side of the API."""

from __future__ import annotations

import pytest
from hypothesis import given

import cas
from cas.refs import check_name
from cas.storage.layout import Layout

from tests.conftest import blob_files
from tests.strategies import names


@given(name=names)
def test_any_printable_name_round_trips(store: cas.Store, name: str) -> None:
    """Every valid name can be given, looked up, and listed, including ones with '/'."""
    digest = store.put(name.encode(), name=name)
    assert store.path(name).samefile(store.path(digest))  # the name's view of the blob
    assert name in {entry.name for entry in store.entries()}


@pytest.mark.parametrize(
    "name",
    ["", "x" * 256, "tab\there", "new\nline", "nul\x00", "a" * 64, "ABCDEF" + "0" * 58],
)
def test_invalid_names_are_refused(store: cas.Store, name: str) -> None:
    """Empty, over-long, control-character and 64-hex names are usage errors."""
    with pytest.raises(cas.UsageError):
        store.put(b"data", name=name)
    with pytest.raises(cas.UsageError):
        check_name(name)
    assert store.entries() == []


def test_names_are_keys_not_paths(store: cas.Store) -> None:
    """A name full of path syntax never becomes a path: the blob is still under blobs/."""
    digest = store.put(b"escape", name="../../../etc/passwd")
    assert store.path("../../../etc/passwd").samefile(store.path(digest))
    assert store.path("../../../etc/passwd").is_relative_to(Layout(store.root).views)
    assert store.path(digest).is_relative_to(Layout(store.root).blobs)


def test_digest_refs_are_case_insensitive(store: cas.Store) -> None:
    """An upper-case digest finds the same blob."""
    digest = store.put(b"case")
    assert store.read_bytes(digest.upper()) == b"case"


def test_tag_and_untag(store: cas.Store) -> None:
    """tag points a new name at a blob, untag removes only the name."""
    digest = store.put(b"tagged", name="first")
    assert store.tag("second", "first") == digest
    assert store.read_bytes("second") == b"tagged"
    store.untag("first")
    with pytest.raises(cas.NotFound):
        store.path("first")
    assert store.read_bytes(digest) == b"tagged"


def test_unknown_refs(store: cas.Store) -> None:
    """Unknown names and digests are NotFound, which is also a KeyError."""
    with pytest.raises(cas.NotFound, match="nope"):
        store.path("nope")
    with pytest.raises(KeyError):
        store.read_bytes("0" * 64)
    with pytest.raises(cas.NotFound):
        store.untag("nope")
    with pytest.raises(cas.NotFound):
        store.tag("new", "nope")


def test_remove_name_keeps_shared_blob(store: cas.Store) -> None:
    """Removing one of two names of a blob keeps the blob for the other."""
    digest = store.put(b"shared", name="a")
    store.tag("b", digest)
    assert store.remove("a") == []
    assert store.read_bytes("b") == b"shared"
    assert store.remove("b") == [digest]
    assert blob_files(store.root) == []


def test_remove_digest_removes_names(store: cas.Store) -> None:
    """Removing by digest takes the blob's file, its row and every name pointing at it."""
    digest = store.put(b"gone", name="a")
    store.tag("b", "a")
    assert store.remove(digest) == [digest]
    assert store.entries() == []
    assert blob_files(store.root) == []


def test_listing(store: cas.Store) -> None:
    """entries lists every name with its blob, then unnamed blobs."""
    named = store.put(b"named", name="n")
    unnamed = store.put(b"unnamed")
    listed = [(entry.name, entry.digest, entry.size) for entry in store.entries()]
    assert listed == [("n", named, 5), (None, unnamed, 7)]
