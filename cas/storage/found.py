"""What a scan of ``blobs/`` finds (``BlobStore.scan``): each entry with its kind and status,
and whether an entry is still the one scanned. Verification's, loaded when a scan runs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Found:
    """An entry under ``blobs/`` as a scan saw it."""

    path: Path
    kind: str  #: "blob", "symlink" or "stray"
    info: os.stat_result
    digest: str | None = None  #: for a blob


def kind_of(info: os.stat_result, named: bool, *, folder: bool) -> str:
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
    return same(now, found.info)


def same(now: os.stat_result, then: os.stat_result) -> bool:
    return (now.st_dev, now.st_mode, now.st_size, signature(now)) == (
        then.st_dev, then.st_mode, then.st_size, signature(then))
