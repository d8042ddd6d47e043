"""The public face of a store: put, path, tag, remove and listing over blobs and catalog.

Order of files and rows (docs/architecture.md): a blob's file is published, then its row is
inserted, both inside one IMMEDIATE transaction; a row is deleted and committed first, and the
file is unlinked later, again under the write lock and only if no row came back meanwhile. So a
crash leaves at most a file without a row, never a row without its file.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Union

from sqlalchemy import Connection

from . import catalog as q
from .blobs import BlobStore, Staged, hasher
from .catalog import Catalog
from .errors import CasError, IntegrityError, NotFound, StoreError, UsageError
from .refs import check_name, is_digest
from .settings import Settings, default_root, load_settings

log = logging.getLogger("cas")

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


@dataclass(frozen=True)
class Entry:
    """One line of a listing: a name and its blob, or a blob without a name."""

    name: str | None
    digest: str
    size: int | None
    last_access: float | None
    pinned: bool
    source: str | None

    @property
    def present(self) -> bool:
        """Whether the blob is in the store (a named fixture's may have been evicted)."""
        return self.size is not None


@dataclass(frozen=True)
class _Target:
    """What a ref resolved to."""

    digest: str
    name: str | None
    size: int | None
    last_access: float | None


class _Restage(Exception):
    """The blob vanished between the check and the transaction: stage it after all."""


class Store:
    """A content-addressed store at one root, safe to share between threads and processes."""

    def __init__(self, root: Path, settings: Settings, blobs: BlobStore, catalog: Catalog) -> None:
        self.root = root
        self.settings = settings
        self._blobs = blobs
        self._catalog = catalog
        self._finalizer = weakref.finalize(self, catalog.close)

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, **settings: Any) -> Store:
        """Open (creating if needed) the store at ``root``, else ``$CAS_HOME`` or the user cache.

        Raises StoreError when the root cannot be used, CatalogError when catalog.db cannot.
        """
        path = Path(root).expanduser() if root is not None else default_root()
        path = path.absolute()
        if path.exists() and not path.is_dir():
            raise StoreError(f"store root {path} is not a folder")
        resolved = load_settings(path, settings)
        blobs = BlobStore(path, dir_mode=0o2770 if resolved.shared else 0o700)
        if not os.access(path, os.W_OK | os.X_OK):
            raise StoreError(f"store root {path} is not writable")
        catalog = Catalog(path / "catalog.db", blobs.locks_dir / "setup.lock")
        return cls(path, resolved, blobs, catalog)

    def close(self) -> None:
        """Write what waits in memory (access times) and release the catalog."""
        self._finalizer()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cas.Store {str(self.root)!r}>"

    # -- writing -------------------------------------------------------------------------------

    def put(self, source: Source, *, name: str | None = None) -> str:
        """Store the content of a path, bytes, or binary file; return its BLAKE3 digest.

        Content already stored is not written again. Raises NotFound for a missing source
        file, UsageError for a folder or a bad name.
        """
        if name is not None:
            check_name(name)
        staged: Staged | None = None
        try:
            if isinstance(source, bytes | bytearray | memoryview):
                digest, size = _digest_of(source), len(source)
                if not self._blobs.has(digest, size):
                    staged = self._blobs.stage_bytes(source, digest)
            else:
                staged = self._stage(source)
                digest, size = staged.digest, staged.size
            try:
                self._catalog.write(lambda conn: self._record(conn, staged, digest, size, name))
            except _Restage:
                assert isinstance(source, bytes | bytearray | memoryview)
                staged = self._blobs.stage_bytes(source, digest)
                self._catalog.write(lambda conn: self._record(conn, staged, digest, size, name))
        except OSError as error:
            raise _os_error(error, "cannot store the content") from error
        finally:
            if staged is not None:
                staged.discard()
        log.debug("put %s (%d bytes)%s", digest, size, f" as {name!r}" if name else "")
        return digest

    def _stage(self, source: Any) -> Staged:
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            try:
                return self._blobs.stage_file(path)
            except FileNotFoundError as error:
                raise NotFound(f"source file {str(path)!r} does not exist") from error
            except IsADirectoryError as error:
                raise UsageError(f"{str(path)!r} is a folder, not a file") from error
            except PermissionError as error:
                raise CasError(f"cannot read {str(path)!r}: permission denied") from error
        if hasattr(source, "read"):
            try:
                return self._blobs.stage_stream(source)
            except TypeError as error:
                raise UsageError(str(error)) from error
        raise UsageError(
            f"cannot put a {type(source).__name__}: give a path, bytes or a binary file"
        )

    def _record(
        self, conn: Connection, staged: Staged | None, digest: str, size: int, name: str | None
    ) -> None:
        """Publish if needed and record the row; runs under the write lock."""
        if not self._blobs.has(digest, size):
            if staged is None or not staged.path.exists():
                raise _Restage()
            self._blobs.publish(staged)
        now = time.time()
        q.record_blob(conn, digest, size, now)
        if name is not None:
            q.set_name(conn, name, digest, now)

    def tag(self, name: str, ref: str) -> str:
        """Point ``name`` at the blob ``ref`` names; return the digest."""
        check_name(name)

        def work(conn: Connection) -> str:
            target = self._resolve(conn, ref)
            if target.size is None:
                raise NotFound(f"{ref!r} has no blob in the store to tag")
            source = q.find_name(conn, ref) if target.name else None
            q.set_name(
                conn,
                name,
                target.digest,
                time.time(),
                url=source.url if source else None,
                sha256=source.sha256 if source else None,
            )
            return target.digest

        return self._catalog.write(work)

    def untag(self, name: str) -> None:
        """Remove a name; its blob stays. Raises NotFound for an unknown name."""
        check_name(name)
        if not self._catalog.write(lambda conn: q.delete_name(conn, name)):
            raise NotFound(f"no name {name!r} in the store")

    def remove(self, ref: str, *, force: bool = False) -> list[str]:
        """Remove a name or a digest; return the digests whose files were removed.

        A digest removes the blob and every name pointing at it. A name removes the name, and
        its blob too when no other name points at it.
        """
        del force  # leases arrive with eviction; until then nothing is ever in use

        def work(conn: Connection) -> list[str]:
            target = self._resolve(conn, ref)
            if target.name is not None:
                q.delete_name(conn, target.name)
                if q.names_of(conn, target.digest):
                    return []
            else:
                for other in q.names_of(conn, target.digest):
                    q.delete_name(conn, other)
            return [target.digest] if q.delete_blob(conn, target.digest) else []

        doomed = self._catalog.write(work)
        self._unlink(doomed)
        return doomed

    def _unlink(self, digests: list[str]) -> None:
        """Unlink files whose rows are gone, under the write lock, unless a put brought a row back."""
        if not digests:
            return

        def work(conn: Connection) -> None:
            for digest in q.without_rows(conn, digests):
                self._blobs.unlink(digest)

        self._catalog.write(work)

    # -- reading -------------------------------------------------------------------------------

    def _resolve(self, conn: Connection, ref: str) -> _Target:
        if not isinstance(ref, str):
            raise UsageError(f"a ref must be a digest or a name, not {type(ref).__name__}")
        if is_digest(ref):
            digest = ref.lower()
            row = q.find_blob(conn, digest)
            if row is None:
                raise NotFound(f"no blob {digest} in the store")
            return _Target(digest, None, row.size, row.last_access)
        check_name(ref)
        named = q.find_name(conn, ref)
        if named is None:
            raise NotFound(f"no name {ref!r} in the store")
        return _Target(named.digest, ref, named.size, named.last_access)

    def _locate(self, ref: str) -> _Target:
        with self._catalog.read() as conn:
            target = self._resolve(conn, ref)
        if target.size is None or target.last_access is None:
            raise NotFound(f"fixture {ref!r} is named but its blob {target.digest} is not stored")
        if not self._blobs.has(target.digest, target.size):
            raise IntegrityError(
                f"blob {target.digest} is in the catalog but its file is missing or damaged;"
                " run `cas verify`",
                path=str(self._blobs.path_of(target.digest)),
            )
        self._catalog.touch(target.digest, target.last_access)
        return target

    def path(self, ref: str) -> Path:
        """The read-only path of the blob ``ref`` names. Raises NotFound for an unknown ref."""
        return self._blobs.path_of(self._locate(ref).digest)

    def open_blob(self, ref: str) -> BinaryIO:
        """An open binary file of the blob's content."""
        target = self._locate(ref)
        try:
            return self._blobs.open(target.digest)
        except OSError as error:
            raise IntegrityError(
                f"cannot open blob {target.digest}: {error.strerror}; run `cas verify`"
            ) from error

    def read_bytes(self, ref: str) -> bytes:
        """The whole content of the blob ``ref`` names."""
        with self.open_blob(ref) as blob:
            return blob.read()

    def entries(self) -> list[Entry]:
        """Every name with its blob, then every blob that has no name."""
        with self._catalog.read() as conn:
            rows = q.entries(conn)
        return [
            Entry(row.name, row.digest, row.size, row.last_access, bool(row.pinned), row.url)
            for row in rows
        ]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())


def _digest_of(data: bytes | bytearray | memoryview) -> str:
    digest = hasher()
    digest.update(data)
    return str(digest.hexdigest())


def _os_error(error: OSError, doing: str) -> CasError:
    """Translate an OSError met while writing into a one-line CasError."""
    if error.errno == errno.ENOSPC:
        return StoreError(f"{doing}: no space left on the device; nothing was changed")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"{doing}: {error.strerror} ({error.filename}); nothing was changed")
    return StoreError(f"{doing}: {error.strerror or error}")
