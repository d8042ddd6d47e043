"""Blob files: the folder layout, staging with hashing, and publishing.

The write protocol, written once: stage into a private file under ``tmp/`` while hashing, fsync
it, then rename it to ``blobs/ab/<digest>`` (read-only) and fsync the folder. Nothing partial or
unverified ever has a name under ``blobs/`` (guarantee 1). This module knows nothing of the
catalog; the store decides when to publish and when to unlink (docs/architecture.md).

Every file operation is made relative to a folder descriptor opened without following links
(``Folder``), never through a path a planted symlink could redirect (guarantee 7).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import re
import secrets
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import blake3

from cas.errors import StoreError
from cas.storage.processes import staging_tag, written_by_dead_process

#: Bytes read and hashed at a time while staging: bounded memory, large enough for speed.
CHUNK_SIZE = 1 << 20
#: Staging files untouched this long belong to no live writer: cleanup removes them.
STAGING_MAX_AGE = 24 * 3600.0
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (reflink) on btrfs, XFS, ...
#: Files at least this large are hashed through a memory map (no copy through user space) when
#: /proc is missing (see ``hash_fd``), and from ``PARALLEL_HASH_SIZE`` on with every core.
MMAP_MIN_SIZE = 64 * 1024
PARALLEL_HASH_SIZE = 64 << 20
_SHARD = re.compile(r"[0-9a-f]{2}")
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD = os.path.isdir("/proc/self/fd")


def hasher(*, parallel: bool = False) -> blake3.blake3:
    """A new BLAKE3-256 hasher: the one hash function of the store (on every core if
    ``parallel``: worth it for inputs of many MiB)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO if parallel else 1)


@dataclass
class Staged:
    """A complete, hashed, read-only file under ``tmp/`` waiting to be published (fsynced,
    unless its writer syncs a whole batch at once: ``BlobStore.batch_sync``)."""

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


#: How old a read's check of a folder may be, in seconds. Writes re-check a folder at every use;
#: a look-up trusting a check this recent saves a lstat, 15 % of its cost (benchmarks/suite_small).
READ_RECHECK = 1.0


