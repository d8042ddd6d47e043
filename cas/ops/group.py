"""Group commit: threads that each finished a transfer share one catalog transaction.

A pull moves many fixtures at once; recording each in a transaction of its own costs a commit
(an fsync of the catalog) and a folder sync apiece. Here the first thread to arrive records
every transfer waiting at that moment in one transaction (``Recorder.keep_many``), while the
threads that arrive meanwhile wait for the next batch; each thread gets its own outcome. When a
batch fails, its transfers are recorded one by one, so one bad transfer fails alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cas.ops.record import Fetched, Keep, Recorder


@dataclass
class _Slot:
    keep: Keep
    synced: bool
    outcome: Fetched | BaseException | None = None


class GroupCommit:
    """Records ``Keep``s of many threads in shared transactions. ``sync`` makes the staged
    files that were not fsynced durable (``BlobStore.batch_sync``), once a batch."""

    def __init__(self, recorder: Recorder, sync: Callable[[], None]) -> None:
        self._recorder = recorder
        self._sync = sync
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._busy = False

    def keep(self, keep: Keep, *, synced: bool = True) -> Fetched:
        """Publish and record ``keep`` (as ``Recorder.keep``), in a batch with the others
        waiting; raises what recording it raised. ``synced``: its staged file was fsynced."""
        slot = _Slot(keep, synced)
        try:
            with self._cond:
                self._pending.append(slot)
                while slot.outcome is None:
                    if self._busy:
                        self._cond.wait()
                        continue
                    self._busy = True
                    batch, self._pending = self._pending, []
                    self._cond.release()
                    try:
                        self._commit(batch)
                    finally:
                        self._cond.acquire()
                        self._busy = False
                        self._cond.notify_all()
        finally:
            keep.result.staged.discard()  # no-op once published
        if isinstance(slot.outcome, BaseException):
            raise slot.outcome
        return slot.outcome

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            if not all(slot.synced for slot in batch):
                try:
                    self._sync()  # outside the catalog's lock: it waits for the disk
                except Exception as error:  # nothing unsynced may be recorded
                    for slot in batch:
                        if not slot.synced:
                            slot.outcome = error
            self._record([slot for slot in batch if slot.outcome is None])
        except BaseException as error:
            for slot in batch:
                if slot.outcome is None:
                    slot.outcome = error

    def _record(self, batch: list[_Slot]) -> None:
        if not batch:
            return
        try:
            kept = self._recorder.keep_many([slot.keep for slot in batch], discard=False)
        except Exception:
            if len(batch) == 1:
                raise
            for slot in batch:  # one by one: the failing one fails alone
                try:
                    slot.outcome = self._recorder.keep_many([slot.keep], discard=False)[0]
                except Exception as error:
                    slot.outcome = error
            return
        for slot, fetched in zip(batch, kept, strict=True):
            slot.outcome = fetched
