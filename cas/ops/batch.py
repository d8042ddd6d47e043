"""A batch of pushes or pulls: the report, ref by ref, and running many refs at once.

The remote tier (ops/tier.py) hands each ref's work to ``run``, which runs ``JOBS`` at a time,
lets no failure stop the others, and waits for what a pull's group commit records behind it;
``Once`` shares the upload of a blob between the refs that name it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar, cast

from cas.errors import CasError, os_error
from cas.logs import log
from cas.ops.record import Fetched

#: Fixtures pushed or pulled at once (each large blob moves in parallel parts besides): enough
#: to hide the latency of the two or three requests that each small fixture costs.
JOBS = 8


@dataclass
class TransferReport:
    """What a push or a pull did, ref by ref."""

    verb: str  #: "pushed" or "pulled"
    place: str  #: where "already" means: "in the remote" or "in the store"
    done: dict[str, str] = field(default_factory=dict)  #: ref -> digest, transferred
    present: dict[str, str] = field(default_factory=dict)  #: ref -> digest, there already
    failed: dict[str, CasError] = field(default_factory=dict)
    stored: int | None = None  #: bytes the store held after the last blob a pull recorded

    def summary(self) -> str:
        return (
            f"{len(self.done)} {self.verb}, {len(self.present)} already {self.place},"
            f" {len(self.failed)} failed"
        )

    def raise_for_failures(self) -> None:
        """Raise a CasError naming every failed ref, if any failed."""
        if not self.failed:
            return
        total = len(self.done) + len(self.present) + len(self.failed)
        details = "; ".join(f"{ref}: {error}" for ref, error in sorted(self.failed.items()))
        first = next(iter(self.failed.values()))
        raise CasError(f"{len(self.failed)} of {total} failed: {details}") from first


class Moved(NamedTuple):
    """What one push or pull did."""

    digest: str
    transferred: bool
    stored: int | None = None  #: bytes the store holds after a pull recorded a blob
    later: Future[Fetched] | None = None  #: the recording of a pulled blob, behind the pull


#: One ref's work in a push or a pull.
Item = tuple[str, Callable[[], Moved]]

T = TypeVar("T")


def settle(ref: str, outcome: Callable[[], T], report: TransferReport) -> T | None:
    """The outcome of one ref's work, or None with its failure in ``report``."""
    try:
        return outcome()
    except OSError as error:  # this store's disk: full, read-only, ...
        failure: CasError = os_error(error, f"cannot store {ref!r}")
    except CasError as error:
        failure = error
    log.error("%s failed: %s", ref, failure)
    report.failed[ref] = failure
    return None


class Once(Generic[T]):
    """Runs the work of a key once, however many threads ask for it: the first runs it, the
    others wait and share its result, or its error. A push uploads each blob once this way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._results: dict[str, tuple[T | None, BaseException | None]] = {}

    def run(self, key: str, work: Callable[[], T]) -> tuple[T, bool]:
        """The result of ``work`` for ``key``, and whether this call ran it."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._results:
                result, error = self._results[key]
                if error is not None:
                    raise error
                return cast(T, result), False
            try:
                value = work()
            except BaseException as failure:
                self._results[key] = (None, failure)
                raise
            self._results[key] = (value, None)
            return value, True


def run(items: Iterable[Item], report: TransferReport) -> None:
    """Run each item, ``JOBS`` at a time; a failure does not stop the others. A pulled
    blob counts once it is recorded."""
    later: list[tuple[str, Future[Fetched]]] = []
    with ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="cas-remote") as pool:
        futures = {pool.submit(work): ref for ref, work in items}
        for future in as_completed(futures):
            moved = settle(futures[future], future.result, report)
            if moved is not None and moved.later is not None:
                later.append((futures[future], moved.later))
            elif moved is not None:
                (report.done if moved.transferred else report.present)[futures[future]] = (
                    moved.digest)  # fmt: skip
    for ref, recording in later:
        fetched = settle(ref, recording.result, report)
        if fetched is not None:
            report.done[ref] = fetched.digest
            report.stored = fetched.stored
