"""Single flight: one download of a thing at a time, across threads and processes.

``single_flight(keys, …)`` holds an in-process lock plus an ``flock`` on ``tmp/locks/<stem>.lock``
per key (names from storage/layout.py; the kernel drops the flock when its holder dies; the
holder unlinks the file when done). It only saves work: correctness never rests on it
(guarantee 9), so a waiter whose holder shows no progress goes on without it. A holder shows
progress through ``heartbeat()``, which the downloader calls as the body arrives.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cas.logs import log
from cas.storage.folder import Folder, open_lock
from cas.storage.layout import download_key, lock_name

_THREAD_LOCKS: dict[str, tuple[threading.Lock, int]] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # the lock files this thread holds, for their heartbeat
_POLL = 0.1  #: the longest pause between two looks at a busy lock


def _after_fork_in_child() -> None:
    # Locks held by the parent's other threads at fork time would stay held for ever in the
    # child. They must be replaced before any thread of the child can take one, which a lazy
    # check of processes.forks() at each use could not promise (two threads of the child
    # could both see the old count, and one take the lock the other is replacing).
    global _THREAD_LOCKS_GUARD
    _THREAD_LOCKS_GUARD = threading.Lock()
    _THREAD_LOCKS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def single_flight(keys: Iterable[str], locks: Folder, stall: float) -> Iterator[None]:
    """Hold the locks of ``keys`` (a URL, an expected digest) in ``locks``, taken in sorted
    order.

    Threads of this process queue on a threading lock, processes on an ``flock`` that the
    kernel releases when its holder dies, so a killed downloader never blocks the others.
    A holder shows progress by touching its lock files as its body arrives (``heartbeat``); a
    waiter that sees none for ``stall`` seconds (a stopped or hung holder) stops waiting and
    goes on without the lock, on its own staging file (guarantee 9). The caller re-checks the
    store after getting the locks.
    """
    names = sorted({lock_name(download_key(key)) for key in keys})
    with contextlib.ExitStack() as held:
        handles = []
        for name in names:
            handle = held.enter_context(_flight_lock(locks.path / name, stall, locks))
            if handle is None:
                break  # a stalled holder: download without waiting for the others either
            handles.append(handle)
        outer = getattr(_HELD, "beat", None)
        _HELD.beat = _Heartbeat(handles, min(1.0, stall / 4))
        try:
            yield
        finally:
            _HELD.beat = outer


def heartbeat() -> None:
    """Show the waiters of this thread's single flight that its download advances."""
    beat: _Heartbeat | None = getattr(_HELD, "beat", None)
    if beat is not None:
        beat()


class _Watch:
    """Progress of whoever holds a lock, as seen by a waiter: the lock file's inode and mtime,
    which the holder refreshes as its download advances. No change for ``stall`` seconds means
    the holder is stopped (SIGSTOP, a debugger) or hung, and the waiter stops waiting."""

    def __init__(self, path: Path, stall: float) -> None:
        self.path = path
        self.stall = stall
        self.seen = self._stamp()
        self.since = time.monotonic()
        self.told = False

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns

    def stalled(self) -> bool:
        """Whether the holder has shown no progress for ``stall`` seconds."""
        stamp = self._stamp()
        if stamp != self.seen:
            self.seen, self.since = stamp, time.monotonic()
        if not self.told:
            log.info("waiting for another process downloading the same thing")
            self.told = True
        return time.monotonic() - self.since > self.stall


class _Heartbeat:
    """The holder's side of ``_Watch``: touch the held lock files at most every ``interval``
    seconds while the download advances."""

    def __init__(self, handles: list[BinaryIO], interval: float) -> None:
        self.handles = handles
        self.interval = interval
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        for handle in self.handles:
            with contextlib.suppress(OSError):
                os.utime(handle.fileno())


@contextlib.contextmanager
def _flight_lock(path: Path, stall: float, folder: Folder | None = None,
                 ) -> Iterator[BinaryIO | None]:
    """Hold the thread lock and the ``flock`` of ``path``; yield the lock file, or None when
    the holder made no progress for ``stall`` seconds and the caller goes on without it."""
    watch = _Watch(path, stall)
    with _thread_lock(str(path), watch) as held:
        if not held:
            yield None
            return
        handle = _file_lock(path, watch, folder)
        if handle is None:
            yield None
            return
        try:
            yield handle
        finally:
            # Still ours (checked when taken): waiters on it will see it gone.
            path.unlink(missing_ok=True)
            handle.close()


@contextlib.contextmanager
def _thread_lock(key: str, watch: _Watch) -> Iterator[bool]:
    """A per-key lock shared by every thread of this process, dropped when nobody uses it;
    yields whether it was taken (False: its holder stalled, see ``_Watch``)."""
    with _THREAD_LOCKS_GUARD:
        lock, users = _THREAD_LOCKS.get(key, (threading.Lock(), 0))
        _THREAD_LOCKS[key] = (lock, users + 1)
    try:
        held = _wait(lambda pause: lock.acquire(timeout=pause), watch)
        try:
            yield held
        finally:
            if held:
                lock.release()
    finally:
        with _THREAD_LOCKS_GUARD:
            lock, users = _THREAD_LOCKS[key]
            if users == 1:
                del _THREAD_LOCKS[key]
            else:
                _THREAD_LOCKS[key] = (lock, users - 1)


def _file_lock(path: Path, watch: _Watch, folder: Folder | None = None) -> BinaryIO | None:
    """An exclusive flock on ``path``, or None when its holder stalled (see ``_Watch``).

    Each holder unlinks the lock file when it is done, so lock files do not pile up (one per
    URL and digest ever fetched). The classic race that follows, a waiter locking the unlinked
    inode while a newcomer locks a new file at the same path, is closed by checking after each
    ``flock`` that the path still names the locked inode, and starting over when it does not.
    """

    def attempt(handle: BinaryIO, pause: float) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(pause)
            return False
        return True

    while True:
        handle = open_lock(path, folder)
        try:
            if not _wait(functools.partial(attempt, handle), watch):
                handle.close()
                return None
            if _names(path, handle):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # unlinked by its holder meanwhile: lock the file now at that path


def _names(path: Path, handle: BinaryIO) -> bool:
    """Whether ``path`` still names the open file ``handle`` (not a newer file there)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _wait(attempt: Callable[[float], bool], watch: _Watch) -> bool:
    """Call ``attempt(pause)`` (which waits up to ``pause`` seconds when it fails) until it
    succeeds: True; or until ``watch`` sees the holder stalled: False."""
    pause = 0.0  # the first try does not wait
    while not attempt(pause):
        if watch.stalled():
            log.warning(
                "the download of the same thing has shown no progress for %gs (its process"
                " stopped or hung?); downloading separately", watch.stall,
            )  # fmt: skip
            return False
        pause = min(max(pause * 2, 0.005), _POLL)
    return True
