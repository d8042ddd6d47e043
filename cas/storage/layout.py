"""The root's layout: every folder and file name under a store's root, in one place.

    <root>/catalog.db            the catalog (WAL: -wal and -shm beside it)
    <root>/config.toml           optional settings
    <root>/blobs/ab/<digest>     one read-only file per blob
    <root>/tmp/                  staging: put-<tag>…, dl-<key>-<token>.part and its .json sidecar
    <root>/tmp/locks/            setup.lock, dl-<key>.lock (single flight of a download)
    <root>/quarantine/           blobs verify found damaged, kept for a while
    <root>/views/ab/<digest>/<label>   a named view: a hard link to the blob (a file), or a
                                 read-only folder of hard links (a tree); rebuilt on demand

Everything that builds a path under the root (the storage layer, the transfers, the tests)
asks this module, so the on-disk format has one owner. The names themselves never change:
they are the on-disk format that older and newer cas versions share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

CATALOG = "catalog.db"
CONFIG = "config.toml"
BLOBS = "blobs"
TMP = "tmp"
LOCKS = "locks"
QUARANTINE = "quarantine"
VIEWS = "views"
SETUP_LOCK = "setup.lock"

#: Staging files of puts start with this, then the writer's staging tag (storage/processes.py).
PUT_PREFIX = "put-"
#: Partial downloads, their sidecars and their single-flight locks start with this.
DOWNLOAD_PREFIX = "dl-"
PARTIAL_SUFFIX = ".part"
SIDECAR_SUFFIX = ".json"
#: A sidecar being rewritten, before it is renamed over the sidecar (never read).
SIDECAR_SCRATCH_SUFFIX = ".json-new"
LOCK_SUFFIX = ".lock"
#: Views being built in ``tmp/`` start with this, then the builder's staging tag.
VIEW_PREFIX = "view-"
#: The longest file name (in UTF-8 bytes) most file systems take.
MAX_LABEL_BYTES = 255
#: How many hex digits of the digest stand for a label that cannot be a file name.
LABEL_DIGITS = 16


class Layout(NamedTuple):
    """The paths of one store's root (a named tuple: cheaper to define than a dataclass, on
    the path of every command)."""

    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def blobs(self) -> Path:
        return self.root / BLOBS

    @property
    def tmp(self) -> Path:
        return self.root / TMP

    @property
    def locks(self) -> Path:
        return self.root / TMP / LOCKS

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    @property
    def setup_lock(self) -> Path:
        return self.locks / SETUP_LOCK

    @property
    def views(self) -> Path:
        return self.root / VIEWS

    def views_of(self, digest: str) -> Path:
        """The folder of every view of ``digest`` (``views/ab/<digest>``)."""
        return self.views / shard_of(digest) / digest

    def view(self, digest: str, label: str) -> Path:
        """The view of ``digest`` labelled ``label`` (``views/ab/<digest>/<label>``)."""
        return self.views_of(digest) / label

    def shard(self, digest: str) -> Path:
        """The folder of the blob ``digest`` (``blobs/ab``)."""
        return self.blobs / shard_of(digest)

    def blob(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (``blobs/ab/<digest>``)."""
        return self.shard(digest) / digest

    def folders(self) -> list[Path]:
        """The folders a writable store needs, parents first."""
        return [self.root, self.blobs, self.tmp, self.locks]


def shard_of(digest: str) -> str:
    """The ``blobs/`` sub-folder of a digest: its first two hex digits."""
    return digest[:2]


def blob_location(blobs_prefix: str, digest: str) -> str:
    """``blob`` as a string, for the hot look-up path (a Path costs more than the lstat);
    ``blobs_prefix`` is ``str(layout.blobs) + os.sep``."""
    return f"{blobs_prefix}{digest[:2]}{os.sep}{digest}"


def view_label(name: str | None, digest: str) -> str:
    """The file name a view of ``digest`` has: the last component of ``name`` (after its last
    ``/``); the digest's first ``LABEL_DIGITS`` hex digits for a digest ref (no name) and for a
    component that cannot be a file name (empty, ``.``, ``..``, longer than
    ``MAX_LABEL_BYTES`` in UTF-8, or holding a NUL)."""
    label = name[name.rfind("/") + 1:] if name is not None else ""
    if label in ("", ".", "..") or "\0" in label or (
            len(label) > MAX_LABEL_BYTES // 4  # only then can its UTF-8 be too long
            and len(label.encode("utf-8", "surrogatepass")) > MAX_LABEL_BYTES):
        return digest[:LABEL_DIGITS]
    return label


def view_build_name(tag: str, token: str) -> str:
    """The name in ``tmp/`` of a view being built: its builder's staging tag, then a token."""
    return f"{VIEW_PREFIX}{tag}{token}"


def download_key(key: str) -> str:
    """The file-name stem for a download of ``key`` (a URL or an expected digest): partials
    are ``<stem>-<token>.part``, their single-flight lock ``locks/<stem>.lock``."""
    import hashlib

    return DOWNLOAD_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


def put_name(tag: str, token: str) -> str:
    """The name of a put's staging file in ``tmp/``: its writer's staging tag, then a token."""
    return f"{PUT_PREFIX}{tag}{token}"


def quarantine_name(entry: str, stamp: str, token: str) -> str:
    """The name in ``quarantine/`` of the entry ``entry`` of ``blobs/`` (``ab/<digest>``, a
    path relative to ``blobs/``) moved there at ``stamp``: ``<stamp>-<token>-ab-<digest>``."""
    return f"{stamp}-{token}-{entry.replace('/', '-')}"


def partial_name(stem: str, token: str) -> str:
    return f"{stem}-{token}{PARTIAL_SUFFIX}"


def sidecar_name(partial: str) -> str:
    """The sidecar record beside the partial download named ``partial`` (``….json``)."""
    return partial.removesuffix(PARTIAL_SUFFIX) + SIDECAR_SUFFIX


def lock_name(stem: str) -> str:
    return f"{stem}{LOCK_SUFFIX}"
