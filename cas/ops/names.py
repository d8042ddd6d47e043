"""Names: tagging a blob, untagging, pinning, and removing a name or a blob.

A name points at one blob; a blob may have many names, or none. Removal follows the store's
order of rows and files (docs/architecture.md): the rows go and commit first, and the files are
unlinked after, by the cleaner, only if no row came back meanwhile. A blob with a live lease is
not removed unless forced (its leases go with it then).
"""

from __future__ import annotations

from cas.errors import InUse, NotFound, UsageError
from cas.ops.cleanup import Cleaner
from cas.ops.leases import dead_leases
from cas.ops.lookup import resolve
from cas.ops.record import Clock
from cas.refs import check_name
from cas.storage import queries as q
from cas.storage import trees
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection


class Names:
    """Changes to the names and blobs of one store."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, cleaner: Cleaner,
                 clock: Clock) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._cleaner = cleaner
        self._clock = clock

    def tag(self, name: str, ref: str) -> str:
        """Point ``name`` at the blob ``ref`` names (keeping a named ref's source); return
        the digest. Raises NotFound when the blob is not stored."""
        check_name(name)

        def work(conn: Connection) -> str:
            target = resolve(conn, ref)
            if target.size is None:
                raise NotFound(f"{ref!r} has no blob in the store to tag")
            source = q.find_name(conn, ref) if target.name else None
            q.set_name(conn, name, target.digest, self._clock(),
                       url=source.url if source else None,
                       sha256=source.sha256 if source else None)  # fmt: skip
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
        its blob too when no other name points at it. Raises InUse for a leased blob unless
        ``force``.
        """
        def work(conn: Connection) -> list[str]:
            target = resolve(conn, ref)
            if target.name is not None:
                q.delete_name(conn, target.name)
                if q.names_of(conn, target.digest):
                    return []
            holder = trees.holder_of(conn, target.digest)
            if holder is not None and not force:
                if target.name is not None:
                    return []  # the name went; the blob stays with its tree
                raise InUse(f"{ref!r} is a file of the stored tree {holder}; remove the tree"
                            " first, or force it (the tree is then damaged)")
            if force:
                q.delete_leases_of(conn, target.digest)  # void: their blob is gone
            else:
                now = self._clock()
                live = q.live_leases(conn, target.digest, now, dead_leases(conn, now))
                if live:
                    raise InUse(f"{ref!r} is leased ({live} live lease{'s' * (live > 1)})")
            self._blobs.check_removable([target.digest])
            if target.name is None:
                for other in q.names_of(conn, target.digest):
                    q.delete_name(conn, other)
            return [target.digest] if q.delete_blob(conn, target.digest) else []

        doomed = self._catalog.write(work)
        self._cleaner.unlink(doomed)
        return doomed

    def set_pinned(self, ref: str, pinned: bool) -> None:
        """Pin or unpin a name, or every name of a digest. Raises UsageError for a digest
        without names."""
        def work(conn: Connection) -> int:
            target = resolve(conn, ref)
            return q.set_pinned(conn, target.digest, target.name, pinned)

        if not self._catalog.write(work):
            raise UsageError(f"blob {ref} has no name to pin; give it one with `cas tag` first")
