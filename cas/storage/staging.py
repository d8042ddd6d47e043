"""Staging: complete, hashed files under ``tmp/`` waiting to be published, and debris.

The first half of the write protocol: content is written into a private file under ``tmp/``
while it is hashed, made read-only and fsynced (or synced with a whole batch); ``BlobStore.publish``
then renames it into ``blobs/``. Nothing partial or unverified ever has a name under ``blobs/``
(guarantee 1).

Debris is what stays in ``tmp/`` when a writer is killed. This module owns the one rule of what
is debris (``is_debris``): gc and verify remove exactly what it names, and stats counts it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cas.errors import StoreError
from cas.storage import hashing
from cas.storage.folder import Folder, remove_tree
from cas.storage.layout import LOCKS, Layout, put_name
from cas.storage.processes import staging_tag, written_by_dead_process

#: The mode of every blob file: read-only for everyone (the folders decide who may enter).
#: Staging files get it when they are made; their own descriptor still writes.
BLOB_MODE = 0o444
#: Entries of ``tmp/`` untouched this long belong to no live writer: no write keeps a file
#: that long. Younger ones are debris only when their writer is provably gone.
DEBRIS_AGE = 24 * 3600.0
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Staged:
    """A complete, hashed, read-only file under ``tmp/`` waiting to be published (fsynced,
    unless its writer syncs a whole batch at once: ``Staging.batch_sync``)."""

    path: str  # not a Path, whose building costs microseconds on every put
    digest: str
    size: int
    published: bool = False
    #: The descriptor of the folder it was made in: renamed and unlinked relative to it, so a
    #: ``tmp/`` swapped meanwhile is never followed. None: by ``path``.
    dir_fd: int | None = None
    #: The Folder that opened ``dir_fd``, which keeps it open as long as this lives.
    folder: Folder | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The file's name in its folder."""
        return self.path.rpartition(os.sep)[2]

    def discard(self) -> None:
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                if self.dir_fd is None:
                    os.unlink(self.path)
                else:
                    os.unlink(self.name, dir_fd=self.dir_fd)


class Staging:
    """The staging files of one store, made in ``tmp/`` relative to its checked descriptor."""

    def __init__(self, layout: Layout, tmp: Folder, locks: Folder, *, durable: bool = True,
                 read_only: str | None = None) -> None:
        self.layout = layout
        self.tmp = tmp
        self.locks = locks
        self.durable = durable
        self.read_only = read_only  #: why the store is read-only, or None: staging refuses
        self._tmp_prefix = f"{layout.tmp}{os.sep}"

    @contextlib.contextmanager
    def _staging_file(self) -> Iterator[tuple[int, Staged]]:
        """A new staging file in ``tmp/`` (made relative to its checked descriptor): its
        descriptor, and the Staged that the caller completes with the digest and size."""
        if self.read_only:
            raise StoreError(f"store root {self.layout.root} is not writable ({self.read_only})")
        # Named by its writer, so that cleanup can remove a killed writer's file at once; 64
        # random bits make the name unique (O_EXCL would refuse a collision).
        name = put_name(staging_tag(), os.urandom(8).hex())
        tmp = self.tmp.fd()
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=tmp)
        try:
            os.fchmod(fd, BLOB_MODE)  # exactly, whatever the umask; fd itself still writes
            yield fd, Staged(f"{self._tmp_prefix}{name}", "", 0, dir_fd=tmp, folder=self.tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=tmp)
            raise
        finally:
            os.close(fd)

    def stage_stream(self, source: BinaryIO, *, sync: bool = True) -> Staged:
        """Copy ``source`` into a staging file, hashing on the way, in bounded memory.

        ``sync=False`` leaves the fsync to the caller (``batch_sync``), as for every
        ``stage_*`` method.
        """
        with self._staging_file() as (fd, staged):
            staged.digest, staged.size = hashing.copy_hashing(
                source, fd, write_behind=self.durable and sync)
            self._sync(fd, sync)
            return staged

    def stage_file(self, source: Path, *, sync: bool = True) -> Staged:
        """Copy a local file into staging with the fastest safe copy the filesystem offers
        (``hashing.clone_hashing``)."""
        with open(source, "rb", buffering=0) as src, self._staging_file() as (fd, staged):
            staged.digest, staged.size = hashing.clone_hashing(src, fd)
            self._sync(fd, sync)
            return staged

    def stage_written(self, fill: Callable[[int, bool], tuple[str, int]], *,
                      sync: bool = True) -> Staged:
        """A staging file that ``fill(fd, write_behind)`` writes (in any order: ranges in
        parallel) and hashes from its bytes, returning the digest and size; synced as every
        ``stage_*`` file. ``write_behind`` says that the file will be fsynced, so ``fill``
        should start the writeback of what it finished (``hashing.start_writeback``)."""
        with self._staging_file() as (fd, staged):
            staged.digest, staged.size = fill(fd, self.durable and sync)
            self._sync(fd, sync)
            return staged

    def stage_bytes(self, data: bytes | bytearray | memoryview, digest: str, *,
                    sync: bool = True) -> Staged:
        """Write ``data``, whose digest the caller computed, into a staging file."""
        with self._staging_file() as (fd, staged):
            hashing.write_all(fd, data)
            self._sync(fd, sync)
            staged.digest, staged.size = digest, len(data)
            return staged

    def _sync(self, fd: int, sync: bool) -> None:
        if self.durable and sync:
            os.fsync(fd)

    @contextlib.contextmanager
    def batch_sync(self) -> Iterator[Callable[[], None]]:
        """For writes made durable together: a function that flushes the store's filesystem.

        One syncfs(2) makes a whole batch of staged files durable for about the cost of one
        fsync; an fsync of each costs a journal commit apiece (200 µs each here, against 7 µs
        per file for a batch of 1,000). The descriptor is opened before the batch's first write,
        because syncfs reports the write errors met since then (Linux 5.8 and later). It also
        waits for other writers' data on the same filesystem, so nothing calls it under the
        catalog's write lock. A no-op when the store is not durable.
        """
        if not self.durable:
            yield lambda: None
            return
        fd = os.dup(self.tmp.fd())
        try:
            yield functools.partial(hashing.syncfs, fd)
        finally:
            os.close(fd)

    # -- debris --------------------------------------------------------------------------------

    def debris(self, older_than: float = DEBRIS_AGE) -> list[os.DirEntry[str]]:
        """The entries of ``tmp/`` and ``tmp/locks/`` that ``is_debris``; StoreError for a
        symlink in place of ``tmp/``: nothing is listed through it."""
        self.tmp.fd()
        return find_debris(self.layout.tmp, self.layout.locks, time.time() - older_than)

    def clear_debris(self, older_than: float = DEBRIS_AGE) -> int:
        """Remove staging files left by killed processes; return how many went."""
        return sum(self.remove_debris(entry) for entry in self.debris(older_than))

    def remove_debris(self, entry: os.DirEntry[str]) -> bool:
        """Remove one entry of ``debris`` (a symlink itself, never its target), relative to its
        folder's checked descriptor; whether it went."""
        in_locks = os.path.dirname(entry.path) == os.fspath(self.layout.locks)
        folder = (self.locks if in_locks else self.tmp).fd()
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            if entry.is_dir(follow_symlinks=False):
                # a view's build (its folders may be 0555 already), or another folder
                remove_tree(entry.name, folder)
            else:
                os.unlink(entry.name, dir_fd=folder)
            return True
        return False


