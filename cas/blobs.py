"""Blob files: the folder layout, staging with hashing, and publishing.

The write protocol, written once: stage into a private file under ``tmp/`` while hashing, fsync
it, then rename it to ``blobs/ab/<digest>`` (read-only) and fsync the folder. Nothing partial or
unverified ever has a name under ``blobs/`` (guarantee 1). This module knows nothing of the
catalog; the store decides when to publish and when to unlink (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from .errors import StoreError

#: Bytes read and hashed at a time while staging: bounded memory, large enough for speed.
CHUNK_SIZE = 1 << 20
#: Staging files untouched this long belong to no live writer: cleanup removes them.
STAGING_MAX_AGE = 24 * 3600.0
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (reflink) on btrfs, XFS, ...


def hasher() -> blake3.blake3:
    """A new BLAKE3-256 hasher: the one hash function of the store."""
    return blake3.blake3()


@dataclass
class Staged:
    """A complete, hashed, fsynced file under ``tmp/`` waiting to be published."""

    path: Path
    digest: str
    size: int

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class BlobStore:
    """The files of one store: ``blobs/`` for content, ``tmp/`` for staging and locks."""

    def __init__(self, root: Path, *, dir_mode: int = 0o700) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self.locks_dir = self.tmp_dir / "locks"
        self.dir_mode = dir_mode
        for folder in (self.root, self.blobs_dir, self.tmp_dir, self.locks_dir):
            self._make_dir(folder)

    def _make_dir(self, folder: Path) -> None:
        try:
            os.mkdir(folder, self.dir_mode)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(folder, self.dir_mode, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create {folder}: {error.strerror}") from error
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
            raise StoreError(f"{folder} is {what}; cas needs a folder there")

    # -- layout --------------------------------------------------------------------------------

    def path_of(self, digest: str) -> Path:
        """Where the blob ``digest`` lives: the one owner of the ``blobs/ab/<digest>`` scheme."""
        return self.blobs_dir / digest[:2] / digest

    def stat(self, digest: str) -> os.stat_result | None:
        """The blob file's status, or None when it is missing or not a regular file."""
        try:
            info = os.lstat(self.path_of(digest))
        except FileNotFoundError:
            return None
        return info if stat.S_ISREG(info.st_mode) else None

    def has(self, digest: str, size: int) -> bool:
        """Whether a regular file of the right size stands at the blob's place."""
        info = self.stat(digest)
        return info is not None and info.st_size == size

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading without following a symlink planted in its place."""
        fd = os.open(self.path_of(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(self.path_of(digest)))
        return os.fdopen(fd, "rb")

    # -- staging -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging_file(self, prefix: str) -> Iterator[tuple[int, Path]]:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.tmp_dir)
        path = Path(name)
        try:
            yield fd, path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        finally:
            os.close(fd)

    def stage_stream(self, source: BinaryIO) -> Staged:
        """Copy ``source`` into a staging file, hashing on the way, in bounded memory."""
        with self._staging_file("put-") as (fd, path):
            digest, size = _copy_hashing(source, fd)
            os.fsync(fd)
            return Staged(path, digest, size)

    def stage_file(self, source: Path) -> Staged:
        """Copy a local file into staging with the fastest safe copy the filesystem offers.

        A reflink (FICLONE) shares extents copy-on-write, so later changes to the source cannot
        reach the staged copy, which is then hashed; elsewhere (ext4, tmpfs) the bytes are
        copied and hashed in one pass.
        """
        with open(source, "rb", buffering=0) as src, self._staging_file("put-") as (fd, path):
            try:
                fcntl.ioctl(fd, _FICLONE, src.fileno())
            except OSError:
                digest, size = _copy_hashing(src, fd)
            else:
                size = os.fstat(fd).st_size
                hashing = hasher()
                if size:
                    hashing.update_mmap(path)
                digest = hashing.hexdigest()
            os.fsync(fd)
            return Staged(path, digest, size)

    def stage_bytes(self, data: bytes | bytearray | memoryview, digest: str) -> Staged:
        """Write ``data``, whose digest the caller computed, into a staging file."""
        with self._staging_file("put-") as (fd, path):
            _write_all(fd, data)
            os.fsync(fd)
            return Staged(path, digest, len(data))

    # -- publishing and removal ----------------------------------------------------------------

    def publish(self, staged: Staged) -> None:
        """Move a staged file to its blob path, read-only, replacing any damaged file there."""
        target = self.path_of(staged.digest)
        self._make_dir(target.parent)
        os.chmod(staged.path, 0o444)
        os.rename(staged.path, target)
        _fsync_dir(target.parent)

    def debris(self, older_than: float = STAGING_MAX_AGE) -> list[os.DirEntry[str]]:
        """Entries of ``tmp/`` (not its ``locks/``) untouched for ``older_than`` seconds."""
        cutoff = time.time() - older_than
        old = []
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                if entry.name == "locks":
                    continue
                with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        old.append(entry)
        return old

    def clear_debris(self, older_than: float = STAGING_MAX_AGE) -> int:
        """Remove staging files left by killed processes; return how many went."""
        removed = 0
        for entry in self.debris(older_than):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
        return removed

    def unlink(self, digest: str) -> None:
        """Remove a blob's file, if present."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(digest))


def _copy_hashing(source: BinaryIO, fd: int) -> tuple[str, int]:
    """Copy ``source`` to ``fd`` in chunks, returning the BLAKE3 digest and the size."""
    digest = hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    readinto = getattr(source, "readinto", None)
    while True:
        chunk: bytes | memoryview
        if readinto is not None:
            count = readinto(buffer)
            chunk = view[:count] if count else b""
        else:
            chunk = source.read(CHUNK_SIZE)
        if chunk is None:
            raise BlockingIOError(errno.EAGAIN, "a non-blocking source returned no data")
        if isinstance(chunk, str):
            raise TypeError("the source is a text stream; open it in binary mode")
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        _write_all(fd, chunk)
        size += len(chunk)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
