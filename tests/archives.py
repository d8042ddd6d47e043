"""Archives made in memory for the tests: good ones from a dict of files, and one hostile
archive per attack on extraction (``HOSTILE``)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

#: A file of a tree: its bytes and whether it is executable.
Files = dict[str, tuple[bytes, bool]]

#: The name every hostile member tries to write outside the tree; tests look for it anywhere.
ESCAPED = "cas-escaped-marker"


def compress(data: bytes, kind: str) -> bytes:
    """``data`` compressed as a bare gz, bz2, xz or zst (or a tar's suffix: tar.gz...)."""
    kind = kind.removeprefix("tar").lstrip(".")
    if kind == "gz":
        return gzip.compress(data, 6, mtime=0)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "zst":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    assert kind == "", kind
    return data


def tar(files: Files, kind: str = "tar.gz") -> bytes:
    """A tar of ``files`` (folders made implicitly), compressed as ``kind``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, (data, executable) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if executable else 0o644
            archive.addfile(info, io.BytesIO(data))
    return compress(buffer.getvalue(), kind)


def zip_of(files: Files, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``files``, executable bits in the Unix mode of each entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for path, (data, executable) in sorted(files.items()):
            info = zipfile.ZipInfo(path)
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_members(*members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes],
                kind: str = "tar.gz") -> bytes:  # fmt: skip
    """A tar of these raw members (a TarInfo, or one with its content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for member in members:
            info, data = member if isinstance(member, tuple) else (member, b"")
            info.size = len(data) if isinstance(member, tuple) else info.size
            archive.addfile(info, io.BytesIO(data) if data else None)
    return compress(buffer.getvalue(), kind)


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def zip_raw(entries: list[tuple[str, bytes, int]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip whose entries are (name, data, Unix mode) exactly as given, unchecked."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # bypass ZipInfo's own clean-up of the name
            info.external_attr = mode << 16
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def huge_declared_size() -> bytes:
    """A tar whose one member declares 8 GiB - 1 bytes and holds a few."""
    header = member("huge.bin", size=0o77777777777).tobuf(tarfile.USTAR_FORMAT)
    return gzip.compress(header + b"x" * 1024, mtime=0)


def gz_bomb() -> bytes:
    """64 MiB of zeros as gz: about 1030:1, past the 1000:1 bound and the 1 MiB floor."""
    return gzip.compress(bytes(64 << 20), 9, mtime=0)


def zip_bomb() -> bytes:
    """A zip of ten members of 64 MiB of zeros each, bzip2-compressed (tens of bytes each)."""
    return zip_raw([(f"zeros-{n}.bin", bytes(64 << 20), 0o100644) for n in range(10)],
                   zipfile.ZIP_BZIP2)  # fmt: skip


def truncated() -> bytes:
    whole = tar({f"file-{n}.bin": (bytes(range(256)) * 400, False) for n in range(4)})
    return whole[: len(whole) // 2]


@dataclass(frozen=True)
class Hostile:
    """One attack: the archive's URL path (its suffix matters to auto), its bytes, the unpack
    asked for, and the error expected (IntegrityError, or UsageError for what cas cannot
    decide)."""

    path: str
    build: Callable[[], bytes]
    unpack: str
    error: str = "IntegrityError"


def _escapes(outside: str) -> dict[str, Hostile]:
    """The attacks; ``outside`` is an absolute folder outside the store that none may reach."""
    target = f"{outside}/{ESCAPED}"
    up = "../" * 12 + ESCAPED
    return {
        "absolute-path": Hostile("/abs.tar.gz", lambda: tar_members(
            (member(target), b"pwned")), "tar.gz"),
        "dotdot-member": Hostile("/dotdot.tar", lambda: tar_members(
            (member(up), b"pwned"), kind="tar"), "tar"),
        "symlink-out": Hostile("/symlink.tar.gz", lambda: tar_members(
            member("link", tarfile.SYMTYPE, linkname=outside),
            (member(f"link/{ESCAPED}"), b"pwned")), "auto"),
        "symlink-out-relative": Hostile("/symlink-rel.tar.gz", lambda: tar_members(
            member("link", tarfile.SYMTYPE, linkname="../" * 12),
            (member(f"link/{ESCAPED}"), b"pwned")), "tar.gz"),
        "hardlink-out": Hostile("/hardlink.tar.xz", lambda: tar_members(
            member(ESCAPED, tarfile.LNKTYPE, linkname=target), kind="tar.xz"), "tar.xz"),
        "device-node": Hostile("/device.tar.bz2", lambda: tar_members(
            member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), kind="tar.bz2"), "auto"),
        "fifo": Hostile("/fifo.tar.gz", lambda: tar_members(
            member("pipe", tarfile.FIFOTYPE)), "tar.gz"),
        "zip-slip": Hostile("/slip.zip", lambda: zip_raw(
            [("fine.txt", b"ok", 0o100644), (up, b"pwned", 0o100644)]), "zip"),
        "zip-absolute": Hostile("/abs.zip", lambda: zip_raw(
            [(target, b"pwned", 0o100644)]), "auto"),
        "zip-backslash-slip": Hostile("/backslash.zip", lambda: zip_raw(
            [(up.replace("/", "\\"), b"pwned", 0o100644)]), "zip"),
        "zip-symlink-out": Hostile("/zlink.zip", lambda: zip_raw(
            [("link", outside.encode(), 0o120777), (f"link/{ESCAPED}", b"x", 0o100644)]),
            "zip"),
        "gz-bomb": Hostile("/bomb.gz", gz_bomb, "gz"),
        "zip-bomb": Hostile("/bomb.zip", zip_bomb, "zip"),
        "tar-huge-declared-size": Hostile("/huge.tar.gz", huge_declared_size, "tar.gz"),
        "truncated": Hostile("/cut.tar.gz", truncated, "tar.gz"),
        "wrong-magic-zip": Hostile("/notzip.zip", lambda: tar({"a": (b"a", False)}), "zip"),
        "wrong-magic-gz": Hostile("/notgz.gz", lambda: zip_of({"a": (b"a", False)}), "gz"),
        "auto-cannot-tell": Hostile("/blob", lambda: b"plain text, no archive" * 40, "auto",
                                    "UsageError"),
    }


def hostile(outside: str) -> dict[str, Hostile]:
    return _escapes(outside)


ATTACKS = sorted(_escapes("/nowhere"))