class Folder:
    """One of the root's folders, held open by a descriptor opened without following links.

    Files are created, renamed and unlinked relative to the descriptor (``dir_fd=``), so a folder
    swapped for a symlink between a check and a use cannot redirect a write (guarantee 7). Before
    a use the descriptor is checked against the name (one lstat: the same device and inode); a
    folder replaced since is opened again through its parent's descriptor: refused with
    StoreError when a symlink or a file stands there, made again (``mode``) when it is missing.
    The folder of the root itself is opened by its path, whose own parents are the user's.

    A replaced descriptor stays open until the folder object goes, since another thread may be
    using it at that instant; replacements happen only when a folder is swapped from outside.
    """

    def __init__(self, path: Path, parent: Folder | None = None, *, mode: int | None = 0o700,
                 durable: bool = True) -> None:
        self.path = path
        self.parent = parent
        self.mode = mode  #: the mode of a folder made again; None: never made (read-only)
        self.durable = durable
        self._name = os.fspath(path) if parent is None else path.name
        self._path = os.fspath(path)
        self._held: tuple[int, int, int] | None = None  # descriptor, device, inode
        self._checked = 0.0  # time.monotonic() of the last check that the name still holds it
        self._opened: list[int] = []  # every descriptor opened, closed when the object goes
        weakref.finalize(self, _close_all, self._opened)

    def fd(self, *, max_age: float = 0.0) -> int:
        """The folder's descriptor, checked against its name unless a check is younger than
        ``max_age`` seconds (reads). Raises StoreError for a symlink or a file in its place,
        FileNotFoundError when it is missing and may not be made."""
        held = self._held
        if held is not None:
            now = time.monotonic()
            if max_age and now - self._checked < max_age:
                return held[0]
            try:
                info = os.lstat(self._path)
            except FileNotFoundError:
                info = None
            if info is not None and info.st_ino == held[2] and info.st_dev == held[1]:
                self._checked = now
                return held[0]
        return self._open()

    def _open(self) -> int:
        # No lock: two threads opening at once each keep a descriptor of the same folder, and
        # a lock held by another thread at a fork would never be released in the child.
        parent = self.parent.fd() if self.parent is not None else None
        try:
            fd = os.open(self._name, _NOFOLLOW_DIR, dir_fd=parent)
        except FileNotFoundError:
            if self.mode is None:
                raise
            made = self._make(parent)
            fd = os.open(self._name, _NOFOLLOW_DIR, dir_fd=parent)
            self._opened.append(fd)
            if made:
                self._settle(fd, parent)
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise StoreError(self._refusal()) from error
        else:
            self._opened.append(fd)
        info = os.fstat(fd)
        self._held = (fd, info.st_dev, info.st_ino)
        self._checked = time.monotonic()
        return fd

    def _make(self, parent: int | None) -> bool:
        """Make the missing folder; whether this call made it."""
        assert self.mode is not None
        try:
            if parent is None:
                os.makedirs(self._name, self.mode)
            else:
                os.mkdir(self._name, self.mode, dir_fd=parent)
        except FileExistsError:
            return False  # made by another process meanwhile
        except OSError as error:
            raise StoreError(f"cannot create {self.path}: {error.strerror}") from error
        return True

    def _settle(self, fd: int, parent: int | None) -> None:
        # mkdir's mode is cut by the umask: set it exactly (0700, or 02770 when shared); and
        # fsync the parent, or a power cut could lose the new folder with the blobs inside it.
        assert self.mode is not None
        os.fchmod(fd, self.mode)
        if self.durable:
            if parent is None:
                _fsync_dir(self.path.parent)
            else:
                os.fsync(parent)

    def _refusal(self) -> str:
        try:
            link = stat.S_ISLNK(os.lstat(self._path).st_mode)
        except OSError:
            link = False
        if link and self.parent is None:
            return f"store root {self.path} is a symbolic link; give the folder it points to"
        if link:
            return (f"{self.path} is a symbolic link, which cas never follows inside a store;"
                    " remove the link (cas makes the folder again)")
        return f"{self.path} is not a folder; cas needs a folder there"


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


#: The mode of every blob file: read-only for everyone (the folders decide who may enter).
BLOB_MODE = 0o444
#: Blob paths remembered for look-ups; past this many, memory restarts.
REMEMBERED_PATHS = 20_000


