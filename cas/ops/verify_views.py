"""Verification of trees and views (part of ``cas verify``, cas/ops/verify.py).

    tree   a stored tree one of whose members has no blob (missing, damaged or removed): the
           tree is damaged and reported; nothing can be put back (its bytes came from a folder)
    view   an entry under ``views/`` that is not a view of a stored blob, or not its blob's
           (a file view that is not the blob's inode, a tree view that is not a folder, or,
           in full mode, a tree view whose files are not its members): removed, and built
           again on the next ``path()``

Views are hard links of blobs, so a blob's link count above one is never damage.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

from cas.ops.findings import Finding, VerifyReport
from cas.storage import trees
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.folder import NOFOLLOW_DIR

_SHARD = r"[0-9a-f]{2}"
_DIGEST = r"[0-9a-f]{64}"


def check_trees(catalog: Catalog, report: VerifyReport) -> None:
    """Report every stored tree that misses a member's blob (damage that remains)."""
    with catalog.read() as conn:
        broken = _broken_trees(conn)
        names = {digest: _names(conn, digest) for digest in broken}
    for digest, (count, example) in sorted(broken.items()):
        report.findings.append(Finding(
            "tree", digest,
            f"{count} of its files have no blob (first: {example!r})",
            "none: put the folder again (or fetch it again) to restore them",
            remains=True, names=names[digest],
        ))  # fmt: skip


def _broken_trees(conn: Connection) -> dict[str, tuple[int, str]]:
    rows = conn.execute(
        "SELECT e.tree, count(*), min(e.path) FROM tree_entries e"
        " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = e.digest)"
        " GROUP BY e.tree")
    return {tree: (count, path) for tree, count, path in rows}


def _names(conn: Connection, digest: str) -> tuple[str, ...]:
    return tuple(name for (name,) in conn.execute(
        "SELECT name FROM names WHERE digest = ? ORDER BY name", (digest,)))


def check_views(blobs: BlobStore, catalog: Catalog, report: VerifyReport, *,
                full: bool) -> None:
    """Remove every entry under ``views/`` that is not a right view of a stored blob."""
    views = blobs.views
    entries = list(views.scan())
    shown = {relative.split("/")[1] for relative, _ in entries if relative.count("/") == 1}
    with catalog.read() as conn:  # only the digests that have views: not the whole catalog
        stored = shown.difference(trees.missing_members(conn, shown))
        tree_rows = trees.all_trees(conn)
    wrong: list[tuple[str, str]] = []
    for relative, info in entries:
        parts = relative.split("/")
        problem = _problem(blobs, parts, info, stored, tree_rows)
        if problem is None and full and len(parts) == 3 and parts[1] in tree_rows:
            with catalog.read() as conn:
                members = trees.members(conn, parts[1])
            problem = _tree_view_problem(blobs, relative, members)
        if problem is not None:
            wrong.append((relative, problem))
    removed: set[str] = set()
    for relative, problem in wrong:
        if any(relative.startswith(f"{gone}/") for gone in removed):
            continue  # went with its folder
        with contextlib.suppress(FileNotFoundError):
            views.remove_entry(relative)
        removed.add(relative)
        report.findings.append(Finding(
            "view", f"views/{relative}", problem, "removed; built again when next used"))


def _problem(blobs: BlobStore, parts: list[str], info: os.stat_result, stored: set[str],
             tree_rows: dict[str, trees.TreeRow]) -> str | None:
    """What is wrong with the entry ``parts`` of ``views/`` (lstat ``info``), or None."""
    if len(parts) < 3:
        if not stat.S_ISDIR(info.st_mode):
            return "not a folder"
        if len(parts) == 1:
            return None if re.fullmatch(_SHARD, parts[0]) else "not a shard folder"
        if not (re.fullmatch(_DIGEST, parts[1]) and parts[1].startswith(parts[0])):
            return "not named by a digest of its shard"
        return None if parts[1] in stored else "a view of a blob that is not stored"
    digest = parts[1]
    if digest in tree_rows:
        return None if stat.S_ISDIR(info.st_mode) else "a tree's view that is not a folder"
    blob = blobs.stat(digest)
    if blob is None:
        return "a view of a blob whose file is missing"
    if (info.st_ino, info.st_dev) != (blob.st_ino, blob.st_dev):
        return "not a link of its blob"
    return None


def _tree_view_problem(blobs: BlobStore, relative: str,
                       members: list[trees.TreeFile]) -> str | None:
    """In full mode: whether a tree view holds exactly its members, each its blob."""
    views = blobs.views.folder.fd()
    for member in members:
        try:
            info = os.stat(f"{relative}/{member.path}", dir_fd=views, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return f"{member.path!r} is missing"
        if not stat.S_ISREG(info.st_mode) or info.st_size != member.size:
            return f"{member.path!r} is not its file"
        if member.executable:
            continue  # a copy: its size was checked (the blob's content is verified itself)
        blob = blobs.stat(member.digest)
        if blob is None or (blob.st_ino, blob.st_dev) != (info.st_ino, info.st_dev):
            return f"{member.path!r} is not a link of its blob"
    expected = len(members)
    found = 0
    top = os.open(relative, NOFOLLOW_DIR, dir_fd=views)
    try:
        for _, _, files, _ in os.fwalk(dir_fd=top, follow_symlinks=False):
            found += len(files)
    finally:
        os.close(top)
    return None if found == expected else f"holds {found} files, its tree {expected}"
