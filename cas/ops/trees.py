"""Trees: a folder stored as one fixture.

``put_tree`` scans a folder (refusing, before anything is stored, the first entry a tree cannot
hold: a symbolic link, a device, a FIFO, a socket, a name that is not UTF-8), stores each
regular file as a blob through ``Putter.put_sized`` (batched: one transaction and one syncfs per
``PUT_BATCH`` files), then stores the tree's record (cas/storage/trees.py) as a blob of its own,
in the same transaction as the tree's rows and its name. The record's digest is the tree's ref.
A folder with nothing in it is kept in the record (``folders``), so it comes back.

Archives (and anything else that lays out files in a folder first) call ``put_tree`` with the
store's ``Putter`` directly.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cas.errors import NotFound, StoreError, UsageError, os_error
from cas.ops.put import Putter
from cas.storage import trees
from cas.storage.catalog import Connection

#: Puts of the members again when a concurrent cleanup removed some before the record held them.
ATTEMPTS = 3


class _MembersGone(Exception):
    """Members were removed (a concurrent cleanup) before the record's transaction."""


def put_tree(putter: Putter, folder: str | os.PathLike[str], name: str | None = None) -> str:
    """Store the folder ``folder`` as a tree named ``name``; return the tree's digest.

    Raises UsageError naming the first entry a tree cannot hold (nothing is stored then),
    NotFound for a missing folder.
    """
    root = Path(folder)
    files, empty = scan(root)
    sources = [root / relative for relative, _ in files]
    for _ in range(ATTEMPTS):
        sized = putter.put_sized(sources)
        tree = trees.Tree.build(
            (trees.TreeFile(relative, digest, size, executable)
             for (relative, executable), (digest, size) in zip(files, sized, strict=True)),
            empty,
        )

        def rows(conn: Connection, items: list[tuple[str, int]], tree: trees.Tree = tree) -> None:
            if trees.missing_members(conn, (each.digest for each in tree.files)):
                raise _MembersGone
            trees.record(conn, items[0][0], tree)

        try:
            return putter.put_with(tree.encode(), name, rows)
        except _MembersGone:
            continue
    raise StoreError(f"files of {root} were removed by concurrent cleanups while it was stored;"
                     " put it again")


def scan(root: Path) -> tuple[list[tuple[str, bool]], list[str]]:
    """The regular files of ``root`` (relative path, executable) and its empty folders, in
    path order. Raises UsageError naming the first entry a tree cannot hold."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise UsageError(f"{str(root)!r} is not a folder")
    except FileNotFoundError as error:
        raise NotFound(f"folder {str(root)!r} does not exist") from error
    files: list[tuple[str, bool]] = []
    empty: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            raise os_error(error, f"cannot read {folder}") from error
        if not entries and prefix:
            empty.append(prefix.rstrip("/"))
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            refusal = _refusal(entry, relative)
            if refusal:
                raise UsageError(f"cannot store {str(root)!r} as a tree: {refusal}")
            if entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), f"{relative}/")
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                files.append((relative, bool(mode & stat.S_IXUSR)))

    walk(root, "")
    return files, empty


def _refusal(entry: os.DirEntry[str], relative: str) -> str | None:
    """Why a tree cannot hold ``entry``, or None."""
    shown = repr(relative)
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return f"{shown} is not a valid UTF-8 name"
    if "\\" in entry.name and os.sep == "\\":  # pragma: no cover - not on POSIX
        return f"{shown} holds a backslash"
    info = entry.stat(follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        return f"{shown} is a symbolic link (a tree holds only files and folders)"
    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
        return None
    kind = ("a device" if stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode)
            else "a FIFO" if stat.S_ISFIFO(info.st_mode)
            else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
    return f"{shown} is {kind} (a tree holds only files and folders)"
