"""Archives at the storage layer: deciding the kind, the bounds, and what extraction makes of
members that are not plain files (storage/archives.py, storage/extract.py). Each test stages
into a real store's tmp/ and checks that a refusal leaves no staging file behind."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from cas.errors import IntegrityError, UsageError
from cas.storage.archives import (
    MAX_HEADER,
    MEMBER_COST,
    SIZE_FLOOR,
    Budget,
    check_kind,
    decide,
    decompress,
    limit,
    suffix_kind,
)
from cas.storage.blobs import BlobStore
from cas.storage.extract import Extracted, extract
from cas.storage.layout import PUT_PREFIX

from tests.archives import compress, member, tar, tar_members, zip_of, zip_raw


@pytest.fixture
def blobs(root: Path) -> BlobStore:
    return BlobStore(root)


def _extract(blobs: BlobStore, data: bytes, kind: str, bound: int = 1 << 30) -> Extracted:
    budget = Budget(bound, len(data), "archive test")
    done = extract(io.BytesIO(data), kind, budget,
                   lambda source: blobs.staging.stage_stream(source, sync=False))
    return done


def _contents(blobs: BlobStore, done: Extracted) -> dict[str, bytes]:
    found = {}
    for path, each in done.files.items():
        with open(each.staged.path, "rb") as file:
            found[path] = file.read()
    done.discard()
    return found


def _no_staging_left(root: Path) -> None:
    assert not list((root / "tmp").glob(f"{PUT_PREFIX}*"))


@pytest.mark.parametrize(("url", "kind"), [
    ("https://h/x.tar.gz", "tar.gz"), ("https://h/x.TGZ?y=1", "tar.gz"), ("https://h/x.zip", "zip"),
    ("https://h/x.tar.zst", "tar.zst"), ("https://h/x.csv.xz", "xz"), ("https://h/x", None),
    ("https://h/x.tar.gz/download", None), ("https://h/a.tbz2", "tar.bz2"),
])  # fmt: skip
def test_suffixes(url: str, kind: str | None) -> None:
    assert suffix_kind(url) == kind


@pytest.mark.parametrize(("data", "url", "kind"), [
    (tar({"a": (b"a", False)}, "tar.gz"), "https://h/download", "tar.gz"),
    (tar({"a": (b"a", False)}, "tar.gz"), "https://h/a.gz", "gz"),
    (tar({"a": (b"a", False)}, "tar.xz"), "https://h/x.tar.xz", "tar.xz"),
    (tar({"a": (b"a", False)}, "tar"), "https://h/download", "tar"),
    (zip_of({"a": (b"a", False)}), "https://h/x.tar.gz", "zip"),
    (compress(b"plain", "bz2"), "https://h/download", "bz2"),
    (compress(b"plain", "zst"), "https://h/x.zst", "zst"),
], ids=["tgz-no-suffix", "tgz-as-gz", "txz", "tar-no-suffix", "zip-misnamed", "bz2", "zst"])
def test_auto_decides_by_magic_then_suffix(data: bytes, url: str, kind: str) -> None:
    """Magic bytes say the compression; the suffix, or a ustar header inside, says tar."""
    assert decide("auto", io.BytesIO(data), url, "archive") == kind


def test_an_explicit_kind_must_match_the_magic() -> None:
    with pytest.raises(IntegrityError, match="is gz data, not the zip"):
        decide("zip", io.BytesIO(gzip.compress(b"x")), None, "archive x")
    with pytest.raises(IntegrityError, match="is a zip archive, not the tar"):
        decide("tar", io.BytesIO(zip_of({"a": (b"", False)})), None, "archive x")
    with pytest.raises(UsageError, match="cannot tell"):
        decide("auto", io.BytesIO(b"just text"), "https://h/x.bin", "archive x")


def test_kinds_and_limits() -> None:
    assert check_kind("TAR.GZ") == "tar.gz"
    with pytest.raises(UsageError, match="'7z' is not one of auto, zip"):
        check_kind("7z")
    assert limit(10, 1 << 40) == SIZE_FLOOR
    assert limit(1 << 20, 1 << 40) == 1000 << 20
    assert limit(1 << 30, 5 << 30) == 5 << 30


def test_a_bomb_stops_while_decompressing(blobs: BlobStore, root: Path) -> None:
    """A bare xz of zeros stops at the bound, naming it, however large it would grow."""
    data = compress(bytes(8 << 20), "xz")
    budget = Budget(limit(len(data), 1 << 40), len(data), "archive z.xz")
    with pytest.raises(IntegrityError, match="unpacks to more than"), \
            decompress(io.BytesIO(data), "xz", budget) as stream:
        blobs.staging.stage_stream(stream)
    _no_staging_left(root)


def test_later_members_win_and_links_become_their_files(blobs: BlobStore) -> None:
    """A repeated path takes the last member; links name the same staged file; empty folders
    are kept and folders with content are implied."""
    done = _extract(blobs, tar_members(
        (member("a.txt"), b"first"), (member("a.txt"), b"second"),
        member("empty", tarfile.DIRTYPE), member("full", tarfile.DIRTYPE),
        (member("full/x"), b"x"),
        member("full/hard", tarfile.LNKTYPE, linkname="a.txt"),
        member("./lead", tarfile.DIRTYPE),
    ), "tar.gz")
    assert done.empty_folders() == ["empty", "lead"]
    assert _contents(blobs, done) == {"a.txt": b"second", "full/x": b"x", "full/hard": b"second"}


@pytest.mark.parametrize(("members", "message"), [
    ([member("loop-a", tarfile.SYMTYPE, linkname="loop-b"),
      member("loop-b", tarfile.SYMTYPE, linkname="loop-a")], "in a loop"),
    ([member("dir", tarfile.DIRTYPE), member("to-dir", tarfile.SYMTYPE, linkname="dir")],
     "no file of the archive"),
    ([member("dangling", tarfile.SYMTYPE, linkname="missing")], "no file of the archive"),
    ([member("early", tarfile.LNKTYPE, linkname="later"), (member("later"), b"x")],
     "no file before it"),
    ([member("sub/up", tarfile.SYMTYPE, linkname="../../etc/passwd")], "outside the tree"),
    ([member("x" * 10, tarfile.REGTYPE, size=1 << 40)], "unpacks to more than"),
])  # fmt: skip
def test_refused_members(blobs: BlobStore, root: Path, members: list[object],
                         message: str) -> None:
    data = tar_members(*members, kind="tar")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=message):
        _extract(blobs, data, "tar", bound=limit(len(data), 1 << 40))
    _no_staging_left(root)


def test_a_huge_extended_header_is_refused_before_it_is_read(blobs: BlobStore,
                                                             root: Path) -> None:
    """A pax header declaring more than MAX_HEADER bytes is refused, not read into memory."""
    header = member("././@PaxHeader", tarfile.XHDTYPE, size=MAX_HEADER + 1)
    data = gzip.compress(header.tobuf(tarfile.USTAR_FORMAT) + bytes(2048), mtime=0)
    with pytest.raises(IntegrityError, match="metadata"):
        _extract(blobs, data, "tar.gz")
    _no_staging_left(root)


def test_many_empty_members_count_against_the_bound(blobs: BlobStore, root: Path) -> None:
    """Each member costs MEMBER_COST: a flood of empty files is a bomb too."""
    count = SIZE_FLOOR // MEMBER_COST + 10
    data = zip_raw([(f"e{n}", b"", 0o100644) for n in range(count)])
    with pytest.raises(IntegrityError, match="unpacks to more than"):
        _extract(blobs, data, "zip", bound=SIZE_FLOOR)
    _no_staging_left(root)


def test_an_encrypted_zip_member_is_a_usage_error(blobs: BlobStore, root: Path) -> None:
    data = bytearray(zip_of({"secret": (b"s", False)}))
    for offset in (6, data.rindex(b"PK\x01\x02") + 8):  # the local and central flag bits
        data[offset] |= 1
    with pytest.raises(UsageError, match="encrypted"):
        _extract(blobs, bytes(data), "zip")
    _no_staging_left(root)
