"""Group commit: the transfers of a pull share catalog transactions, recorded behind them.

A pull moves many fixtures at once; recording each in a transaction of its own costs a commit
(an fsync of the catalog) and a folder sync apiece, and a thread that waits for its commit does
not download meanwhile. Here each thread hands its verified transfer over (``submit``) and goes
on with its next fixture; a committer thread records everything handed over since its last
commit in one transaction (``Recorder.keep_many``), after one ``sync`` of the staged files that
were not fsynced. When a batch fails, its transfers are recorded one by one, so that one bad
transfer fails alone. At most ``limit`` transfers wait: the threads that hand over more wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from cas.ops.record import Fetched, Keep, Recorder

#: Transfers handed over and not yet recorded, at most (their staging files wait on disk).
LIMIT = 256


@dataclass
class _Slot:
    keep: Keep
    synced: bool
    future: Future[Fetched] = field(default_factory=Future)


class GroupCommit:
    """Records the ``Keep``s that threads hand over, in shared transactions, in a thread of its
    own. ``sync`` makes the staged files that were not fsynced durable (``BlobStore.batch_sync``),
    once a batch. Use as a context manager: leaving it records what is left, and stops."""

    def __init__(self, recorder: Recorder, sync: Callable[[], None], *,
                 limit: int = LIMIT) -> None:  # fmt: skip
        self._recorder = recorder
        self._sync = sync
        self._limit = limit
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._digests: dict[str, Future[Fetched]] = {}  # handed over, not recorded yet
        self._closed = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GroupCommit:
        return self

    def __exit__(self, *_: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def submit(self, keep: Keep, *, synced: bool = True) -> Future[Fetched]:
        """Hand ``keep`` over to be published and recorded (as ``Recorder.keep``); its future
        gives the outcome. ``synced``: its staged file was fsynced."""
        slot = _Slot(keep, synced)
        with self._cond:
            while len(self._pending) >= self._limit:
                self._cond.wait()
            self._pending.append(slot)
            self._digests[keep.result.staged.digest] = slot.future
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cas-commit",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            self._cond.notify_all()
        return slot.future

    def pending(self, digest: str) -> Future[Fetched] | None:
        """The future of a transfer of ``digest`` handed over and not recorded yet, if any."""
        with self._cond:
            return self._digests.get(digest)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._cond.notify_all()
            self._commit(batch)
            with self._cond:
                for slot in batch:
                    if self._digests.get(slot.keep.result.staged.digest) is slot.future:
                        del self._digests[slot.keep.result.staged.digest]

    def _commit(self, batch: list[_Slot]) -> None:
        outcomes: dict[int, Fetched | BaseException] = {}
        try:
            if not all(slot.synced for slot in batch):
                try:
                    self._sync()  # outside the catalog's lock: it waits for the disk
                except Exception as error:  # nothing unsynced may be recorded
                    outcomes.update((id(slot), error) for slot in batch if not slot.synced)
            self._record([slot for slot in batch if id(slot) not in outcomes], outcomes)
        except BaseException as error:
            for slot in batch:
                outcomes.setdefault(id(slot), error)
        finally:
            for slot in batch:
                slot.keep.result.staged.discard()  # no-op once published
                outcome = outcomes.get(id(slot))
                if isinstance(outcome, BaseException):
                    slot.future.set_exception(outcome)
                elif outcome is not None:
                    slot.future.set_result(outcome)
                else:
                    slot.future.set_exception(RuntimeError("not recorded"))

    def _record(self, batch: list[_Slot], outcomes: dict[int, Fetched | BaseException]) -> None:
        if not batch:
            return
        try:
            kept = self._recorder.keep_many([slot.keep for slot in batch], discard=False)
        except Exception:
            if len(batch) == 1:
                raise
            for slot in batch:  # one by one: the failing one fails alone
                try:
                    outcomes[id(slot)] = self._recorder.keep_many([slot.keep], discard=False)[0]
                except Exception as error:
                    outcomes[id(slot)] = error
            return
        outcomes.update((id(slot), fetched) for slot, fetched in zip(batch, kept, strict=True))
