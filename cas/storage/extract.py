"""Extracting a zip or tar archive safely: each regular file is staged as a blob (an ordinary
staging file of ``tmp/``, hashed as it is written) and the tree is a map of relative paths to
staged files (storage/archives.py decides the kind and holds the bounds).

No file is ever made under a member's own path, so no member can write outside the store's
staging files; and every member path is checked anyway, so a tree never holds one that leaves
it: no absolute path, no ``..``, no Windows drive, no NUL. Links are never made: a hard link,
or a symbolic link to a regular file of the same archive (through other links of it), becomes
that file (the same blob); a link that leaves the tree, names a folder or nothing, or loops is
refused. Devices and fifos are refused; regular files keep only their executable bit. Each
member and every byte unpacked is charged to the ``Budget`` (a link as the size of its file),
and a member whose declared size alone passes it is refused before a byte of it is read.
tarfile reads extended headers whole, so one over ``MAX_HEADER`` is refused before it is read.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import stat
from collections.abc import Callable
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
from cas.storage.staging import Staged

#: Bytes tarfile reads from the decompressed stream at once (its default, 10 KiB, costs a
#: Python call and a copy per 10 KiB).
READ_SIZE = 1 << 20

if TYPE_CHECKING:
    import tarfile
    import zipfile



# -- extracting into staged files ----------------------------------------------------------------


@dataclass
class Member:
    """A regular file of the archive, staged as a blob."""

    staged: Staged
    executable: bool


@dataclass
class Extracted:
    """What an extraction staged: each file's staged content by relative path, the folders
    the archive names, and every staging file made (to publish or discard)."""

    files: dict[str, Member] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    staged: list[Staged] = field(default_factory=list)

    def discard(self) -> None:
        for each in self.staged:
            each.discard()

    def empty_folders(self) -> list[str]:
        """The named folders that hold nothing (a tree keeps those)."""
        parents = {path.rsplit("/", i)[0] for path in [*self.files, *self.folders]
                   for i in range(1, path.count("/") + 1)}
        return sorted(self.folders - parents - set(self.files))


#: Stages the bytes of a reader as a blob (``Staging.stage_stream`` without its fsync).
Stage = Callable[[BinaryIO], Staged]


def extract(file: BinaryIO, kind: str, budget: Budget, stage: Stage) -> Extracted:
    """Stage every file of the zip or tar archive open as ``file`` (``kind`` from ``decide``)
    as a blob, through ``stage``; the caller publishes them or calls ``discard``. Raises
    IntegrityError for an unsafe member, a bomb, or a damaged archive (having discarded what
    it staged); UsageError for what cas cannot unpack (an encrypted zip member)."""
    writer = _Writer(budget, stage)
    try:
        if kind == "zip":
            _unzip(file, writer)
        else:
            _untar(file, kind, writer)
        writer.resolve_links()
    except OSError as error:
        writer.done.discard()
        raise os_error(error, f"cannot unpack {budget.label}") from error
    except BaseException:
        writer.done.discard()
        raise
    return writer.done


class _Writer:
    """Stages checked members; makes no file under a member's own path, so nothing an
    archive names can reach outside ``tmp/``'s staging files."""

    def __init__(self, budget: Budget, stage: Stage) -> None:
        self.budget = budget
        self.stage = stage
        self.done = Extracted()
        self.members = 0
        #: Symbolic links waiting for their target: path -> target path, both relative.
        self.links: dict[str, str] = {}

    def relative(self, name: str) -> str | None:
        """The member's path relative to the tree, checked; None for the tree itself."""
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

    def folder(self, relative: str | None) -> None:
        if relative is not None:
            self.done.folders.add(relative)

    def file(self, relative: str | None, source: IO[bytes] | None, executable: bool,
             declared: int | None = None) -> None:  # fmt: skip
        """Stage a regular file from ``source`` (None: empty); ``declared`` is the size the
        archive claims, refused at once when it alone passes the budget. A later member of
        the same path wins, as tar does."""
        if relative is None:
            raise IntegrityError(f"{self.budget.label} has a file member without a name")
        if declared is not None and self.budget.used + declared > self.budget.limit:
            self.budget.charge(declared, relative)  # raises, naming the bound
        charged = Guarded(source if source is not None else io.BytesIO(), self.budget.label,
                          self.budget, decode_errors(), relative)  # fmt: skip
        staged = self.stage(charged)  # type: ignore[arg-type]
        self.done.staged.append(staged)
        self.links.pop(relative, None)
        self.done.files[relative] = Member(staged, executable)

    def hard_link(self, relative: str | None, target: str) -> None:
        checked = self._target(relative, target, relative_to_root=True)
        assert relative is not None
        found = self.done.files.get(checked)
        if found is None:
            raise IntegrityError(f"{self.budget.label}: hard link {relative!r} points at"
                                 f" {target!r}, which is no file before it")
        self.budget.charge(found.staged.size, relative)
        self.links.pop(relative, None)
        self.done.files[relative] = found

    def symlink(self, relative: str | None, target: str) -> None:
        """Note a symbolic link; it becomes the file it names at the end, if that is a
        regular file of the archive."""
        checked = self._target(relative, target, relative_to_root=False)
        assert relative is not None
        self.done.files.pop(relative, None)
        self.links[relative] = checked

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
        """Make each symbolic link the file it names (through other links of the archive);
        refuse one that names a folder, nothing, or a loop."""
        links = self.links
        while links:
            progress = False
            for link, target in list(links.items()):
                if target in links:
                    continue  # a link to a link: after that one
                found = self.done.files.get(target)
                if found is None:
                    raise IntegrityError(
                        f"{self.budget.label}: symbolic link {link!r} points at {target!r},"
                        " which is no file of the archive (a tree holds files, not links)"
                    )
                del links[link]
                self.budget.charge(found.staged.size, link)
                self.done.files[link] = found
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
                             tarinfo=_safe_tarinfo(), bufsize=READ_SIZE)
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
