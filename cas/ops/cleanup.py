"""Cleanup as mechanism: applying the eviction policy (ops/eviction.py) to catalog and files.

A cleanup goes in batches of up to ``GC_BATCH`` victims. Each batch is one write transaction
that chooses its victims, deletes their rows and counts them; their files are unlinked after the
commit, in short chunks checked again under the write lock (docs/architecture.md, "Leases and
cleanup"). Memory
stays flat whatever the size of the catalog: a batch at a time, and a report that lists the
first victims by name and counts the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cas.errors import StoreError
from cas.logs import log
from cas.ops import eviction
from cas.ops.leases import dead_leases
from cas.storage import queries as q
from cas.storage import trees
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.storage.pending import add_counts
from cas.storage.staging import disk_bytes, staging_usage

#: Victims per transaction: the write lock is held briefly, and memory stays flat.
GC_BATCH = 20_000
#: Files unlinked per transaction of ``Cleaner.unlink`` at most, checked for rows in slices of
#: ``UNLINK_SLICE``; a transaction also ends once it has held the write lock ``UNLINK_HOLD``
#: seconds: removing a file that holds data costs the filesystem 20-100 µs (more on a busy
#: disk), ten times an empty one, so a count alone does not keep the lock brief.
UNLINK_CHUNK = 4000
UNLINK_SLICE = 250
UNLINK_HOLD = 0.05
#: Entries of ``quarantine/`` that have been there this long are removed by cleanup: long enough
#: for a person to look at what verify moved aside, short enough that it does not pile up.
QUARANTINE_MAX_AGE = 30 * 86400.0


class _EvictedBatch(NamedTuple):
    stored: int  #: bytes the store held before the batch
    victims: list[eviction.Victim]
    listed: list[eviction.Item]  #: the first victims, with names, for the report
    kept: list[eviction.Item] | None  #: on the last batch: what cleanup kept, and why
    timings: dict[str, float]


class Cleaner:
    """Removes blobs from one store's catalog and ``blobs/``, in that order."""

    def __init__(self, blobs: BlobStore, catalog: Catalog,
                 clock: Callable[[], float] = time.time) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._clock = clock  # the wall time that last accesses, leases and ages are read in

    def run(self, limits: eviction.Limits) -> eviction.Plan:
        """Remove what ``limits`` choose; return what went and what stayed, and why."""
        plan: eviction.Plan | None = None
        newest = 0.0
        staged = self._staged_bytes()
        while True:
            room = eviction.REPORT_LIMIT if plan is None else plan.room
            shrinking = plan is not None and limits.excess(plan.stored_before) > 0
            batch = self._catalog.write(
                lambda conn: self._evict_batch(conn, limits, room, newest, shrinking,  # noqa: B023
                                               staged)
            )
            if plan is None:
                plan = eviction.Plan(batch.stored, limits.low_water_bytes)
            plan.add(batch.victims, batch.listed)
            for key, seconds in batch.timings.items():
                plan.timings[key] = plan.timings.get(key, 0.0) + seconds
            if batch.victims:
                newest = batch.victims[-1][2]
                log.info("cleanup removed %d blobs (%d bytes)", len(batch.victims),
                         sum(victim[1] for victim in batch.victims))
            started = time.perf_counter()
            self.unlink([victim[0] for victim in batch.victims])
            plan.timings["remove"] = plan.timings.get("remove", 0.0) + time.perf_counter() - started
            if batch.kept is not None:
                plan.kept = batch.kept
                break
        self._catalog.count(Counter.CLEANUP_RUNS, 1)
        self._blobs.clear_debris()
        if gone := clear_quarantine(self._blobs.quarantine_dir, time.time()):
            log.info("cleanup removed %d entries of quarantine/ older than %.0f days", gone,
                     QUARANTINE_MAX_AGE / 86400)
        for item in plan.victims:
            log.debug("cleanup removed %s (%d bytes, %s)%s", item.digest, item.size, item.reason,
                      f" named {', '.join(item.names)}" if item.names else "")
        return plan

    def survey(self, limits: eviction.Limits) -> eviction.Plan:
        """What a cleanup would remove and keep now (a dry run), read in one transaction."""
        with self._catalog.read() as conn:
            now = self._clock()
            dead = dead_leases(conn, now)
            stored = q.stored_totals(conn)[0] + self._staged_bytes()
            started = time.perf_counter()
            plan = eviction.Plan(stored, limits.low_water_bytes)
            excess = limits.excess(stored)
            victims = eviction.victims(conn, limits, excess, now, dead)
            newest = 0.0
            while batch := list(itertools.islice(victims, GC_BATCH)):
                plan.add(batch, eviction.with_names(conn, batch[: plan.room]))
                newest = batch[-1][2]
            plan.kept = eviction.kept(conn, limits, now, dead, newest, plan.freed >= excess)
            plan.timings["choose"] = time.perf_counter() - started
        return plan

    def unlink(self, digests: list[str]) -> None:
        """Unlink files whose rows are gone, unless a put brought a row back meanwhile.

        Each chunk is checked and unlinked under the write lock, so a concurrent put that saw
        the file and recorded its row cannot lose it. A chunk ends after ``UNLINK_CHUNK`` files
        or ``UNLINK_HOLD`` seconds, so the lock is held briefly whatever a removal costs; the
        digests go in order, so that each slice stays within a few shard folders.
        """
        ordered = sorted(digests)
        done = 0
        while done < len(ordered):
            try:
                done = self._catalog.write(
                    lambda conn: self._unlink_chunk(conn, ordered, done)  # noqa: B023
                )
            except OSError as error:  # checked before the rows went; lost a race since
                raise StoreError(
                    f"cannot unlink blob files whose rows are gone: {error.strerror}"
                    f" ({error.filename}); `cas verify` takes them back, a later gc removes them"
                ) from error

    def _staged_bytes(self) -> int:
        """Bytes in ``tmp/`` that cleanup cannot reclaim (live writers' partial downloads and
        puts): they use the cache's disk, so size-based cleanup counts them as stored."""
        _, total = staging_usage(self._blobs.tmp_dir, self._blobs.locks_dir)
        for entry in self._blobs.debris():
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total -= disk_bytes(entry.stat(follow_symlinks=False))
        return max(0, total)

    def _unlink_chunk(self, conn: Connection, ordered: list[str], start: int) -> int:
        """Inside a write transaction, unlink the files of ``ordered[start:]`` that have no
        row, slice by slice, until a chunk's count or time is used; return where it stopped."""
        began = time.monotonic()
        end = min(len(ordered), start + UNLINK_CHUNK)
        position = start
        while position < end and (position == start or time.monotonic() - began < UNLINK_HOLD):
            part = ordered[position : min(end, position + UNLINK_SLICE)]
            self._blobs.unlink_many(q.without_rows(conn, part))
            position += len(part)
        return position

    def _evict_batch(self, conn: Connection, limits: eviction.Limits, room: int,
                     newest: float, shrinking: bool, staged: int = 0) -> _EvictedBatch:
        """Choose up to ``GC_BATCH`` victims and delete their rows (their files go after the
        commit); the last batch also says what was kept. ``newest`` is the last access of the
        newest victim of the batches before, ``shrinking`` whether they freed space by size,
        ``staged`` the bytes of ``tmp/`` counted as stored."""
        now = self._clock()
        dead = dead_leases(conn, now)
        stored = q.stored_totals(conn)[0] + staged
        if eviction.clamp_future(conn, now):
            log.info("cleanup: last accesses later than now (the clock went back) set to now")
        excess = limits.excess(stored, shrinking)
        started = time.perf_counter()
        victims = list(itertools.islice(
            eviction.victims(conn, limits, excess, now, dead), GC_BATCH
        ))
        listed = eviction.with_names(conn, victims[:room])
        kept = None
        digests = [victim[0] for victim in victims]
        # A tree's record going frees its members for the next batch: one more batch then.
        last = len(victims) < GC_BATCH and not trees.any_of(conn, digests)
        if last:
            if victims:
                newest = victims[-1][2]
            freed = sum(victim[1] for victim in victims)
            kept = eviction.kept(conn, limits, now, dead, newest, freed >= excess)
        chosen = time.perf_counter()
        q.delete_leases(conn, dead)
        q.delete_expired_leases(conn, now)
        self._blobs.check_removable(digests)
        q.evict(conn, digests)
        q.record_cleanup(conn, now)
        # Counted in the transaction that deletes the rows (undone with it if it is retried),
        # so the unlinks that follow commit nothing and sync nothing.
        add_counts(conn, {Counter.EVICTIONS: len(victims),
                          Counter.EVICTED_BYTES: sum(victim[1] for victim in victims)})
        timings = {"choose": chosen - started, "update": time.perf_counter() - chosen}
        return _EvictedBatch(stored, victims, listed, kept, timings)


def clear_quarantine(folder: Path, now: float) -> int:
    """Remove the entries of ``folder`` (``quarantine/``) moved there ``QUARANTINE_MAX_AGE``
    or longer before ``now``; return how many went.

    The age is the entry's status-change time, which the move into quarantine sets. Everything
    happens relative to the folder opened without following a link, and a link among its
    entries is removed itself, never followed (guarantee 7).
    """
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # none yet, or not a real folder (a planted link): nothing of ours
        return 0
    cutoff = now - QUARANTINE_MAX_AGE
    removed = 0
    try:
        for name in os.listdir(folder_fd):
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                if info.st_ctime > cutoff:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(name, dir_fd=folder_fd)
                else:
                    os.unlink(name, dir_fd=folder_fd)
                removed += 1
    finally:
        os.close(folder_fd)
    return removed
