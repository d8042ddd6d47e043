"""The byte spans of a parallel download (transfer/ranges.py): which are written, and the
hash that follows their prefix as it grows.

``Spans`` keeps the written spans merged, so the sidecar's record stays short whatever the
number of writes. ``Follower`` hashes the file's written prefix in a thread of its own (BLAKE3
on every core for large steps, and every upstream checksum expected: SHA-256, SHA-1, MD5)
through read-only memory maps of the staging file, one window at a time: file pages, never
anonymous memory, and never more than a window resident.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import threading
from collections.abc import Callable

from cas.storage.hashing import hasher

#: Bytes hashed per call (the follower hashes the prefix in steps of at most this).
HASH_STEP = 16 << 20


class Spans:
    """Disjoint, sorted byte spans [start, end), merged as they grow."""

    def __init__(self, spans: list[list[int]] | None = None) -> None:
        self.items: list[list[int]] = [list(span) for span in spans or []]
        self.size = sum(end - start for start, end in self.items)

    def add(self, start: int, end: int) -> None:
        """Add [start, end), which overlaps no span."""
        items = self.items
        at = bisect.bisect_left(items, [start])
        if at > 0 and items[at - 1][1] == start:
            at -= 1
            items[at][1] = end
        else:
            items.insert(at, [start, end])
        if at + 1 < len(items) and items[at + 1][0] == items[at][1]:
            items[at][1] = items.pop(at + 1)[1]
        self.size += end - start

    @property
    def prefix(self) -> int:
        """Where the first gap starts."""
        return self.items[0][1] if self.items and self.items[0][0] == 0 else 0

    def missing(self, total: int) -> list[tuple[int, int]]:
        """The gaps in [0, total)."""
        gaps, at = [], 0
        for start, end in self.items:
            if start > at:
                gaps.append((at, start))
            at = end
        if at < total:
            gaps.append((at, total))
        return gaps


class Follower(threading.Thread):
    """Hashes the written prefix of the file as it grows: BLAKE3, and the upstream checksums
    wanted (``want``: hashlib names)."""

    def __init__(self, fd: int, total: int, cond: threading.Condition,
                 prefix: Callable[[], int], want: tuple[str, ...]) -> None:
        super().__init__(name="cas-range-hash", daemon=True)
        self.fd, self.total, self.cond, self.prefix = fd, total, cond, prefix
        self.blake3 = hasher(parallel=True)
        # usedforsecurity=False: MD5 and SHA-1 check a transfer, as in transfer/partial.py.
        self.upstream = {name: hashlib.new(name, usedforsecurity=False) for name in want}
        self.hashed = 0
        self.error: BaseException | None = None
        self.ended = False
        self.abandoned = False

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as error:  # reported by digests()
            self.error = error

    def _follow(self) -> None:
        while self.hashed < self.total:
            with self.cond:
                self.cond.wait_for(lambda: self.prefix() > self.hashed or self.ended, timeout=1.0)
                upto = self.prefix()
            if upto <= self.hashed:
                if self.ended:
                    return
                continue
            while self.hashed < upto and not self.abandoned:
                self._hash(min(upto, self.hashed + HASH_STEP))
            if self.abandoned:
                return

    def _hash(self, end: int) -> None:
        """Hash [hashed, end) through a map of that window alone: the pages it maps are
        unmapped again at once, so the resident size stays one window whatever the file's."""
        offset = self.hashed - self.hashed % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, end - offset, offset=offset, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                piece = view[self.hashed - offset :]
                self.blake3.update(piece)
                for upstream in self.upstream.values():
                    upstream.update(piece)
                piece.release()
            finally:
                view.release()
        self.hashed = end

    def finish(self, complete: bool = True) -> None:
        """End once the prefix written so far is hashed (``complete``), or at once."""
        with self.cond:
            self.ended = True
            self.abandoned = not complete
            self.cond.notify_all()
        self.join()

    def digests(self) -> tuple[str, dict[str, str]]:
        """The BLAKE3 and the upstream checksums (algorithm -> hex) of the whole file."""
        if self.error is not None:
            raise self.error
        assert self.hashed == self.total
        return str(self.blake3.hexdigest()), {
            name: upstream.hexdigest() for name, upstream in self.upstream.items()}

