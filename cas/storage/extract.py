"""Extracting a zip or tar archive safely into an empty staging folder (storage/archives.py
decides the kind and holds the bounds).

Every member path is checked before anything is written: no absolute path, no ``..``, no
Windows drive, no NUL. Links are never made: a hard link, or a symbolic link to a regular file
of the same archive (through other links of it), becomes a copy of that file; a link that
leaves the tree, names a folder or nothing, or loops is refused. Devices and fifos are refused,
regular files keep only their executable bit (0755 or 0644), a file member is created with
``O_EXCL | O_NOFOLLOW``. Each member and every byte written is charged to the ``Budget``, and a
member whose declared size alone passes it is refused before a byte of it is read. tarfile
reads extended headers whole, so one over ``MAX_HEADER`` is refused before it is read.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from cas.errors import IntegrityError, UsageError, os_error
from cas.storage.archives import (
    MAX_HEADER,
    MAX_MEMBERS,
    MEMBER_COST,
    Budget,
    Guarded,
    decode_errors,
    decompressor,
)

if TYPE_CHECKING:
    import tarfile
    import zipfile

_CHUNK = 1 << 20


# -- extracting into a folder ---------------------------------------------------------------------


@dataclass
class Extracted:
    """What an extraction wrote under its folder."""

    files: int = 0
    folders: int = 0
    size: int = 0
    #: Symbolic links waiting for their target: path -> target path, both relative.
    links: dict[str, str] = field(default_factory=dict)


def extract(file: BinaryIO, kind: str, into: str, budget: Budget) -> Extracted:
    """Unpack the zip or tar archive open as ``file`` (``kind`` from ``decide``) under the folder
    ``into``, which must be empty. Raises IntegrityError for an unsafe member, a bomb, or a
    damaged archive; UsageError for what cas cannot unpack (an encrypted zip member)."""
    writer = _Writer(into, budget)
    try:
        if kind == "zip":
            _unzip(file, writer)
        else:
            _untar(file, kind, writer)
        writer.resolve_links()
    except OSError as error:
        raise os_error(error, f"cannot unpack {budget.label}") from error
    return writer.done


class _Writer:
    """Writes checked members under one folder; never makes a link, never follows one."""

    def __init__(self, into: str, budget: Budget) -> None:
        self.into = into
        self.budget = budget
        self.done = Extracted()
        self.members = 0

    def relative(self, name: str) -> str | None:
        """The member's path relative to the folder, checked; None for the folder itself."""
        label = self.budget.label
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise IntegrityError(f"{label} has more than {MAX_MEMBERS} members")
        self.budget.charge(MEMBER_COST, name)
        if "\x00" in name:
            raise IntegrityError(f"{label} has a member whose name holds a NUL byte: {name!r}")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise IntegrityError(f"{label} has a member with an absolute path: {name!r}")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise IntegrityError(f"{label} has a member that leaves the tree: {name!r}")
        return "/".join(parts) or None

    def _at(self, relative: str) -> str:
        return os.path.join(self.into, relative)

    def folder(self, relative: str | None) -> None:
        if relative is None:
            return
        target = self._at(relative)
        try:
            os.makedirs(target, 0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise IntegrityError(f"{self.budget.label}: member {relative!r} is a folder and a"
                                 " file at once") from error
        self.done.folders += 1

    def file(self, relative: str | None, source: IO[bytes] | None, executable: bool,
             declared: int | None = None) -> None:  # fmt: skip
        """Write a regular file from ``source`` (None: empty); ``declared`` is the size the
        archive claims, refused at once when it alone passes the budget."""
        label = self.budget.label
        if relative is None:
            raise IntegrityError(f"{label} has a file member without a name")
        if declared is not None and self.budget.used + declared > self.budget.limit:
            self.budget.charge(declared, relative)  # raises, naming the bound
        self.done.links.pop(relative, None)
        target = self._at(relative)
        parent = os.path.dirname(relative)
        if parent:
            self.folder(parent)
            self.done.folders -= 1  # made on the way, not a member
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(target)
            if stat.S_ISDIR(info.st_mode):
                raise IntegrityError(f"{label}: member {relative!r} is a folder and a file at once")
            os.unlink(target)  # a later member of the same name wins, as tar does
            self.done.files -= 1
            self.done.size -= info.st_size
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o755 if executable else 0o644)
        written = 0
        try:
            while source is not None:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                self.budget.charge(len(chunk), relative)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, 0o755 if executable else 0o644)  # exactly, whatever the umask
        finally:
            os.close(fd)
        self.done.files += 1
        self.done.size += written

    def copy(self, relative: str | None, of: str, executable: bool | None = None) -> None:
        """Write ``relative`` as a copy of the regular file ``of`` already written."""
        info = os.lstat(self._at(of))
        if executable is None:
            executable = bool(info.st_mode & 0o111)
        with open(self._at(of), "rb") as source:
            self.file(relative, source, executable, info.st_size)

    def hard_link(self, relative: str | None, target: str) -> None:
        label = self.budget.label
        checked = self._target(relative, target, relative_to_root=True)
        if not os.path.isfile(self._at(checked)) or os.path.islink(self._at(checked)):
            raise IntegrityError(f"{label}: hard link {relative!r} points at {target!r}, which"
                                 " is no file written before it")
        self.copy(relative, checked)

    def symlink(self, relative: str | None, target: str) -> None:
        """Note a symbolic link; it becomes a copy of its target at the end, if that is a
        regular file of the archive."""
        checked = self._target(relative, target, relative_to_root=False)
        assert relative is not None
        self.done.links[relative] = checked

    def _target(self, relative: str | None, target: str, *, relative_to_root: bool) -> str:
        label = self.budget.label
        if relative is None:
            raise IntegrityError(f"{label} has a link member without a name")
        if not target or target.startswith("/") or "\x00" in target:
            raise IntegrityError(f"{label}: link {relative!r} points outside the tree ({target!r})")
        base = "" if relative_to_root else posixpath.dirname(relative)
        joined = posixpath.normpath(posixpath.join(base, target))
        if joined == ".." or joined.startswith("../") or joined == ".":
            raise IntegrityError(f"{label}: link {relative!r} points outside the tree ({target!r})")
        return joined

    def resolve_links(self) -> None:
        """Turn each symbolic link into a copy of the regular file it names (through other
        links of the archive); refuse one that names a folder, nothing, or a loop."""
        links = self.done.links
        while links:
            progress = False
            for link, target in list(links.items()):
                if target in links:
                    continue  # a link to a link: after that one
                full = self._at(target)
                if not os.path.isfile(full) or os.path.islink(full):
                    raise IntegrityError(
                        f"{self.budget.label}: symbolic link {link!r} points at {target!r},"
                        " which is no file of the archive (a tree holds files, not links)"
                    )
                del links[link]
                self.copy(link, target)
                progress = True
            if not progress:
                raise IntegrityError(f"{self.budget.label}: symbolic links in a loop:"
                                     f" {', '.join(sorted(links))}")


