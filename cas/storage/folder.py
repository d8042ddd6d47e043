"""Folders held by descriptors opened without following links, and the files made in them.

Every file operation of the storage layer is made relative to a folder descriptor opened with
``O_NOFOLLOW`` (``Folder``), never through a path a planted symlink could redirect (guarantee 7).
Lock files are opened the same way (``open_lock``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import weakref
from pathlib import Path
from typing import BinaryIO

from cas.errors import StoreError, os_error

#: ``os.open`` flags of a folder opened without following a link.
NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
            fd = os.open(self._name, NOFOLLOW_DIR, dir_fd=parent)
        except FileNotFoundError:
            if self.mode is None:
                raise
            made = self._make(parent)
            fd = os.open(self._name, NOFOLLOW_DIR, dir_fd=parent)
            self._opened.append(fd)
            if made:
                self._settle(fd, parent)
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise StoreError(self.refusal()) from error
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
            raise os_error(error, f"cannot create {self.path}") from error
        return True

    def _settle(self, fd: int, parent: int | None) -> None:
        # mkdir's mode is cut by the umask: set it exactly (0700, or 02770 when shared); and
        # fsync the parent, or a power cut could lose the new folder with the blobs inside it.
        assert self.mode is not None
        os.fchmod(fd, self.mode)
        if self.durable:
            if parent is None:
                fsync_dir(self.path.parent)
            else:
                os.fsync(parent)

    def refusal(self) -> str:
        """Why the folder cannot be used: a symlink or something else stands in its place."""
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


def list_names(folder: int) -> list[str]:
    """The names in the folder ``folder``, read through a descriptor of its own: listing
    through a shared one would share its position with another thread's listing."""
    fd = os.open(".", NOFOLLOW_DIR, dir_fd=folder)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder named by its path (a rename or a creation in it is then on disk)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove the entry ``name`` of the folder ``dir_fd`` and, for a folder, everything under
    it, never following a link: read-only folders (views are 0555) are made writable first.
    Missing is nothing to do."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    import shutil

    with contextlib.suppress(FileNotFoundError):
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
        for _, subfolders, _, fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
            for sub in subfolders:
                with contextlib.suppress(OSError, ValueError):  # a link: rmtree unlinks it
                    if stat.S_ISDIR(os.stat(sub, dir_fd=fd, follow_symlinks=False).st_mode):
                        os.chmod(sub, 0o700, dir_fd=fd, follow_symlinks=False)
        shutil.rmtree(name, dir_fd=dir_fd)
