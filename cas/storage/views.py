"""Named views: a fixture under its own file name, inside the root.

    views/ab/<digest>/<label>      a file: a hard link to blobs/ab/<digest> (the same inode)
    views/ab/<digest>/<label>/     a tree: read-only folders (0555) of hard links to its members'
                                   blobs, and 0555 copies of its executable files

A view is keyed by the digest it shows, so pointing a name elsewhere rewrites nothing, and
removing a blob removes ``views/ab/<digest>/`` whole. A view is built in ``tmp/`` (a name
carrying the builder's staging tag, so a killed builder's leftovers are debris) and renamed into
place: a view that stands is complete, and of two builders at once the one that loses discards
its own. Everything happens relative to folder descriptors opened without following links
(storage/folder.py); a view is rebuilt whenever its check fails (a file view: the same inode
as its blob; a tree view: a real folder), and verify checks tree views deeply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from cas.errors import StoreError
from cas.storage.folder import NOFOLLOW_DIR, Folder, list_names, remove_tree
from cas.storage.layout import Layout, shard_of, view_build_name
from cas.storage.processes import staging_tag

if TYPE_CHECKING:  # trees load when one is shown, not on every look-up's route
    from cas.storage.trees import Tree, TreeFile

#: Mode of a tree view's folders and of its executable files' copies.
VIEW_DIR_MODE = 0o555
#: How long a read trusts its check of ``views/`` (as blobs.READ_RECHECK).
READ_RECHECK = 1.0


class Views:
    """The ``views/`` folder of one store."""

    def __init__(self, layout: Layout, root: Folder, blobs: Folder, tmp: Folder, *,
                 mode: int | None, durable: bool) -> None:
        self.layout = layout
        self.folder = Folder(layout.views, root, mode=mode, durable=durable)
        self._blobs = blobs
        self._tmp = tmp
        self._prefix = f"{layout.views}{os.sep}"
        self.read_only = mode is None

    # -- files ---------------------------------------------------------------------------------

    def file(self, digest: str, label: str, blob: os.stat_result) -> str | None:
        """The path of the view of the blob ``digest`` (whose lstat is ``blob``) labelled
        ``label``, built or rebuilt when missing or not the blob's inode; None when it cannot
        be built (a read-only store): the caller serves the blob's own path."""
        relative = f"{digest[:2]}{os.sep}{digest}{os.sep}{label}"
        path = self._prefix + relative
        try:
            # relative to views/ checked to be no planted link: a shorter walk than the path's
            info = os.stat(relative, dir_fd=self.folder.fd(max_age=READ_RECHECK),
                           follow_symlinks=False)
            if info.st_ino == blob.st_ino and info.st_dev == blob.st_dev:
                return path
        except (OSError, ValueError, StoreError):  # StoreError: a link planted as views/
            pass
        if self.read_only:
            return None
        try:
            self._build_file(digest, label)
        except (OSError, StoreError):
            return None  # cannot write here (permissions, a full disk): the blob's path serves
        return path

    def _build_file(self, digest: str, label: str) -> None:
        """Link the blob into place: at once where nothing stands (a link is made whole or not
        at all), else into ``tmp/`` and renamed over whatever stood there (a file view is only
        ever a link to its blob)."""
        target = self._digest_folder(digest)
        try:
            shard = os.open(shard_of(digest), NOFOLLOW_DIR, dir_fd=self._blobs.fd())
            try:
                os.link(digest, label, src_dir_fd=shard, dst_dir_fd=target,
                        follow_symlinks=False)
                return
            except FileExistsError:
                pass
            finally:
                os.close(shard)
        finally:
            os.close(target)
        tmp = self._tmp.fd()
        name = view_build_name(staging_tag(), os.urandom(6).hex())
        shard = os.open(shard_of(digest), NOFOLLOW_DIR, dir_fd=self._blobs.fd())
        try:
            os.link(digest, name, src_dir_fd=shard, dst_dir_fd=tmp, follow_symlinks=False)
        finally:
            os.close(shard)
        try:
            target = self._digest_folder(digest)
            try:
                self._place(tmp, name, target, label)
            finally:
                os.close(target)
        finally:
            # rename(2) does nothing when both names are links of one inode: the link stays
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=tmp)

    @staticmethod
    def _place(tmp: int, name: str, target: int, label: str) -> None:
        try:
            os.rename(name, label, src_dir_fd=tmp, dst_dir_fd=target)
        except OSError as error:  # a folder stands there (a tree view of old): it goes
            if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            remove_tree(label, target)
            os.rename(name, label, src_dir_fd=tmp, dst_dir_fd=target)

    # -- trees ---------------------------------------------------------------------------------

    def tree(self, digest: str, label: str, load: Callable[[], Tree]) -> str | None:
        """The path of the read-only folder showing the tree ``digest`` labelled ``label``,
        built when missing from the tree ``load`` reads (its record, checked); None when it
        cannot be built (a read-only store)."""
        path = f"{self._prefix}{digest[:2]}{os.sep}{digest}{os.sep}{label}"
        try:
            self.folder.fd(max_age=READ_RECHECK)
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return path
        except (OSError, ValueError):
            pass
        if self.read_only:
            return None
        tree = load()
        self._build_tree(digest, label, tree.files, tree.folders)
        return path

    def _build_tree(self, digest: str, label: str, members: Iterable[TreeFile],
                    folders: Iterable[str]) -> None:
        tmp = self._tmp.fd()
        build = view_build_name(staging_tag(), os.urandom(6).hex())
        os.mkdir(build, 0o700, dir_fd=tmp)
        try:
            top = os.open(build, NOFOLLOW_DIR, dir_fd=tmp)
            try:
                made = _lay_out(top, self._blobs.fd(), label, members, folders)
                for folder in sorted(made, key=lambda each: -each.count("/")):
                    os.chmod(folder, VIEW_DIR_MODE, dir_fd=top)
                target = self._digest_folder(digest)
                try:
                    try:
                        # the moved folder must be writable (its ".." changes): 0555 after
                        os.rename(label, label, src_dir_fd=top, dst_dir_fd=target)
                    except OSError as error:
                        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        # another builder won, or a file view of old stands there
                        info = os.stat(label, dir_fd=target, follow_symlinks=False)
                        if stat.S_ISDIR(info.st_mode):
                            return
                        os.unlink(label, dir_fd=target)
                        os.rename(label, label, src_dir_fd=top, dst_dir_fd=target)
                    os.chmod(label, VIEW_DIR_MODE, dir_fd=target)
                finally:
                    os.close(target)
            finally:
                os.close(top)
        finally:
            remove_tree(build, tmp)

    def _digest_folder(self, digest: str) -> int:
        """A new descriptor of ``views/ab/<digest>/``, made when missing."""
        views = self.folder.fd()
        shard = _subfolder(views, shard_of(digest))
        try:
            return _subfolder(shard, digest)
        finally:
            os.close(shard)

    # -- removal and scanning ------------------------------------------------------------------

    def remove(self, digests: Iterable[str]) -> None:
        """Remove every view of ``digests`` (``views/ab/<digest>/`` whole), if any."""
        try:
            views = self.folder.fd()
        except (FileNotFoundError, OSError):
            return  # none yet, or not ours to touch
        by_shard: dict[str, list[str]] = {}
        for digest in digests:
            by_shard.setdefault(shard_of(digest), []).append(digest)
        for name, members in sorted(by_shard.items()):
            try:
                shard = os.open(name, NOFOLLOW_DIR, dir_fd=views)
            except OSError:
                continue
            try:
                for digest in members:
                    remove_tree(digest, shard)
            finally:
                os.close(shard)

    def remove_entry(self, relative: str) -> None:
        """Remove the entry ``relative`` of ``views/`` (``ab``, ``ab/<digest>`` or
        ``ab/<digest>/<label>``), never following a link."""
        parent, _, name = relative.rpartition("/")
        views = self.folder.fd()
        fd = os.open(parent, NOFOLLOW_DIR, dir_fd=views) if parent else os.dup(views)
        try:
            remove_tree(name, fd)
        finally:
            os.close(fd)

    def usage(self) -> tuple[int, int]:
        """How many views stand, and the bytes of their files that are copies (one link: a
        tree's executable files); nothing followed."""
        count = copied = 0
        for relative, info in self.scan():
            if relative.count("/") != 2:
                continue
            count += 1
            if stat.S_ISDIR(info.st_mode):
                try:
                    walk = os.fwalk(os.path.join(self.layout.views, relative),
                                    follow_symlinks=False)
                    for _, _, files, fd in walk:
                        for name in files:
                            with contextlib.suppress(FileNotFoundError):
                                each = os.stat(name, dir_fd=fd, follow_symlinks=False)
                                if stat.S_ISREG(each.st_mode) and each.st_nlink == 1:
                                    copied += each.st_size
                except OSError:
                    continue
        return count, copied

    def scan(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every entry of ``views/`` to three levels (``ab``, ``ab/<digest>``,
        ``ab/<digest>/<label>``), relative, with its lstat; nothing followed."""
        try:
            views = self.folder.fd()
        except (FileNotFoundError, OSError):
            return
        yield from _walk(views, "", 3)


def _walk(fd: int, prefix: str, depth: int) -> Iterator[tuple[str, os.stat_result]]:
    for name in sorted(list_names(fd)):
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        relative = f"{prefix}{name}"
        yield relative, info
        if depth > 1 and stat.S_ISDIR(info.st_mode):
            try:
                sub = os.open(name, NOFOLLOW_DIR, dir_fd=fd)
            except OSError:
                continue
            try:
                yield from _walk(sub, f"{relative}/", depth - 1)
            finally:
                os.close(sub)


def _subfolder(parent: int, name: str) -> int:
    """A new descriptor of the folder ``name`` in ``parent``, made (0700) when missing;
    OSError for anything else standing there (never followed)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    return os.open(name, NOFOLLOW_DIR, dir_fd=parent)


def _lay_out(top: int, blobs: int, label: str, members: Iterable[TreeFile],
             folders: Iterable[str]) -> list[str]:
    """Make ``label/`` in ``top`` with every member (a hard link to its blob, or a 0555 copy
    when executable) and every folder; return the folders made, relative to ``top``."""
    made = {label}
    os.mkdir(label, 0o700, dir_fd=top)
    shards: dict[str, int] = {}

    def folder_of(path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and f"{label}/{parent}" not in made:
            folder_of(parent)
            os.mkdir(f"{label}/{parent}", 0o700, dir_fd=top)
            made.add(f"{label}/{parent}")

    try:
        for folder in folders:
            folder_of(f"{folder}/x")
        for member in members:
            folder_of(member.path)
            shard = shards.get(member.digest[:2])
            if shard is None:
                shard = shards[member.digest[:2]] = os.open(
                    member.digest[:2], NOFOLLOW_DIR, dir_fd=blobs)
            if member.executable:
                _copy(shard, member.digest, top, f"{label}/{member.path}")
            else:
                os.link(member.digest, f"{label}/{member.path}", src_dir_fd=shard,
                        dst_dir_fd=top, follow_symlinks=False)
    finally:
        for fd in shards.values():
            os.close(fd)
    return sorted(made)


def _copy(shard: int, digest: str, top: int, path: str) -> None:
    """A 0555 copy of a blob (a hard link would share the blob's 0444 mode)."""
    source = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=shard)
    try:
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o700, dir_fd=top)
        try:
            size = os.fstat(source).st_size
            copied = 0
            while copied < size:
                sent = os.copy_file_range(source, target, size - copied)
                if sent == 0:
                    break
                copied += sent
            os.fchmod(target, VIEW_DIR_MODE)
        finally:
            os.close(target)
    finally:
        os.close(source)

