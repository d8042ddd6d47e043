"""Archives: what kind a file is, its bounds, and reading a compressed stream safely.

Mechanism only (cas/ops/unpack.py decides when): ``decide`` names the kind of a stored archive
(by magic bytes, and the URL's suffix for ``auto``); ``decompress`` opens a bare gz, bz2, xz or
zst stream for staging as one file; storage/extract.py writes a zip or tar archive's members
under a fresh folder of ``tmp/``. Bombs stop with an IntegrityError once the bytes written (each
member counted as at least ``MEMBER_COST``) pass ``limit``: ``MAX_RATIO`` times the archive's
size, at least ``SIZE_FLOOR``, at most the store's ``max_cache_size``. A damaged or truncated
archive, or one that is not the kind asked for, is an IntegrityError too.

tarfile, zipfile and the decompressors are imported when an archive is opened: a store that
never unpacks never loads them. zst needs the ``zstandard`` package (the ``archives`` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from cas.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    pass

#: The kinds ``unpack`` takes besides "auto": archives unpacked into a tree, then bare
#: compressed streams unpacked into one file.
TREE_KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst")
FILE_KINDS = ("gz", "bz2", "xz", "zst")
KINDS = ("auto", *TREE_KINDS, *FILE_KINDS)

#: Unpacked bytes allowed per byte of archive: deflate tops out near 1032:1 on zeros, so a
#: deeper ratio is a bomb (overlapping zip entries, bz2/xz/zst of zeros).
MAX_RATIO = 1000
#: Any archive may unpack to this much, whatever its ratio.
SIZE_FLOOR = 1 << 20
#: Each member counts at least this much (an inode, a directory entry): a bomb of empty files.
MEMBER_COST = 512
#: Members of one archive, at most.
MAX_MEMBERS = 1_000_000
#: A tar's extended or long-name header larger than this is refused before it is read into
#: memory (tarfile reads such headers whole).
MAX_HEADER = 1 << 20
_CHUNK = 1 << 20
_EXTRA = "cas-fixtures[archives]"

_MAGIC = {
    "gz": b"\x1f\x8b",
    "bz2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zst": b"\x28\xb5\x2f\xfd",
}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
#: URL suffixes, longest first, and the kind each names.
_SUFFIXES = (
    (".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar.bz2", "tar.bz2"), (".tbz2", "tar.bz2"),
    (".tbz", "tar.bz2"), (".tar.xz", "tar.xz"), (".txz", "tar.xz"), (".tar.zst", "tar.zst"),
    (".tzst", "tar.zst"), (".tar", "tar"), (".zip", "zip"), (".gz", "gz"), (".bz2", "bz2"),
    (".xz", "xz"), (".zst", "zst"),
)


def check_kind(unpack: object) -> str:
    """``unpack`` if it is a kind cas unpacks, else a one-line UsageError listing them."""
    if not isinstance(unpack, str) or unpack.lower() not in KINDS:
        raise UsageError(f"unpack {unpack!r} is not one of {', '.join(KINDS)}")
    return unpack.lower()


def limit(archive_size: int, ceiling: int) -> int:
    """The bytes an archive of ``archive_size`` bytes may unpack to: ``MAX_RATIO`` times its
    size, at least ``SIZE_FLOOR``, at most ``ceiling`` (the store's size)."""
    return min(max(SIZE_FLOOR, archive_size * MAX_RATIO), ceiling)


def suffix_kind(url: str | None) -> str | None:
    """The kind the URL's path names by its suffix (``.tar.gz``, ``.tgz``, ``.zip``...)."""
    if not url:
        return None
    from urllib.parse import urlsplit

    path = urlsplit(url).path.lower()
    return next((kind for suffix, kind in _SUFFIXES if path.endswith(suffix)), None)


def decide(kind: str, file: BinaryIO, url: str | None, label: str) -> str:
    """The kind to unpack the archive open as ``file`` (at its start, left there) as:
    ``kind`` itself once its magic bytes are checked, or for "auto" the kind its magic bytes
    and ``url``'s suffix say.

    Raises IntegrityError when the content is not the kind asked for, UsageError when "auto"
    cannot tell (``label`` names the archive in messages).
    """
    head = file.read(512 + 8)
    file.seek(0)
    compression = next((name for name, magic in _MAGIC.items() if head.startswith(magic)), None)
    is_zip = head.startswith(_ZIP_MAGIC)
    if kind == "auto":
        found = _auto(compression, is_zip, _is_tar(head), suffix_kind(url), file, label)
        file.seek(0)
        return found
    wanted = kind.removeprefix("tar.") if kind.startswith("tar.") else kind
    if kind == "zip":
        found_ok = is_zip
    elif kind == "tar":
        found_ok = compression is None and not is_zip
    else:
        found_ok = compression == wanted
    if not found_ok:
        seen = "a zip archive" if is_zip else (f"{compression} data" if compression
                                                else "uncompressed data")
        raise IntegrityError(f"{label} is {seen}, not the {kind} asked to unpack")
    return kind


def _auto(compression: str | None, is_zip: bool, is_tar: bool, by_suffix: str | None,
          file: BinaryIO, label: str) -> str:  # fmt: skip
    if is_zip:
        return "zip"
    if compression is None:
        if is_tar or by_suffix == "tar":
            return "tar"
        raise UsageError(f"cannot tell what kind of archive {label} is; give unpack as one of"
                         f" {', '.join(KINDS[1:])}")
    if by_suffix in (f"tar.{compression}", compression):
        return by_suffix
    file.seek(0)
    try:  # no suffix to go by: a tar inside is a tar
        with decompressor(compression, file) as stream:
            inner = stream.read(512)
    except Exception:  # damaged: the unpacking itself will say so
        inner = b""
    return f"tar.{compression}" if _is_tar(inner) else compression


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


# -- reading ------------------------------------------------------------------------------------


#: What a damaged or truncated stream raises, by module (checked by name: the modules load late).
def decode_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import tarfile
    import zipfile
    import zlib

    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError,
                                         tarfile.TarError, zipfile.BadZipFile]  # fmt: skip
    with contextlib.suppress(ImportError):
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