class BlobStore:
    """The files of one store: ``blobs/`` for content, ``tmp/`` for staging and locks.

    Every folder is reached through a ``Folder`` (a descriptor opened without following links);
    shard folders are opened relative to ``blobs/``'s descriptor when written, never cached (a
    descriptor for each of 256 shards would exhaust a small open-file limit).
    """

    def __init__(self, root: Path, *, dir_mode: int = 0o700, durable: bool = True,
                 read_only: str | None = None) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self.locks_dir = self.tmp_dir / "locks"
        self.quarantine_dir = root / "quarantine"
        self.read_only = read_only  #: why it is read-only, or None: staging refuses at once
        mode = None if read_only else dir_mode
        self.root_folder = Folder(root, mode=mode, durable=durable)
        self.blobs = Folder(self.blobs_dir, self.root_folder, mode=mode, durable=durable)
        self.tmp = Folder(self.tmp_dir, self.root_folder, mode=mode, durable=durable)
        self.locks = Folder(self.locks_dir, self.tmp, mode=mode, durable=durable)
        self.quarantine_folder = Folder(self.quarantine_dir, self.root_folder, mode=mode,
                                        durable=durable)
        self._real_shards: dict[str, float] = {}  # shard -> time.monotonic() it was checked
        self._blobs_prefix = f"{self.blobs_dir}{os.sep}"
        self._tmp_prefix = f"{self.tmp_dir}{os.sep}"
        self._shards: dict[str, Path] = {}
        self._paths: dict[str, Path] = {}  # recent path_of results: a Path costs 1.5 µs to build
        self.dir_mode = dir_mode
        self.durable = durable
        for folder in (self.root_folder, self.blobs, self.tmp, self.locks):
            with contextlib.suppress(FileNotFoundError):  # read-only: missing is nothing stored
                folder.fd()
        # The root is made only now: one moved or deleted later is an error, not a fresh root
        # beside a catalog that lives on elsewhere.
        self.root_folder.mode = None

    # -- layout --------------------------------------------------------------------------------

    def location(self, digest: str) -> str:
        """Where the blob ``digest`` lives: the one owner of the ``blobs/ab/<digest>`` scheme.

        A string, because look-ups are hot and building a Path costs more than the lstat.
        """
        return f"{self._blobs_prefix}{digest[:2]}{os.sep}{digest}"

    def path_of(self, digest: str) -> Path:
        """``location`` as a Path."""
        path = self._paths.get(digest)
        if path is None:
            shard = self._shards.get(digest[:2])
            if shard is None:
                shard = self._shards[digest[:2]] = self.blobs_dir / digest[:2]
            if len(self._paths) >= REMEMBERED_PATHS:
                self._paths.clear()
            path = self._paths[digest] = shard / digest
        return path

    def stat(self, digest: str) -> os.stat_result | None:
        """The blob file's status, or None when it is missing or not a regular file (nor in a
        real shard folder: a symlink planted as ``blobs/`` or a shard is not followed).

        Look-ups are hot: the folders' checks are trusted for ``READ_RECHECK`` seconds, and
        ``blobs/`` is checked again at once when the file is not found (made again since?).
        """
        try:
            blobs = self.blobs.fd(max_age=READ_RECHECK)
            info = self._stat_in(blobs, digest)
            if info is None and (checked := self.blobs.fd()) != blobs:
                info = self._stat_in(checked, digest)
        except (FileNotFoundError, StoreError):
            return None
        return info

    def _stat_in(self, blobs: int, digest: str) -> os.stat_result | None:
        """``stat`` relative to the descriptor ``blobs``; the shard's own check (a real folder,
        not a link) trusted for ``READ_RECHECK`` seconds."""
        shard = digest[:2]
        try:
            checked = self._real_shards.get(shard)
            now = time.monotonic()
            if checked is None or now - checked >= READ_RECHECK:
                if not stat.S_ISDIR(os.stat(shard, dir_fd=blobs, follow_symlinks=False).st_mode):
                    return None
                self._real_shards[shard] = now
            info = os.stat(f"{shard}{os.sep}{digest}", dir_fd=blobs, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info if stat.S_ISREG(info.st_mode) else None

    def has(self, digest: str, size: int) -> bool:
        """Whether a regular file of the right size stands at the blob's place."""
        info = self.stat(digest)
        return info is not None and info.st_size == size

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading without following a symlink planted in its place or in
        its shard's (OSError ELOOP), nor blocking on a planted FIFO."""
        return os.fdopen(self._open_fd(digest)[0], "rb")

    def _open_fd(self, digest: str) -> tuple[int, os.stat_result]:
        """``open`` as a file descriptor, with the file's status."""
        try:
            blobs = self.blobs.fd(max_age=READ_RECHECK)
        except StoreError as error:
            raise OSError(errno.ELOOP, str(error), str(self.blobs_dir)) from error
        shard = os.open(digest[:2], _NOFOLLOW_DIR, dir_fd=blobs)
        try:
            fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=shard)
        finally:
            os.close(shard)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(self.path_of(digest)))
        return fd, info

    def _shard(self, shard: str, *, make: bool) -> int:
        """A new descriptor of a shard folder (the caller closes it), opened relative to
        ``blobs/``'s checked descriptor without following a link; made when missing and
        ``make``. Raises StoreError for a symlink or a file in its place."""
        blobs = self.blobs.fd()
        try:
            return os.open(shard, _NOFOLLOW_DIR, dir_fd=blobs)
        except FileNotFoundError:
            if not make:
                raise
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise StoreError(Folder(self.blobs_dir / shard, self.blobs)._refusal()) from error
        # Made exactly as the other folders are (mode, fsync of blobs/), through a Folder used
        # once: its descriptor is handed over to the caller.
        folder = Folder(self.blobs_dir / shard, self.blobs, mode=self.dir_mode,
                        durable=self.durable)
        return os.dup(folder.fd())

    # -- staging -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging_file(self, prefix: str) -> Iterator[tuple[int, Staged]]:
        """A new staging file in ``tmp/`` (made relative to its checked descriptor): its
        descriptor, and the Staged that the caller completes with the digest and size."""
        if self.read_only:
            raise StoreError(f"store root {self.root} is not writable ({self.read_only})")
        # Named by its writer, so that cleanup can remove a killed writer's file at once; 64
        # random bits make the name unique (O_EXCL would refuse a collision).
        name = f"{prefix}{staging_tag()}{secrets.token_hex(8)}"
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
        with self._staging_file("put-") as (fd, staged):
            staged.digest, staged.size = _copy_hashing(source, fd,
                                                       write_behind=self.durable and sync)
            self._sync(fd, sync)
            return staged

    def stage_file(self, source: Path, *, sync: bool = True) -> Staged:
        """Copy a local file into staging with the fastest safe copy the filesystem offers.

        A reflink (FICLONE) shares extents copy-on-write, so later changes to the source cannot
        reach the staged copy, which is then hashed; elsewhere (ext4, tmpfs) the bytes are
        copied and hashed in one pass.
        """
        with open(source, "rb", buffering=0) as src, self._staging_file("put-") as (fd, staged):
            try:
                fcntl.ioctl(fd, _FICLONE, src.fileno())
            except OSError:
                digest, size = _copy_hashing(src, fd)
            else:
                # Read in chunks, not mapped: a mapped 1 GiB file counts 1 GiB of resident set.
                hashing, size = hasher(), 0
                while chunk := os.pread(fd, CHUNK_SIZE, size):
                    hashing.update(chunk)
                    size += len(chunk)
                digest = hashing.hexdigest()
            self._sync(fd, sync)
            staged.digest, staged.size = digest, size
            return staged

    def stage_bytes(self, data: bytes | bytearray | memoryview, digest: str, *,
                    sync: bool = True) -> Staged:
        """Write ``data``, whose digest the caller computed, into a staging file."""
        with self._staging_file("put-") as (fd, staged):
            _write_all(fd, data)
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
        fd = os.dup(self.blobs.fd())
        try:
            yield functools.partial(_syncfs, fd)
        finally:
            os.close(fd)

    def sync_shards(self, digests: list[str]) -> None:
        """fsync the shard folders of ``digests`` (once each), when durable: their renames are
        on disk before the rows that name them are committed."""
        if self.durable:
            for shard in sorted({digest[:2] for digest in digests}):
                fd = self._shard(shard, make=False)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    # -- publishing and removal ----------------------------------------------------------------

    def publish(self, staged: Staged, *, sync: bool = True) -> None:
        """Move a staged file to its blob path, read-only, replacing any damaged file there.

        ``sync=False`` leaves the folder's fsync to the caller (``sync_shards``). The file
        moves from the very folder it was staged in to a shard folder opened without following
        a link (StoreError when a symlink stands there).
        """
        shard = self._shard(staged.digest[:2], make=True)
        try:
            if staged.dir_fd is None:
                os.rename(staged.path, staged.digest, dst_dir_fd=shard)
            else:
                os.rename(staged.name, staged.digest, src_dir_fd=staged.dir_fd,
                          dst_dir_fd=shard)
            staged.published = True
            if self.durable and sync:
                os.fsync(shard)
        finally:
            os.close(shard)

    def debris(self, older_than: float = STAGING_MAX_AGE) -> list[os.DirEntry[str]]:
        """Entries of ``tmp/`` (not its ``locks/``) that no live writer will use: untouched for
        ``older_than`` seconds, staged or partly downloaded by a process that is provably gone
        (killed; cas/storage/processes.py), or symlinks (cas makes none, here or in ``locks/``)."""
        cutoff = time.time() - older_than
        old = []
        self.tmp.fd()  # StoreError for a symlink in place of tmp/: nothing is listed through it
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                if entry.name == "locks":
                    continue
                with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                    info = entry.stat(follow_symlinks=False)
                    if (info.st_mtime < cutoff or stat.S_ISLNK(info.st_mode)
                            or written_by_dead_process(entry.name)):
                        old.append(entry)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.locks_dir) as locks:
            old += [entry for entry in locks if entry.is_symlink()]
        return old

    def clear_debris(self, older_than: float = STAGING_MAX_AGE) -> int:
        """Remove staging files left by killed processes; return how many went."""
        return sum(self.remove_debris(entry) for entry in self.debris(older_than))

    def remove_debris(self, entry: os.DirEntry[str]) -> bool:
        """Remove one entry of ``debris`` (a symlink itself, never its target), relative to its
        folder's checked descriptor; whether it went."""
        in_locks = os.path.dirname(entry.path) == os.fspath(self.locks_dir)
        folder = (self.locks if in_locks else self.tmp).fd()
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=folder)
            else:
                os.unlink(entry.name, dir_fd=folder)
            return True
        return False

    def check_removable(self, digests: list[str]) -> None:
        """Raise StoreError if a blob file of ``digests`` could not be unlinked (its shard
        folder is not writable): checked before any row is deleted, so the store stays as it
        was."""
        for shard in sorted({digest[:2] for digest in digests}):
            folder = f"{self._blobs_prefix}{shard}"
            if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
                raise StoreError(f"cannot remove blobs: {folder} is not writable;"
                                 " nothing was changed")

    def unlink(self, digest: str) -> None:
        """Remove a blob's file, if present."""
        self.unlink_many([digest])

    def unlink_many(self, digests: list[str]) -> None:
        """Remove blobs' files, if present, shard by shard: relative to an open folder, so the
        kernel does not walk the whole path again for each of many thousands (gc)."""
        folder_fd, folder = -1, ""
        try:
            for digest in sorted(digests):
                if digest[:2] != folder:
                    if folder_fd >= 0:
                        os.close(folder_fd)
                    folder, folder_fd = digest[:2], -1
                    with contextlib.suppress(FileNotFoundError):
                        folder_fd = self._shard(folder, make=False)
                if folder_fd >= 0:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(digest, dir_fd=folder_fd)
        finally:
            if folder_fd >= 0:
                os.close(folder_fd)

    # -- verification (issue 6): finding, hashing, and moving aside ------------------------------

    def scan(self) -> Iterator[Found]:
        """Every entry under ``blobs/``, classified without following any symlink: blob files
        (a regular file named by a digest in its shard), symlinks, and strays (anything else)."""
        try:
            blobs = self.blobs.fd()
        except FileNotFoundError:
            return
        for name in sorted(_list(blobs)):
            try:
                info = os.stat(name, dir_fd=blobs, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = _kind(info, _SHARD.fullmatch(name) is not None, folder=True)
            if kind != "shard":
                yield Found(self.blobs_dir / name, kind, info)
                continue
            try:
                fd = os.open(name, _NOFOLLOW_DIR, dir_fd=blobs)
            except OSError:
                continue  # replaced since it was listed; the next scan sees what it became
            try:
                for entry in _list(fd):
                    with contextlib.suppress(FileNotFoundError):
                        info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                        named = _BLOB_NAME.fullmatch(entry) is not None and entry.startswith(name)
                        kind = _kind(info, named, folder=False)
                        yield Found(self.blobs_dir / name / entry, kind, info,
                                    entry if kind == "blob" else None)
            finally:
                os.close(fd)

    def has_any(self) -> bool:
        """Whether anything stands under ``blobs/`` (to tell a lost catalog from a new one)."""
        return next(iter(self.scan()), None) is not None

    def hash_blob(self, digest: str) -> tuple[str, os.stat_result]:
        """The BLAKE3 digest of the blob's file as it is now, and its status while hashed.

        Large files are memory-mapped. A file truncated from outside *while* it is hashed would
        raise SIGBUS; cas itself never truncates or rewrites a blob, it renames and unlinks.
        """
        fd, info = self._open_fd(digest)
        try:
            return hash_fd(fd, info.st_size), info
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _entry(self, found: Found) -> Iterator[tuple[int, str] | None]:
        """The folder descriptor and name of a scanned entry (``blobs/x`` or ``blobs/ab/x``),
        reached without following a link; None when it is no longer the entry scanned."""
        parts = found.path.relative_to(self.blobs_dir).parts
        try:
            folder = self.blobs.fd() if len(parts) == 1 else self._shard(parts[0], make=False)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                now = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                yield None
                return
            yield (folder, parts[-1]) if _same(now, found.info) else None
        finally:
            if len(parts) > 1:
                os.close(folder)

    def remove_link(self, found: Found) -> bool:
        """Unlink a planted symlink (never its target) if it is still the entry scanned."""
        with self._entry(found) as entry:
            if entry is None:
                return False
            os.unlink(entry[1], dir_fd=entry[0])
            return True

    def quarantine(self, found: Found) -> Path | None:
        """Move an entry of ``blobs/`` to ``quarantine/`` if it is still the entry scanned;
        return where it went. Damaged content is kept for a person to look at, never deleted."""
        with self._entry(found) as entry:
            if entry is None:
                return None
            folder, name = entry
            label = found.path.relative_to(self.blobs_dir).as_posix().replace("/", "-")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            target = f"{stamp}-{secrets.token_hex(3)}-{label}"
            quarantine = self.quarantine_folder.fd()
            # the entry itself moves: a symlink is not followed
            os.rename(name, target, src_dir_fd=folder, dst_dir_fd=quarantine)
            if self.durable:
                os.fsync(folder)
                os.fsync(quarantine)
            return self.quarantine_dir / target

    def fix_mode(self, found: Found) -> os.stat_result | None:
        """Make a blob file read-only (0444) again if it is still the entry scanned; return
        its new status."""
        with self._entry(found) as entry:
            if entry is None:
                return None
            # refuses a symlink, never follows one
            os.chmod(entry[1], BLOB_MODE, dir_fd=entry[0], follow_symlinks=False)
            return os.stat(entry[1], dir_fd=entry[0], follow_symlinks=False)


@dataclass(frozen=True)
class Found:
    """An entry under ``blobs/`` as a scan saw it."""

    path: Path
    kind: str  #: "blob", "symlink" or "stray"
    info: os.stat_result
    digest: str | None = None  #: for a blob


def _kind(info: os.stat_result, named: bool, *, folder: bool) -> str:
    if stat.S_ISLNK(info.st_mode):
        return "symlink"
    if folder and named and stat.S_ISDIR(info.st_mode):
        return "shard"
    if not folder and named and stat.S_ISREG(info.st_mode):
        return "blob"
    return "stray"


def signature(info: os.stat_result) -> str:
    """A file's stat signature: it changes when the file is written, chmodded or replaced."""
    return f"{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def unchanged(found: Found) -> bool:
    """Whether ``found.path`` is still the very entry the scan saw (or hashing fstat-ed)."""
    try:
        now = os.lstat(found.path)
    except FileNotFoundError:
        return False
    return _same(now, found.info)


def _same(now: os.stat_result, then: os.stat_result) -> bool:
    return (now.st_dev, now.st_mode, now.st_size, signature(now)) == (
        then.st_dev, then.st_mode, then.st_size, signature(then))


def _list(folder: int) -> list[str]:
    """The names in the folder ``folder``, read through a descriptor of its own: listing
    through a shared one would share its position with another thread's listing."""
    fd = os.open(".", _NOFOLLOW_DIR, dir_fd=folder)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int, size: int) -> str:
    """The BLAKE3 digest of the open file ``fd``, whose size is ``size``.

    Through ``/proc/self/fd``, blake3 maps and hashes the very file already opened (no path is
    resolved again, so no symlink can be swapped in) without holding the GIL at all: threads
    hashing many files then run in parallel (1.3x faster than Python's mmap here). Elsewhere
    Python maps the file itself; small files are read.
    """
    digest = hasher(parallel=size >= PARALLEL_HASH_SIZE)
    if size and _PROC_FD:
        digest.update_mmap(f"/proc/self/fd/{fd}")
    elif size >= MMAP_MIN_SIZE:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            digest.update(view)
    elif size:
        left = size
        while left and (chunk := os.pread(fd, left, size - left)):
            digest.update(chunk)
            left -= len(chunk)
    return str(digest.hexdigest())


