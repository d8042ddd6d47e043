"""Putting content into the store: stage, sync, then publish and record, in batches.

A source (a path, bytes or a binary file) is hashed while it is copied into a staging file under
``tmp/``; bytes whose blob is stored already are not staged at all. A batch is then published
and recorded in one write transaction (cas/ops/record.py). One item is synced with its own
fsyncs; a batch shares one syncfs for its staged files, outside the write lock, and an fsync of
each shard folder, under it; both before the commit, so a row is never durable before its file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Union

from cas.errors import CasError, NotFound, StoreError, UsageError, os_error
from cas.logs import log
from cas.ops.record import Clock, Restage, publish_and_record
from cas.refs import check_name
from cas.storage import queries as q
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.storage.hashing import hasher
from cas.storage.staging import Staged

#: What ``put`` takes: a path, bytes, or a binary file.
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

#: Items per transaction of ``put_many``: the write lock is held for the renames and an fsync
#: of each shard folder (tens of milliseconds), and that many staged files at most wait in tmp/.
PUT_BATCH = 1000

_Item = tuple[str | None, Source]
#: Work done inside a put's write transaction, after its blobs are recorded: told the
#: transaction and the (digest, size) of each item (a tree records its rows so).
Extra = Callable[[Connection, list[tuple[str, int]]], None]


class Putter:
    """Puts content into one store's blobs and catalog.

    ``stored(total)`` is told the bytes the store holds after each batch (the cleanup trigger).
    """

    def __init__(self, blobs: BlobStore, catalog: Catalog, clock: Clock,
                 stored: Callable[[int], None]) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._clock = clock
        self._stored = stored

    def put(self, source: Source, name: str | None = None) -> str:
        """Store one source, named ``name`` if given; return its digest."""
        return self._batch([(name, source)])[0][0]

    def put_many(self, sources: Mapping[str, Source] | Iterable[Source]) -> list[str]:
        """Store many sources, ``PUT_BATCH`` per transaction; return their digests in order.

        A mapping names each source; any other iterable stores them unnamed.
        """
        return [digest for digest, _ in self.put_sized(sources)]

    def put_sized(self, sources: Mapping[str, Source] | Iterable[Source]
                  ) -> list[tuple[str, int]]:  # fmt: skip
        """``put_many``, returning each content's (digest, size)."""
        items: Iterable[_Item]
        if isinstance(sources, Mapping):
            items = sources.items()
        elif isinstance(sources, str | bytes | bytearray | memoryview | os.PathLike) or hasattr(
            sources, "read"
        ):
            raise UsageError("put_many takes a collection of sources; use put for one")
        else:
            items = ((None, source) for source in sources)
        sized: list[tuple[str, int]] = []
        batch: list[_Item] = []
        for name, source in items:
            if isinstance(source, bytearray | memoryview):
                source = bytes(source)  # a buffer the caller reuses must not change meanwhile
            batch.append((name, source))
            if len(batch) == PUT_BATCH:
                sized += self._batch(batch)
                batch = []
        if batch:
            sized += self._batch(batch)
        return sized

    def put_with(self, source: Source, name: str | None, extra: Extra) -> str:
        """``put``, running ``extra`` in the same write transaction (all of it or nothing)."""
        return self._batch([(name, source)], extra)[0][0]

    def _batch(self, batch: list[_Item], extra: Extra | None = None) -> list[tuple[str, int]]:
        """Stage, sync, publish and record ``batch`` as one transaction."""
        for name, _ in batch:
            if name is not None:
                check_name(name)
        alone = len(batch) == 1
        staged: list[Staged | None] = []
        try:
            with self._blobs.batch_sync() as sync_staged:
                items = [self._stage_item(source, staged, sync=alone) for _, source in batch]
                if not alone:
                    sync_staged()
                while True:
                    try:
                        known, stored = self._catalog.write(
                            lambda conn: self._record(conn, batch, items, staged, extra,
                                                      sync=alone)
                        )
                        break
                    except Restage as missing:  # removed since it was found: stage it again
                        self._restage(batch, items, staged, missing.indices, sync=alone)
                        if not alone:
                            sync_staged()
        except OSError as error:
            raise os_error(error, "cannot store the content") from error
        finally:
            for each in staged:
                if each is not None:
                    each.discard()
        if known:
            self._catalog.count(Counter.DEDUP_SAVED_BYTES, known)
        for (name, _), (digest, size) in zip(batch, items, strict=True):
            log.debug("put %s (%d bytes)%s", digest, size, f" as {name!r}" if name else "")
        self._stored(stored)
        return items

    def _restage(self, batch: list[_Item], items: list[tuple[str, int]],
                 staged: list[Staged | None], indices: list[int], *, sync: bool) -> None:
        """Stage again the items a concurrent cleanup removed; only bytes can be."""
        for index in indices:
            source = batch[index][1]
            if not isinstance(source, bytes | bytearray | memoryview):
                raise StoreError(
                    f"blob {items[index][0]} was removed by a concurrent"
                    " cleanup while being stored; put it again"
                ) from None
            staged[index] = self._blobs.stage_bytes(source, items[index][0], sync=sync)

    def _stage_item(self, source: Source, staged: list[Staged | None], *,
                    sync: bool) -> tuple[str, int]:
        """Stage one source unless it is bytes already stored; append what was staged."""
        if isinstance(source, bytes | bytearray | memoryview):
            digest, size = _digest_of(source), len(source)
            staged.append(
                None if self._blobs.has(digest, size)
                else self._blobs.stage_bytes(source, digest, sync=sync)
            )
            return digest, size
        file = self._stage(source, sync=sync)
        staged.append(file)
        return file.digest, file.size

    def _stage(self, source: Any, *, sync: bool = True) -> Staged:
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            try:
                return self._blobs.stage_file(path, sync=sync)
            except FileNotFoundError as error:
                raise NotFound(f"source file {str(path)!r} does not exist") from error
            except IsADirectoryError as error:
                raise UsageError(f"{str(path)!r} is a folder, not a file") from error
            except PermissionError as error:
                raise CasError(f"cannot read {str(path)!r}: permission denied") from error
        if hasattr(source, "read"):
            try:
                return self._blobs.stage_stream(source, sync=sync)
            except TypeError as error:
                raise UsageError(str(error)) from error
        raise UsageError(
            f"cannot put a {type(source).__name__}: give a path, bytes or a binary file"
        )

    def _record(self, conn: Connection, batch: list[_Item], items: list[tuple[str, int]],
                staged: list[Staged | None], extra: Extra | None, *,
                sync: bool) -> tuple[int, int]:
        """Publish, record the rows and the names, under the write lock; return the bytes that
        were already stored, and the bytes the store now holds."""
        now = self._clock()
        known = publish_and_record(conn, self._blobs, items, staged, now, sync=sync)
        named = zip((name for name, _ in batch), (digest for digest, _ in items), strict=True)
        q.set_names(conn, [(name, digest) for name, digest in named if name is not None], now)
        if extra is not None:
            extra(conn, items)
        return known, q.stored_totals(conn)[0]


def _digest_of(data: bytes | bytearray | memoryview) -> str:
    digest = hasher()
    digest.update(data)
    return str(digest.hexdigest())
