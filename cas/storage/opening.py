"""Opening a store's files safely: the checks made before blobs and catalog are used.

- A catalog on NFS or SMB/CIFS is refused (SPEC guarantee 9): SQLite's locks are unreliable
  there and catalogs get corrupted ("database disk image is malformed", diskcache #13, #164,
  #198, #345), and WAL needs every process on one host. ``allow_network_fs`` overrides it.
- A store that cannot be written (a read-only filesystem, or a root, folders or catalog without
  write permission) is opened read-only when its catalog is already there: reads work, writes
  fail with one line saying the store is not writable.
- A catalog file emptied from outside while ``blobs/`` holds content is refused: opening it
  would silently start an empty catalog over the blobs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from cas.errors import CatalogError, StoreError
from cas.logs import log
from cas.settings import Settings
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog
from cas.storage.catalog_file import damaged_catalog, refuse_links
from cas.storage.layout import Layout

#: Filesystem types where SQLite is known to be unsafe (as /proc/mounts names them).
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs"})
#: The mount table read for filesystem types; a seam for tests, which point it at a file of
#: their own to pretend a store is on NFS.
MOUNTS = Path("/proc/mounts")

_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (which need not exist yet), from the mount
    table: the entry with the longest mount point above it. None when unknown."""
    target = os.path.realpath(path)
    best: tuple[int, str | None] = (-1, None)
    try:
        text = MOUNTS.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _ESCAPE.sub(lambda match: chr(int(match[1], 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            best = (len(point), fields[2])
    return best[1]


def check_filesystem(root: Path, allow_network_fs: bool) -> None:
    """Refuse a root on a network filesystem unless allowed; raises CatalogError saying why and
    how to override."""
    kind = filesystem_type(root)
    if kind is None or kind.split(".")[0] not in NETWORK_FILESYSTEMS:
        return
    if allow_network_fs:
        log.warning("store root %s is on %s: allowed by allow_network_fs; use it from one host"
                    " at a time", root, kind)
        return
    raise CatalogError(
        f"store root {root} is on {kind}, a network filesystem where SQLite's locking is"
        " unreliable and catalogs get corrupted; put the store on a local disk, or set"
        " CAS_ALLOW_NETWORK_FS=1 (allow_network_fs = true) if one host at a time uses it"
    )


#: Below this much free space a disk counts as full: SQLite cannot even create its ``-shm``.
FULL_DISK = 1 << 20


def _writable(paths: list[Path]) -> bool:
    return all(os.access(path, os.W_OK) for path in paths if os.path.lexists(path))


def _disk_full(root: Path) -> bool:
    try:
        info = os.statvfs(root)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < FULL_DISK


def open_files(root: Path, settings: Settings,
               clock: Callable[[], float] = time.time) -> tuple[BlobStore, Catalog]:
    """The blob files and catalog of the store at ``root``, after the checks above; the
    catalog reads the wall time from ``clock``.

    Raises CatalogError (network filesystem, damaged or newer catalog) and StoreError (a root
    that cannot be created, or written when it has no catalog yet).
    """
    check_filesystem(root, settings.allow_network_fs)
    layout = Layout(root)
    catalog_path = layout.catalog
    refuse_links(catalog_path)  # before the checks below follow it
    dir_mode = 0o2770 if settings.shared else 0o700
    folders = layout.folders()
    read_only = None
    if os.path.isdir(root) and not _writable([*folders, catalog_path]):
        if not catalog_path.is_file():
            raise StoreError(f"store root {root} is not writable")
        read_only = "opened read-only"
        log.info("store root %s is not writable: opened read-only", root)
    blobs = BlobStore(root, dir_mode=dir_mode, durable=settings.durable, read_only=read_only)
    _check_not_emptied(catalog_path, blobs)
    lock = layout.setup_lock
    try:
        catalog = Catalog(catalog_path, lock, durable=settings.durable, read_only=read_only,
                          locks=blobs.locks, clock=clock)
    except CatalogError:
        # A full disk fails even reads: SQLite cannot create the -shm file of WAL mode.
        if read_only or not catalog_path.is_file() or not _disk_full(root):
            raise
        read_only = blobs.read_only = "no space left on the device; opened read-only"
        log.info("the disk of store root %s is full: opened read-only", root)
        catalog = Catalog(catalog_path, lock, durable=settings.durable, read_only=read_only,
                          locks=blobs.locks, clock=clock)
    return blobs, catalog


def _check_not_emptied(catalog_path: Path, blobs: BlobStore) -> None:
    # A crash while a catalog is first created leaves it empty too, but then blobs/ is empty:
    # nothing can be stored before the catalog exists. So the catalog is looked at again after
    # a blob was found: one that another process has just created is empty at the first look
    # and may have received its schema and a blob before the scan.
    if _is_empty(catalog_path) and blobs.has_any() and _is_empty(catalog_path):
        raise CatalogError(damaged_catalog(catalog_path, "it is empty, but blobs/ holds files"))


def _is_empty(catalog_path: Path) -> bool:
    try:
        return os.stat(catalog_path).st_size == 0  # stat, never open: SQLite's locks
    except FileNotFoundError:
        return False