@contextlib.contextmanager
def decompressor(compression: str, file: BinaryIO) -> Iterator[IO[bytes]]:
    """A reader of ``file`` decompressed by ``compression`` (gz, bz2, xz, zst)."""
    if compression == "gz":
        import gzip

        with gzip.GzipFile(fileobj=file, mode="rb") as stream:
            yield stream  # type: ignore[misc]
    elif compression == "bz2":
        import bz2

        with bz2.BZ2File(file, "rb") as stream:
            yield stream
    elif compression == "xz":
        import lzma

        with lzma.LZMAFile(file, "rb") as stream:
            yield stream
    else:
        try:
            import zstandard
        except ImportError:
            raise UsageError(f"unpacking zst needs the zstandard package: pip install"
                             f" '{_EXTRA}'") from None
        with zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True,
                                                        closefd=False) as stream:
            yield stream


@dataclass
class Budget:
    """The bytes an unpacking may still write; IntegrityError once they run out."""

    limit: int
    archive_size: int
    label: str
    used: int = 0
    #: Called as bytes are charged: shows waiters of the same unpacking that it advances.
    beat: Callable[[], None] | None = None

    def charge(self, amount: int, member: str | None = None) -> None:
        self.used += amount
        if self.beat is not None:
            self.beat()
        if self.used > self.limit:
            what = f"{self.label}" + (f" (member {member!r})" if member else "")
            raise IntegrityError(
                f"{what} unpacks to more than {self.limit} bytes, the bound for an archive of"
                f" {self.archive_size} bytes ({MAX_RATIO}:1, at least {SIZE_FLOOR},"
                " at most max_cache_size): refused as a decompression bomb",
                expected=self.limit, found=self.used,
            )  # fmt: skip


class Guarded:
    """A decompressed stream whose decoding errors are IntegrityErrors and whose bytes are
    charged to a budget (when one is given)."""

    def __init__(self, stream: IO[bytes], label: str, budget: Budget | None,
                 errors: tuple[type[BaseException], ...], member: str | None = None,
                 ) -> None:  # fmt: skip
        self._stream = stream
        self._label = label
        self._budget = budget
        self._errors = errors
        self._member = member

    def _damaged(self, error: BaseException) -> IntegrityError:
        return IntegrityError(f"{self._label} is damaged or truncated: {error or type(error)}")

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(_CHUNK if size is None or size < 0 else size)
        except self._errors as error:
            raise self._damaged(error) from error
        except OSError as error:  # bz2 and gzip say "invalid data" as an OSError
            raise self._damaged(error) from error
        if self._budget is not None:
            self._budget.charge(len(data), self._member)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


@contextlib.contextmanager
def decompress(file: BinaryIO, compression: str, budget: Budget) -> Iterator[BinaryIO]:
    """The decompressed content of the bare gz, bz2, xz or zst file open as ``file``, as a
    reader whose bytes are charged to ``budget`` and whose decoding errors are
    IntegrityErrors."""
    errors = decode_errors()
    try:
        with decompressor(compression, file) as stream:
            yield Guarded(stream, budget.label, budget, errors)  # type: ignore[misc]
    except errors as error:  # raised while opening or closing the stream
        raise IntegrityError(f"{budget.label} is damaged or truncated: {error}") from error
