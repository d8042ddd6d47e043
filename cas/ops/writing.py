"""The operations that write or clean up, wired together for one store.

A store builds them on its first write (cas/store.py), so that opening a store to read from it
never imports them: put, names, record (publish then record), cleanup and its upkeep.
"""

from __future__ import annotations

import threading

from cas.ops.cleanup import Cleaner
from cas.ops.names import Names
from cas.ops.put import Putter
from cas.ops.record import Clock, Recorder
from cas.ops.upkeep import Upkeep
from cas.settings import Settings
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog


class Writers:
    """One store's write operations; ``closed`` is the store's, which ends its cleanups."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, settings: Settings, clock: Clock,
                 closed: threading.Event) -> None:
        self.recorder = Recorder(blobs, catalog, clock)
        self.cleaner = Cleaner(blobs, catalog, clock)
        self.upkeep = Upkeep(catalog, settings, clock, self.cleaner, closed)
        self.putter = Putter(blobs, catalog, clock, self.upkeep.after_write)
        self.names = Names(blobs, catalog, self.cleaner, clock)