def is_debris(name: str, info: os.stat_result, cutoff: float, *, in_locks: bool = False) -> bool:
    """The one rule of debris: whether the entry ``name`` of ``tmp/`` (or of its ``locks/``),
    whose lstat is ``info``, is one no live writer will use.

    In ``tmp/``: untouched since ``cutoff`` (``DEBRIS_AGE`` ago unless told otherwise), staged
    or partly downloaded by a process that is provably gone (killed; storage/processes.py), or
    a symlink (cas makes none). In ``locks/``: a symlink only; lock files are reused.
    """
    if stat.S_ISLNK(info.st_mode):
        return True
    return not in_locks and (info.st_mtime < cutoff or written_by_dead_process(name))


def find_debris(tmp: Path, locks: Path, cutoff: float) -> list[os.DirEntry[str]]:
    """The entries of the folders ``tmp`` and ``locks`` that ``is_debris``."""
    found = []
    for folder, in_locks in ((tmp, False), (locks, True)):
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in entries:
                if not in_locks and entry.name == LOCKS:
                    continue
                with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                    if is_debris(entry.name, entry.stat(follow_symlinks=False), cutoff,
                                 in_locks=in_locks):
                        found.append(entry)
    return found


def staging_debris(tmp: Path, locks: Path, now: float | None = None,
                   age: float = DEBRIS_AGE) -> tuple[int, int]:
    """Count and bytes of the debris of ``tmp`` (and ``locks``): what the next gc removes.
    Symlinks are counted, never followed (guarantee 7)."""
    cutoff = (time.time() if now is None else now) - age
    files = size = 0
    for entry in find_debris(tmp, locks, cutoff):
        with contextlib.suppress(FileNotFoundError):
            info = entry.stat(follow_symlinks=False)
            files += 1
            size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return files, size


def staging_usage(tmp: Path, skip: Path) -> tuple[int, int]:
    """Count and bytes of every file under ``tmp`` (but not ``skip``): the disk that partial
    downloads and puts in progress use beside the blobs. A parallel download's partial has its
    final size from the start but holds only its ranges written: it counts for its blocks."""
    files = size = 0
    for info in _staged(tmp, skip):
        files += 1
        size += disk_bytes(info)
    return files, size


def disk_bytes(info: os.stat_result) -> int:
    """The bytes a staged file takes on disk: its size, or less for a sparse file (a parallel
    download's partial, given its final size at once, holds only the ranges written)."""
    return min(info.st_size, info.st_blocks * 512) if stat.S_ISREG(info.st_mode) else 0


def _staged(tmp: Path, skip: Path) -> Iterator[os.stat_result]:
    """The lstat of each file under ``tmp``, not under ``skip``; symlinks never followed."""
    for folder, subfolders, names in os.walk(tmp):
        subfolders[:] = [sub for sub in subfolders if Path(folder, sub) != skip]
        for name in names:
            try:
                yield os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue  # a writer finished meanwhile
