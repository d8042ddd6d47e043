"""Reading: what a ref names, and the stored blob a read gets (the listing of a store and its
stats are ops/listing.py).

A ref is a digest, a name, or a digest prefix of 8 to 63 hex digits that is no name (a name
wins). ``Reader.locate`` is the hot path of every ``path``, ``open`` and ``lease`` of a digest
or a name: one SELECT and one lstat when the blob is stored (hits and misses are counted in
memory, cas/storage/counters.py: no write per read); anything unusual (a bad or unknown ref, an
evicted or damaged blob) takes the full path, where a named fixture evicted from the store is
fetched again through the fetch callable the store gives (when ``auto_download`` is on).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol

from cas.errors import IntegrityError, NotFound, StoreError, UsageError
from cas.logs import log
from cas.refs import check_name, is_digest, is_digest_prefix
from cas.storage import queries as q
from cas.storage.blobs import REMEMBERED_PATHS, BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.storage.layout import view_label

if TYPE_CHECKING:
    from cas.ops.record import Clock
    from cas.storage.trees import Tree


class Target(NamedTuple):
    """What a ref resolved to."""

    digest: str
    name: str | None
    size: int | None
    last_access: float | None


def resolve(conn: Connection | Catalog, ref: str) -> Target:
    """What ``ref`` names, read inside ``conn``'s transaction or alone on the catalog.

    Raises UsageError for a ref that is no digest or name, NotFound for an unknown one.
    """
    if not isinstance(ref, str):
        raise UsageError(f"a ref must be a digest or a name, not {type(ref).__name__}")
    if is_digest(ref):
        digest = ref.lower()
        row = q.find_blob(conn, digest)
        if row is None:
            raise NotFound(f"no blob {digest} in the store")
        return Target(digest, None, row.size, row.last_access)
    check_name(ref)
    named = q.find_name(conn, ref)
    if named is not None:
        return Target(named.digest, ref, named.size, named.last_access)
    if is_digest_prefix(ref):  # only when no name matched: a name wins
        return _by_prefix(conn, ref)
    raise NotFound(f"no name {ref!r} in the store")


def _by_prefix(conn: Connection | Catalog, ref: str) -> Target:
    """The one stored blob whose digest begins with ``ref`` (8 to 63 hex digits, any case).

    Raises NotFound when none does, UsageError naming the candidates when several do.
    """
    prefix = ref.lower()
    matches = q.blobs_with_prefix(conn, prefix)
    row = q.find_blob(conn, matches.digests[0]) if matches.matched == 1 else None
    if row is not None:
        return Target(row.digest, None, row.size, row.last_access)
    if matches.matched > 1:
        raise UsageError(ambiguous(prefix, matches.matched, matches.digests))
    raise NotFound(f"no name {ref!r} and no blob whose digest begins with {prefix} in the store")


def ambiguous(prefix: str, count: int, digests: list[str]) -> str:
    """The one line that refuses a digest prefix matching ``count`` blobs, of which
    ``digests`` are named."""
    more = f" and {count - len(digests)} more" if count > len(digests) else ""
    return (f"digest prefix {prefix} is ambiguous: {count} blobs match ({', '.join(digests)}"
            f"{more}); give more digits")


class Refetch(Protocol):
    """Fetches a named fixture's content again from its recorded source (the store's fetch)."""

    def __call__(self, url: str, *, name: str | None, blake3: str, sha256: str | None,
                 size: int | None, unpack: str | None) -> object: ...


class Reader:
    """Reads of one store's blobs and catalog."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, clock: Clock, fetch: Refetch,
                 auto_download: bool) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._clock = clock
        self._fetch = fetch
        self._auto_download = auto_download
        self._paths: dict[str, Path] = {}

    def locate(self, ref: str) -> str:
        """The digest of the whole, stored blob ``ref`` names, fetched again if it was evicted.

        Raises NotFound, UsageError, or IntegrityError when the blob's file is damaged.
        """
        if type(ref) is str:
            row = q.stored_blob(self._catalog, ref)
            if row is not None and self._blobs.has(row[0], row[1]):
                self._catalog.touch(row[0], row[2])
                self._catalog.count(Counter.HITS)
                return row[0]
        try:
            target = resolve(self._catalog, ref)
        except NotFound:
            self._catalog.count(Counter.MISSES)
            raise
        missed = False  # one request is one miss or one hit, even when refetched
        if target.size is None or target.last_access is None:
            missed = True
            self._catalog.count(Counter.MISSES)
            target = self._refetch(ref, target)
            assert target.size is not None and target.last_access is not None  # refetch checks
        if not self._blobs.has(target.digest, target.size):
            if not missed:
                self._catalog.count(Counter.MISSES)
            raise IntegrityError(
                f"blob {target.digest} is in the catalog but its file is missing or damaged;"
                " run `cas verify`",
                path=str(self._blobs.path_of(target.digest)),
            )
        self._catalog.touch(target.digest, target.last_access)
        if not missed:
            self._catalog.count(Counter.HITS)
        return target.digest

    def path_of(self, ref: str) -> Path:
        """``path`` as a Path, remembered: building one costs more than the look-up's lstat."""
        shown = self.path(ref)
        path = self._paths.get(shown)
        if path is None:
            if len(self._paths) >= REMEMBERED_PATHS:
                self._paths.clear()
            path = self._paths[shown] = Path(shown)
        return path

    def path(self, ref: str, name: str | None = None) -> str:
        """The path that shows what ``ref`` names (fetched again if evicted): the named view of
        a name (``views/ab/<digest>/<label>``), the folder of a tree, or else the blob itself.
        ``name`` labels the view in place of ``ref``. The hot path is one SELECT, the blob's
        lstat and the view's.

        Raises as ``locate``; a store that cannot build a file's view serves the blob's path.
        """
        if type(ref) is str:
            row = q.stored_blob(self._catalog, ref)
            if row is not None:
                info = self._blobs.stat(row[0])
                if info is not None and info.st_size == row[1]:
                    self._catalog.touch(row[0], row[2])
                    self._catalog.count(Counter.HITS)
                    named = name if name is not None else (
                        None if len(ref) == 64 and is_digest(ref) else ref)
                    if named is not None and row[3] is None:  # a named file: its view
                        view = self._blobs.views.file(row[0], view_label(named, row[0]), info)
                        if view is not None:
                            return view
                    return self.shown(row[0], named, row[3] is not None, info)
        digest = self.locate(ref)
        return self.shown_for(ref, digest, name)

    def shown_for(self, ref: str, digest: str, name: str | None = None) -> str:
        """``shown`` of the blob ``digest`` that ``ref`` located (a name labels its view)."""
        from cas.storage import trees

        if name is None and not is_digest(ref) and q.find_name(self._catalog, ref) is not None:
            name = ref
        tree = trees.find(self._catalog, digest) is not None
        return self.shown(digest, name, tree, self._blobs.stat(digest))

    def shown(self, digest: str, name: str | None, tree: bool, info: object) -> str:
        """The path showing the stored blob ``digest``: a tree's folder, a name's view, or
        the blob's own path (a digest, or a store that cannot build the view)."""
        views = self._blobs.views
        if tree:
            return self.tree_view(digest, view_label(name, digest))
        if name is not None and info is not None:
            view = views.file(digest, view_label(name, digest), info)  # type: ignore[arg-type]
            if view is not None:
                return view
        return self._blobs.location(digest)

    def tree_view(self, digest: str, label: str) -> str:
        """The folder of the tree ``digest``, built from its record when missing. Raises
        IntegrityError when its record or a member's blob is missing or damaged."""
        from cas.storage import trees

        def members() -> Tree:
            try:
                with self._blobs.open(digest) as blob:
                    return trees.decode(blob.read())
            except OSError as error:
                raise IntegrityError(f"cannot open tree record {digest}: {error.strerror};"
                                     " run `cas verify`") from error

        try:
            view = self._blobs.views.tree(digest, label, members)
        except FileNotFoundError as error:
            raise IntegrityError(
                f"tree {digest} cannot be shown: a member's blob is missing"
                f" ({error.filename}); run `cas verify`") from error
        if view is None:
            raise StoreError(f"tree {digest} has no folder yet and the store is read-only;"
                             " show it once from a writable store")
        return view

    def open(self, ref: str) -> BinaryIO:
        """An open file of the blob ``ref`` names. Raises IntegrityError when it cannot be
        opened: a damaged store, whose blob ``cas verify`` checks."""
        from cas.storage import trees

        digest = self.locate(ref)
        if (tree := trees.find(self._catalog, digest)) is not None:
            raise UsageError(f"{ref!r} is a tree (a folder of {tree.files} files), not a file;"
                             " use `cas path` for its folder")
        try:
            return self._blobs.open(digest)
        except OSError as error:
            raise IntegrityError(
                f"cannot open blob {digest}: {error.strerror}; run `cas verify`"
            ) from error

    def _refetch(self, ref: str, target: Target) -> Target:
        """Fetch a named fixture whose blob was evicted again from its recorded source."""
        with self._catalog.read() as conn:
            source = q.find_name(conn, target.name) if target.name is not None else None
        if source is None or source.url is None:
            raise NotFound(f"fixture {ref!r} is named but its blob {target.digest} is not stored")
        if not self._auto_download:
            raise NotFound(
                f"fixture {ref!r} is not stored and auto_download is off;"
                f" fetch it from {source.url} or turn auto_download on"
            )
        log.info("fixture %r is not stored; fetching it again from %s", ref, source.url)
        self._fetch(source.url, name=target.name, blake3=target.digest, sha256=source.sha256,
                    size=source.expected_size, unpack=source.unpack)
        with self._catalog.read() as conn:
            again = resolve(conn, ref)
        if again.size is None or again.last_access is None:
            raise NotFound(f"fixture {ref!r} was fetched again but removed at once; retry")
        return again