def open_lock(path: Path, folder: Folder | None = None) -> BinaryIO:
    """Open (creating, 0600) a lock file without following a symlink planted in its place;
    given the ``Folder`` of its folder, relative to that folder's checked descriptor, so that
    no symlink in place of a folder is followed either.

    Raises StoreError for a symlink there ("Too many levels of symbolic links").
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if folder is None:
            fd = os.open(path, flags, 0o600)
        else:
            fd = os.open(path.name, flags, 0o600, dir_fd=folder.fd())
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise StoreError(f"{path} is a symbolic link, which cas never follows; remove it"
                         ) from error
    return os.fdopen(fd, "r+b")


def _copy_hashing(source: BinaryIO, fd: int, *, write_behind: bool = False) -> tuple[str, int]:
    """Copy ``source`` to ``fd`` in chunks, returning the BLAKE3 digest and the size.

    With ``write_behind`` (the copy will be fsynced), the kernel is asked to start writing every
    ``WRITE_BEHIND`` bytes, so that the fsync waits for the tail only.
    """
    written = 0  # bytes handed to the kernel's writeback so far
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
        if write_behind and size - written >= WRITE_BEHIND:
            start_writeback(fd, written, size - written)
            written = size


# -- write-behind (issue 8) --------------------------------------------------------------------
#: A durable staging copy starts the writeback of every this many bytes as it goes. Left to the
#: kernel, nothing is written before the fsync (dirty_background_ratio is GiBs of memory), so a
#: 1 GiB pull from the remote tier spent 0.4 s, a tenth of its time, waiting in that fsync.
WRITE_BEHIND = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, no wait


@functools.cache
def _libc(name: str, *argtypes: str) -> Callable[..., int] | None:
    """The libc function ``name`` taking ctypes ``argtypes`` (Linux), or None where there is
    none: Python's os module has neither sync_file_range nor syncfs."""
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = [getattr(ctypes, argtype) for argtype in argtypes]
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of ``fd`` (a hint: the fsync still decides)."""
    function = _libc("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")
    if function is not None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
# -- end of write-behind -------------------------------------------------------------------------


def _syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd``; every filesystem where syncfs is missing."""
    function = _libc("syncfs", "c_int")
    if function is not None:
        if function(fd) == 0:
            return
        import ctypes

        code = ctypes.get_errno()
        if code != errno.ENOSYS:
            raise OSError(code, os.strerror(code))
    os.sync()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
