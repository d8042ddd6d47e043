"""A remote blob's bytes on their way into staging: s3transfer writes them on one side, the
store's staging protocol reads them on the other, and nothing is trusted until it matches.

s3transfer writes a target without ``seek`` strictly in order (it holds early parts back), so
the reader hashes the content as it arrives. The size is checked on the way: a remote object
longer than expected is refused before it fills the disk.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, cast

from cas.errors import IntegrityError


class Pipe:
    """Carries a download's bytes, in order, from s3transfer's writer thread to the staging
    reader: ``write`` on one side, ``read`` on the other, a bounded queue between."""

    _DONE = object()

    def __init__(self, where: str, size: int | None, want_sha256: bool) -> None:
        self.where = where
        self.size = size
        self.sha256 = hashlib.sha256() if want_sha256 else None
        self.count = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=64)  # 64 x 256 KiB in flight
        self._closed = threading.Event()
        self._ended = False

    # -- the writer's side (s3transfer's IO thread) --

    def write(self, data: bytes) -> int:
        while not self._closed.is_set():
            try:
                self._queue.put(data, timeout=0.1)
                return len(data)
            except queue.Full:
                continue
        raise OSError("the staging side stopped reading")

    def end(self, error: BaseException | None) -> None:
        """The transfer finished: with ``error`` if it failed."""
        item = self._DONE if error is None else error
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the reader's side (BlobStore.stage_stream) --

    def read(self, _size: int = -1) -> bytes:
        if self._ended:
            return b""
        item = self._queue.get()
        if item is self._DONE:
            self._ended = True
            return b""
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        data = cast(bytes, item)
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise IntegrityError(
                f"remote object {self.where} is larger than the expected {self.size} bytes;"
                " it was not stored",
                expected=self.size,
                found=self.count,
            )
        if self.sha256 is not None:
            self.sha256.update(data)
        return data

    def close(self) -> None:
        self._closed.set()


class Done:
    """An s3transfer subscriber that ends the pipe when the transfer finishes, either way."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def on_queued(self, future: Any, **_: Any) -> None:
        pass

    def on_progress(self, future: Any, bytes_transferred: int, **_: Any) -> None:
        pass

    def on_done(self, future: Any, **_: Any) -> None:
        try:
            future.result()
        except BaseException as error:  # handed to the reader, which raises it
            self._pipe.end(error)
        else:
            self._pipe.end(None)


def mismatch(
    digest: str, size: int, sha256: str | None,
    want_digest: str, want_size: int | None, want_sha256: str | None,
) -> tuple[str | int, str | int, str] | None:  # fmt: skip
    """(expected, found, what) for the first property that does not match, or None."""
    if want_size is not None and size != want_size:
        return want_size, size, "size"
    if digest != want_digest:
        return want_digest, digest, "BLAKE3 digest"
    if want_sha256 is not None and sha256 != want_sha256:
        return want_sha256, sha256 or "unknown", "SHA-256"
    return None
