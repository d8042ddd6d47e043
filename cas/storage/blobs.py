"""Blob files: where each blob lives, reading them, publishing staged files, and removal.

The second half of the write protocol (the first is storage/staging.py): a staged file is
renamed to ``blobs/ab/<digest>`` (read-only) and the folder fsynced. This module knows nothing of
the catalog; the store decides when to publish and when to unlink (docs/architecture.md).

Every folder is reached through a ``Folder`` (storage/folder.py), held by a descriptor opened
without following links, never through a path a planted symlink could redirect (guarantee 7).
Verification's side is here too: scanning ``blobs/``, hashing a blob, and moving damaged
entries to ``quarantine/``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cas.errors import StoreError
from cas.storage import hashing
from cas.storage.folder import NOFOLLOW_DIR, Folder, list_names
from cas.storage.layout import Layout, blob_location, quarantine_name, shard_of
from cas.storage.views import Views

if TYPE_CHECKING:
    from cas.storage.found import Found
    from cas.storage.staging import Staged, Staging

# Patterns as strings: re compiles and caches them on first use (a scan), not at import.
_SHARD = r"[0-9a-f]{2}"
_BLOB_NAME = r"[0-9a-f]{64}"
#: How old a read's check of a folder may be, in seconds. Writes re-check a folder at every use;
#: a look-up trusting a check this recent saves a lstat, 15 % of its cost (benchmarks/suite_small).
READ_RECHECK = 1.0
SYNCFS_MIN_SHARDS = 4  #: a batch published into this many shard folders: one syncfs
#: Blob paths remembered for look-ups; past this many, memory restarts.
REMEMBERED_PATHS = 20_000


class BlobStore:
    """The files of one store: ``blobs/`` for content, ``tmp/`` for staging and locks
    (``staging``, a ``Staging``), ``quarantine/`` for what verify moved aside.

    Every folder is reached through a ``Folder``; shard folders are opened relative to
    ``blobs/``'s descriptor when written, never cached (a descriptor for each of 256 shards would
    exhaust a small open-file limit).
    """

    def __init__(self, root: Path, *, dir_mode: int = 0o700, durable: bool = True,
                 read_only: str | None = None) -> None:
        self.root = root
        self.layout = layout = Layout(root)
        self.blobs_dir = layout.blobs
        self.tmp_dir = layout.tmp
        self.locks_dir = layout.locks
        self.quarantine_dir = layout.quarantine
        mode = None if read_only else dir_mode
        self.root_folder = Folder(root, mode=mode, durable=durable)
        self.blobs = Folder(self.blobs_dir, self.root_folder, mode=mode, durable=durable)
        self.tmp = Folder(self.tmp_dir, self.root_folder, mode=mode, durable=durable)
        self.locks = Folder(self.locks_dir, self.tmp, mode=mode, durable=durable)
        self.quarantine_folder = Folder(self.quarantine_dir, self.root_folder, mode=mode,
                                        durable=durable)
        self._read_only = read_only
        self._staging: Staging | None = None
        #: Named views of blobs and trees (storage/views.py): they go with their blob.
        self.views = Views(layout, self.root_folder, self.blobs, self.tmp, mode=mode,
                           durable=durable)
        self._real_shards: dict[str, float] = {}  # shard -> time.monotonic() it was checked
        self._blobs_prefix = f"{self.blobs_dir}{os.sep}"
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

    @property
    def staging(self) -> Staging:
        """The staging files (storage/staging.py), set up on first use: a read stages nothing."""
        if self._staging is None:
            from cas.storage.staging import Staging

            self._staging = Staging(self.layout, self.tmp, self.locks, durable=self.durable,
                                    read_only=self._read_only)
        return self._staging

    @property
    def read_only(self) -> str | None:
        """Why the store is read-only, or None: staging refuses at once when it is."""
        return self._read_only

    @read_only.setter
    def read_only(self, why: str | None) -> None:
        self._read_only = why
        if self._staging is not None:
            self._staging.read_only = why
        self.views.read_only = why is not None

    # -- where blobs are, and reading them --------------------------------------------------------

    def location(self, digest: str) -> str:
        """Where the blob ``digest`` lives (``layout.blob_location``): a string, because
        look-ups are hot and building a Path costs more than the lstat."""
        return blob_location(self._blobs_prefix, digest)

    def path_of(self, digest: str) -> Path:
        """``location`` as a Path."""
        path = self._paths.get(digest)
        if path is None:
            name = shard_of(digest)
            shard = self._shards.get(name)
            if shard is None:
                shard = self._shards[name] = self.blobs_dir / name
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
        shard = shard_of(digest)
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
        shard = os.open(shard_of(digest), NOFOLLOW_DIR, dir_fd=blobs)
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

    def _shard(self, shard: str, *, make: bool, settle: bool = True) -> int:
        """A new descriptor of a shard folder (the caller closes it), opened relative to
        ``blobs/``'s checked descriptor without following a link; made when missing and
        ``make`` (``settle``: fsync ``blobs/`` then). StoreError for a symlink or a file."""
        blobs = self.blobs.fd()
        try:
            return os.open(shard, NOFOLLOW_DIR, dir_fd=blobs)
        except FileNotFoundError:
            if not make:
                raise
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise StoreError(Folder(self.blobs_dir / shard, self.blobs).refusal()) from error
        # Made exactly as the other folders are (mode, fsync of blobs/), through a Folder used
        # once: its descriptor is handed over to the caller.
        folder = Folder(self.blobs_dir / shard, self.blobs, mode=self.dir_mode,
                        durable=self.durable and settle)
        return os.dup(folder.fd())

    # -- staging (storage/staging.py) ----------------------------------------------------------

    def stage_stream(self, source: BinaryIO, *, sync: bool = True) -> Staged:
        """``Staging.stage_stream``: copy ``source`` into a staging file while hashing it."""
        return self.staging.stage_stream(source, sync=sync)

    def stage_file(self, source: Path, *, sync: bool = True) -> Staged:
        """``Staging.stage_file``: copy a local file into staging (a reflink where it can)."""
        return self.staging.stage_file(source, sync=sync)

    def stage_bytes(self, data: bytes | bytearray | memoryview, digest: str, *,
                    sync: bool = True) -> Staged:
        """``Staging.stage_bytes``: write ``data``, whose digest is known, into staging."""
        return self.staging.stage_bytes(data, digest, sync=sync)

    def batch_sync(self) -> contextlib.AbstractContextManager[Callable[[], None]]:
        """``Staging.batch_sync``: a function that makes a batch of staged files durable."""
        return self.staging.batch_sync()

    def debris(self) -> list[os.DirEntry[str]]:
        """``Staging.debris``: what no live writer will use in ``tmp/`` (staging.is_debris)."""
        return self.staging.debris()

    def clear_debris(self) -> int:
        """``Staging.clear_debris``: remove the debris; how many entries went."""
        return self.staging.clear_debris()

    def remove_debris(self, entry: os.DirEntry[str]) -> bool:
        """``Staging.remove_debris``: remove one entry of ``debris``; whether it went."""
        return self.staging.remove_debris(entry)

    # -- publishing and removal ----------------------------------------------------------------

    def publish(self, staged: Staged, *, sync: bool = True) -> None:
        """Move a staged file to its blob path, read-only, replacing any damaged file there.

        ``sync=False`` leaves the folder's fsync to the caller (``sync_shards``). The file
        moves from the very folder it was staged in to a shard folder opened without following
        a link (StoreError when a symlink stands there).
        """
        shard = self._shard(shard_of(staged.digest), make=True, settle=sync)
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

    def sync_shards(self, digests: list[str]) -> None:
        """Make the renames into the shard folders of ``digests`` (and new ones) durable before
        their rows are committed: fsyncs for a few, else one syncfs (each fsync flushes)."""
        shards = sorted({shard_of(digest) for digest in digests}) if self.durable else []
        if len(shards) >= SYNCFS_MIN_SHARDS:
            return hashing.syncfs(self.blobs.fd())
        for shard in shards:
            fd = self._shard(shard, make=False)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if shards:
            os.fsync(self.blobs.fd())  # a shard folder that publish made without settling

    def check_removable(self, digests: list[str]) -> None:
        """Raise StoreError if a blob file of ``digests`` could not be unlinked (its shard
        folder is not writable): checked before any row is deleted, so the store stays as it
        was."""
        for shard in sorted({shard_of(digest) for digest in digests}):
            folder = f"{self._blobs_prefix}{shard}"
            if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
                raise StoreError(f"cannot remove blobs: {folder} is not writable;"
                                 " nothing was changed")

    def unlink(self, digest: str) -> None:
        """Remove a blob's file, if present."""
        self.unlink_many([digest])

    def unlink_many(self, digests: list[str]) -> None:
        """Remove blobs' files, if present, shard by shard: relative to an open folder, so the
        kernel does not walk the whole path again for each of many thousands (gc); and their
        views (a hard link would keep the blob's bytes on disk)."""
        self.views.remove(digests)
        folder_fd, folder = -1, ""
        try:
            for digest in sorted(digests):
                if shard_of(digest) != folder:
                    if folder_fd >= 0:
                        os.close(folder_fd)
                    folder, folder_fd = shard_of(digest), -1
                    with contextlib.suppress(FileNotFoundError):
                        folder_fd = self._shard(folder, make=False)
                if folder_fd >= 0:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(digest, dir_fd=folder_fd)
        finally:
            if folder_fd >= 0:
                os.close(folder_fd)

    # -- verification: finding, hashing, and moving aside -----------------------------------------

    def scan(self) -> Iterator[Found]:
        """Every entry under ``blobs/``, classified without following any symlink: blob files
        (a regular file named by a digest in its shard), symlinks, and strays (anything else)."""
        from cas.storage.found import Found, kind_of

        try:
            blobs = self.blobs.fd()
        except FileNotFoundError:
            return
        for name in sorted(list_names(blobs)):
            try:
                info = os.stat(name, dir_fd=blobs, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = kind_of(info, re.fullmatch(_SHARD, name) is not None, folder=True)
            if kind != "shard":
                yield Found(self.blobs_dir / name, kind, info)
                continue
            try:
                fd = os.open(name, NOFOLLOW_DIR, dir_fd=blobs)
            except OSError:
                continue  # replaced since it was listed; the next scan sees what it became
            try:
                for entry in list_names(fd):
                    with contextlib.suppress(FileNotFoundError):
                        info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                        named = (re.fullmatch(_BLOB_NAME, entry) is not None
                                 and entry.startswith(name))
                        kind = kind_of(info, named, folder=False)
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
        from cas.storage.hashing import hash_fd  # verification's: a read hashes nothing

        fd, info = self._open_fd(digest)
        try:
            return hash_fd(fd, info.st_size), info
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _entry(self, found: Found) -> Iterator[tuple[int, str] | None]:
        """The folder descriptor and name of a scanned entry (``blobs/x`` or ``blobs/ab/x``),
        reached without following a link; None when it is no longer the entry scanned."""
        from cas.storage.found import same

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
            yield (folder, parts[-1]) if same(now, found.info) else None
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
            target = quarantine_name(found.path.relative_to(self.blobs_dir).as_posix(),
                                     time.strftime("%Y%m%dT%H%M%S"), os.urandom(3).hex())
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
            from cas.storage.staging import BLOB_MODE

            # refuses a symlink, never follows one
            os.chmod(entry[1], BLOB_MODE, dir_fd=entry[0], follow_symlinks=False)
            return os.stat(entry[1], dir_fd=entry[0], follow_symlinks=False)


def quarantined(folder: Path) -> tuple[int, int]:
    """Count and bytes of the files under ``folder`` (``quarantine/``), at any depth: a stray
    folder verify moved there keeps its contents. Symlinks are counted, never followed, and a
    ``folder`` that is itself a symlink counts nothing (guarantee 7)."""
    files = size = 0
    if not os.path.isdir(folder):
        return files, size  # none yet (verify makes it when it first moves something)
    for _, subfolders, names, folder_fd in os.fwalk(folder, follow_symlinks=False):
        for name in [*names, *subfolders]:
            try:
                info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISDIR(info.st_mode):
                continue
            files += 1
            size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return files, size
