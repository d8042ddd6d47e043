"""The listing of a store (``ls``: every name and blob with its state) and its stats report.

Apart from reading (ops/lookup.py), which every ``path`` imports: these load when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cas.ops.leases import dead_leases
from cas.storage import queries as q
from cas.storage import trees
from cas.storage.blobs import BlobStore, quarantined
from cas.storage.catalog import Catalog
from cas.storage.metrics import Stats, Usage
from cas.storage.staging import staging_debris, staging_usage

if TYPE_CHECKING:
    from cas.ops.record import Clock
    from cas.settings import Settings


@dataclass(frozen=True)
class Entry:
    """One line of a listing: a name and its blob, or a blob without a name."""

    name: str | None
    digest: str
    size: int | None
    last_access: float | None
    pinned: bool
    source: str | None
    leases: int = 0  #: live leases on the blob (SPEC: ``ls`` shows lease state)
    damaged: bool = False  #: its file is missing or of the wrong size, or verify found it so
    kind: str = "file"  #: ``file``, or ``tree`` (a folder: ``size`` is its files' total)
    files: int | None = None  #: a tree's number of files

    @property
    def present(self) -> bool:
        """Whether the blob is in the store (a named fixture's may have been evicted)."""
        return self.size is not None

    @property
    def state(self) -> str:
        """``stored``; ``damaged`` (its row is there but its file is missing or of the wrong
        size, or verify found it damaged and dropped the row); or ``evicted`` (cleanup removed
        it; a named fixture with a source comes back when used)."""
        if self.damaged:
            return "damaged"
        return "stored" if self.present else "evicted"


def entries(blobs: BlobStore, catalog: Catalog, clock: Clock) -> list[Entry]:
    """Every name with its blob, then every blob that has no name, with their live leases
    and whether a stored blob's file is missing or damaged (checked by size, not hashed)."""
    with catalog.read() as conn:
        rows = q.entries(conn)
        now = clock()
        leases = q.live_lease_counts(conn, now, dead_leases(conn, now))
        damaged = q.damaged_digests(conn)

    def is_damaged(row: q.EntryRow) -> bool:
        if row.size is None:  # evicted, or dropped by verify as damaged
            return row.digest in damaged
        return not blobs.has(row.digest, row.size)

    return [
        Entry(row.name, row.digest, row.size if row.files is None else row.tree_size,
              row.last_access, bool(row.pinned), row.url, leases.get(row.digest, 0),
              is_damaged(row), "file" if row.files is None else "tree", row.files)
        for row in rows
    ]


def stats(blobs: BlobStore, catalog: Catalog, clock: Clock, settings: Settings) -> Stats:
    """Counters, storage use, water marks, staging and quarantine, with this process's
    waiting counts written first."""
    catalog.flush()
    now = clock()
    with catalog.read() as conn:
        counts = q.counter_values(conn)
        row = q.usage(conn, now, dead_leases(conn, now))
        tree_count = trees.count(conn)
    tmp, locks = blobs.tmp_dir, blobs.locks_dir
    usage = Usage(row.bytes, row.blobs, row.names, row.live_leases)
    return Stats.build(counts, usage, settings, staging_debris(tmp, locks),
                       staging_usage(tmp, locks), quarantined(blobs.quarantine_dir),
                       (tree_count, *blobs.views.usage()))