def _refused_type(label: str, name: str, what: str) -> IntegrityError:
    return IntegrityError(f"{label}: member {name!r} is {what}; a tree holds files and folders")


def _untar(file: BinaryIO, kind: str, writer: _Writer) -> None:
    import tarfile

    label = writer.budget.label
    errors = decode_errors()
    compression = kind.removeprefix("tar").lstrip(".") or None
    with contextlib.ExitStack() as stack:
        raw: IO[bytes] = file
        if compression is not None:
            raw = stack.enter_context(decompressor(compression, file))
        stream = Guarded(raw, label, None, errors)
        try:
            archive = stack.enter_context(
                tarfile.open(fileobj=stream, mode="r|",  # type: ignore[call-overload]
                             tarinfo=_safe_tarinfo())
            )
            for member in archive:
                _tar_member(archive, member, writer)
        except errors as error:
            raise IntegrityError(f"{label} is damaged or truncated: {error}") from error


def _safe_tarinfo() -> type[tarfile.TarInfo]:
    import tarfile

    class SafeTarInfo(tarfile.TarInfo):
        """A TarInfo that refuses a huge extended or long-name header before reading it."""

        def _proc_member(self, tarfile: tarfile.TarFile) -> Any:
            if self.type in _BIG_HEADERS and self.size > MAX_HEADER:
                raise IntegrityError(f"tar header {self.name!r} declares {self.size} bytes of"
                                     f" metadata, more than {MAX_HEADER}")
            return super()._proc_member(tarfile)  # type: ignore[misc]

    return SafeTarInfo


_BIG_HEADERS = (b"x", b"g", b"X", b"L", b"K")


def _tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer) -> None:
    label = writer.budget.label
    relative = writer.relative(member.name)
    if member.isdir():
        writer.folder(relative)
    elif member.isreg():
        writer.file(relative, archive.extractfile(member), bool(member.mode & 0o111),
                    member.size)  # fmt: skip
    elif member.issym():
        writer.symlink(relative, member.linkname)
    elif member.islnk():
        writer.hard_link(relative, member.linkname)
    elif member.ischr() or member.isblk():
        raise _refused_type(label, member.name, "a device")
    elif member.isfifo():
        raise _refused_type(label, member.name, "a fifo")
    else:
        raise _refused_type(label, member.name, f"of tar type {member.type!r}")


def _unzip(file: BinaryIO, writer: _Writer) -> None:
    import zipfile

    label = writer.budget.label
    errors = decode_errors()
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise IntegrityError(f"{label} has {len(infos)} members, more than {MAX_MEMBERS}")
            declared = sum(info.file_size for info in infos) + MEMBER_COST * len(infos)
            if declared > writer.budget.limit:
                writer.budget.charge(declared)  # raises: the central directory says it all
            for info in infos:
                _zip_member(archive, info, writer)
    except errors as error:
        raise IntegrityError(f"{label} is damaged or truncated: {error}") from error
    except NotImplementedError as error:  # a compression method zipfile lacks
        raise UsageError(f"{label}: {error}") from error


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    label = writer.budget.label
    name = info.filename.replace("\\", "/")
    relative = writer.relative(name)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.folder(relative)
        return
    if info.flag_bits & 0x1:
        raise UsageError(f"{label}: member {name!r} is encrypted; cas unpacks no encrypted zip")
    if kind == stat.S_IFLNK:
        if info.file_size > 4096:
            raise IntegrityError(f"{label}: symbolic link {name!r} is {info.file_size} bytes")
        with archive.open(info) as source:
            target = source.read(4097).decode("utf-8", "replace")
        writer.symlink(relative, target)
    elif kind in (0, stat.S_IFREG):
        with archive.open(info) as source:
            writer.file(relative, source, bool(mode & 0o111), info.file_size)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        raise _refused_type(label, name, "a device")
    elif kind == stat.S_IFIFO:
        raise _refused_type(label, name, "a fifo")
    else:
        raise _refused_type(label, name, f"of file type {oct(kind)}")
