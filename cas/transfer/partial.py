"""Partial downloads: a staging file being downloaded, its hashers, and its sidecar record.

A partial download is ``tmp/<stem>-<token>.part`` (names from storage/layout.py) with a JSON
sidecar ``….json`` beside it: URL, validator (strong ETag, else Last-Modified), total length and
owner; the token starts with the owner's staging tag, so storage/processes.py can say from the
name alone whether its writer is alive. A later attempt, in this process or another, claims the
partial of a provably dead owner (gc and verify remove such partials instead) by renaming it to
its own name (atomic, so one claimant wins), re-hashes the bytes already there, and asks for the
rest with ``Range`` + ``If-Range``. A partial of a parallel download (transfer/ranges.py) has
the file's final size from the start and records in its sidecar the byte spans already written
(``done``); it is not re-hashed when claimed, since its hash is taken when every range is in. A
partial is never appended to by two writers, even where
``flock`` is ignored (huggingface_hub PR #4306 stored corrupted blobs from one partial shared by
several processes); a live owner's partial is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from cas.errors import IntegrityError
from cas.refs import CHECKSUM_LABELS
from cas.storage.folder import Folder
from cas.storage.hashing import CHUNK_SIZE, WRITE_BEHIND, hasher, start_writeback
from cas.storage.layout import (
    PARTIAL_SUFFIX,
    SIDECAR_SCRATCH_SUFFIX,
    download_key,
    partial_name,
    sidecar_name,
)
from cas.storage.processes import (
    staging_tag,
    this_process,
    written_by_dead_process,
    written_by_this_process,
)
from cas.storage.staging import BLOB_MODE, Staged
from cas.transfer.request import Expected

_ACTIVE: set[str] = set()  # tokens of partials being written by this process
_ACTIVE_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock another thread held at fork time stays held for ever in the child, and must be
    # replaced before any thread of the child can take it: a lazy check of processes.forks()
    # at each use could not promise that. The parent's tokens are not the child's to write
    # (the child's staging tag differs), so the set starts empty.
    global _ACTIVE_LOCK
    _ACTIVE_LOCK = threading.Lock()
    _ACTIVE.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _new_token() -> str:
    """A partial's token: its writer's ``staging_tag`` (storage/processes.py) and 64 random bits,
    so that cleanup and other downloads tell from the name alone whether its writer is gone."""
    return f"{staging_tag()}{uuid.uuid4().hex[:16]}"


def _owner_gone(name: str, meta: dict[str, Any]) -> bool:
    """Whether the partial named ``name`` has no live writer (so it may be claimed): its writer
    is provably dead (storage/processes.py, the one liveness rule), or is this process and no
    longer writing it (left by an earlier download of this process)."""
    if written_by_this_process(name):
        with _ACTIVE_LOCK:
            return meta.get("token") not in _ACTIVE
    return written_by_dead_process(name)


class Hashers:
    """BLAKE3 (and the upstream checksums expected: SHA-256, SHA-1, MD5) of a download,
    computed in one pass in a thread of their own: hashing then overlaps receiving and writing
    instead of following each chunk."""

    def __init__(self, want: tuple[str, ...]) -> None:
        self._blake3 = hasher()
        # usedforsecurity=False: MD5 and SHA-1 stay usable on FIPS systems; they check a
        # transfer against a published checksum, and BLAKE3 is what names the content.
        self._upstream = {name: hashlib.new(name, usedforsecurity=False) for name in want}
        self._chunks: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._known: tuple[str, dict[str, str]] | None = None

    @classmethod
    def known(cls, blake3: str, upstream: dict[str, str]) -> Hashers:
        """Digests computed elsewhere (a parallel download hashes its file as ranges land):
        the BLAKE3 and the upstream checksums, algorithm -> hex."""
        done = cls(())
        done._known = (blake3, dict(upstream))
        return done

    def update(self, chunk: bytes) -> None:
        if self._thread is None:
            self._chunks = queue.Queue(maxsize=16)  # bounded: at most 16 chunks wait
            self._thread = threading.Thread(target=self._run, name="cas-hash", daemon=True)
            self._thread.start()
        assert self._chunks is not None
        self._chunks.put(chunk)

    def _run(self) -> None:
        assert self._chunks is not None
        while (chunk := self._chunks.get()) is not None:
            self._blake3.update(chunk)
            for upstream in self._upstream.values():
                upstream.update(chunk)

    def wait(self) -> None:
        """Hash what was handed over so far, and end the thread."""
        if self._thread is not None and self._chunks is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = self._chunks = None

    def blake3(self) -> str:
        self.wait()
        if self._known is not None:
            return self._known[0]
        return str(self._blake3.hexdigest())

    def upstream(self) -> dict[str, str]:
        """The upstream checksums asked for, algorithm -> hex."""
        self.wait()
        if self._known is not None:
            return dict(self._known[1])
        return {name: upstream.hexdigest() for name, upstream in self._upstream.items()}


class Partial:
    """A staging file being downloaded, with its hashers and its sidecar record."""

    def __init__(
        self, tmp: Folder, url: str, token: str, file: BinaryIO, want: tuple[str, ...]
    ) -> None:
        self.url = url
        self.token = token
        self.path = tmp.path / partial_name(download_key(url), token)
        self.tmp = tmp  # keeps dir_fd open
        self.dir_fd = tmp.fd()  # its folder, where its sidecar is written and it is staged
        self.meta_path = self.path.with_name(sidecar_name(self.path.name))
        self.file = file
        self.want = want  #: the upstream checksums to compute besides BLAKE3
        self.hashes = Hashers(want)
        self.size = 0
        self.flushed = 0  #: bytes whose writeback was started
        self.transferred = 0
        self.resumed_from = 0  #: where the current body continues the file (0: from scratch)
        self.saved = 0  #: bytes not downloaded again thanks to resumes
        self.validator: str | None = None
        self.total: int | None = None
        self.encoding = "identity"
        #: Byte spans [start, end) written, of a parallel download; None for one stream.
        self.done: list[list[int]] | None = None
        with _ACTIVE_LOCK:
            _ACTIVE.add(token)

    @classmethod
    def create(cls, tmp: Folder, url: str, want: tuple[str, ...]) -> Partial:
        token = _new_token()
        fd = os.open(partial_name(download_key(url), token), os.O_RDWR | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp.fd())
        part = cls(tmp, url, token, os.fdopen(fd, "r+b", buffering=0), want)
        try:
            part.save()
        except BaseException:  # e.g. a full disk: leave nothing behind
            part.discard()
            raise
        return part

    @classmethod
    def claim(cls, tmp: Folder, url: str, want: tuple[str, ...]) -> Partial | None:
        """Take over the largest resumable partial of ``url`` left by a dead owner, if any."""
        candidates = []
        tmp_dir = tmp.path
        stem = download_key(url)
        for meta_path in tmp_dir.glob(sidecar_name(partial_name(stem, "*"))):
            meta = _read_json(meta_path)
            if meta is None or meta.get("url") != url or not _owner_gone(meta_path.name, meta):
                continue
            data_path = meta_path.with_suffix(PARTIAL_SUFFIX)
            if not meta.get("validator"):  # (a dead owner's is of this boot: storage/processes.py)
                _remove(data_path, meta_path)  # not resumable: debris of a dead download
                continue
            done = _spans(meta.get("done"), meta.get("total"))
            try:
                kept = data_path.stat().st_size if done is None else sum(b - a for a, b in done)
                candidates.append((kept, data_path, meta_path, meta))
            except FileNotFoundError:
                _remove(meta_path)  # its data was claimed already: the record is stale
        for _, data_path, meta_path, meta in sorted(candidates, key=lambda c: -c[0]):
            token = _new_token()
            mine = tmp_dir / partial_name(stem, token)
            try:
                os.rename(data_path, mine)  # atomic: of several claimants exactly one wins
            except FileNotFoundError:
                continue
            try:  # the claimed name may have been a planted symlink: never follow one
                fd = os.open(mine, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                _remove(mine, meta_path)
                continue
            file = os.fdopen(fd, "r+b", buffering=0)
            part = cls(tmp, url, token, file, want)
            part.validator = meta.get("validator")
            part.total = meta.get("total") if isinstance(meta.get("total"), int) else None
            part.done = _spans(meta.get("done"), part.total)
            part.save()
            # (and the record its owner was writing when it died, if it was)
            _remove(meta_path, meta_path.with_suffix(SIDECAR_SCRATCH_SUFFIX))
            if part.done is None:
                part.rehash()
            return part
        return None

    def rehash(self) -> None:
        """Hash the bytes already in the file: the digest covers the whole content."""
        self.file.seek(0)
        self.size = 0
        while chunk := self.file.read(CHUNK_SIZE):
            self.hashes.update(chunk)
            self.size += len(chunk)
        if self.total is not None and self.size > self.total:
            self.reset()

    @property
    def kept(self) -> int:
        """Bytes a later attempt would not download again."""
        return self.size if self.done is None else sum(end - start for start, end in self.done)

    @property
    def resumable(self) -> bool:
        return self.validator is not None and self.encoding == "identity"

    def begin(self, validator: str | None, encoding: str, total: int | None) -> None:
        """Take the validator, encoding and length of a body that starts from zero."""
        self.validator = validator
        self.encoding = encoding
        self.total = total
        self.save()

    def append(self, chunk: bytes) -> None:
        self.hashes.update(chunk)
        view = memoryview(chunk)
        while view:
            written = self.file.write(view)
            view = view[written or 0 :]
        self.size += len(chunk)
        self.transferred += len(chunk)
        if self.size - self.flushed >= WRITE_BEHIND:  # so that finish's fsync waits for little
            start_writeback(self.file.fileno(), self.flushed, self.size - self.flushed)
            self.flushed = self.size

    def reset(self) -> None:
        """Back to zero bytes: the partial cannot be continued."""
        self.file.seek(0)
        self.file.truncate()
        self.flushed = 0
        self.hashes.wait()
        self.hashes = Hashers(self.want)
        self.size = 0
        self.resumed_from = 0
        self.saved = 0
        self.validator = None
        self.total = None
        self.encoding = "identity"
        self.done = None

    def save(self) -> None:
        """Write the sidecar atomically (a reader sees the old or the new record, never half)."""
        record: dict[str, object] = {
            "url": self.url,
            "token": self.token,
            "validator": self.validator if self.resumable else None,
            "total": self.total,
            "owner": this_process()._asdict(),
        }
        if self.done is not None:
            record["done"] = self.done
        scratch = self.meta_path.with_suffix(SIDECAR_SCRATCH_SUFFIX).name
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)  # never through a symlink
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record))
        os.replace(scratch, self.meta_path.name, src_dir_fd=self.dir_fd,
                   dst_dir_fd=self.dir_fd)

    def upstream(self) -> dict[str, str]:
        """The upstream checksums computed over the whole content."""
        return self.hashes.upstream()

    def verify(self, url: str, expected: Expected) -> None:
        """Raise IntegrityError unless the content matches every expected value."""
        note = ""
        if self.encoding != "identity":
            note = f" (sent with Content-Encoding: {self.encoding}; cas keeps the bytes as sent)"
        if expected.size is not None and self.size != expected.size:
            raise IntegrityError(
                f"{url} gave {self.size} bytes, expected {expected.size}{note}",
                expected=expected.size,
                found=self.size,
            )
        digest = self.hashes.blake3()
        if expected.blake3 is not None and digest != expected.blake3:
            raise IntegrityError(
                f"{url} has BLAKE3 {digest}, expected {expected.blake3}{note}",
                expected=expected.blake3,
                found=digest,
            )
        found = self.upstream()
        for algorithm, value in expected.upstream().items():
            if found.get(algorithm) != value:
                raise IntegrityError(
                    f"{url} has {CHECKSUM_LABELS[algorithm]} {found.get(algorithm)},"
                    f" expected {value}{note}",
                    expected=value,
                    found=found.get(algorithm),
                )

    def finish(self) -> Staged:
        """Make read-only, fsync and close; the file becomes a plain staged file with no
        sidecar."""
        os.fchmod(self.file.fileno(), BLOB_MODE)
        os.fsync(self.file.fileno())
        self.file.close()
        _remove(self.meta_path)
        self._release()
        return Staged(os.fspath(self.path), self.hashes.blake3(), self.size,
                      dir_fd=self.dir_fd, folder=self.tmp)

    def suspend(self) -> None:
        """Keep a resumable partial for a later attempt; remove one that cannot be resumed."""
        self.hashes.wait()
        self.file.close()
        self._release()
        if not (self.kept and self.resumable):
            _remove(self.path, self.meta_path)

    def discard(self) -> None:
        self.hashes.wait()
        if not self.file.closed:
            self.file.close()
        self._release()
        _remove(self.path, self.meta_path)

    def _release(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.token)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _spans(value: object, total: object) -> list[list[int]] | None:
    """The ``done`` spans of a sidecar if they are well formed (sorted, disjoint, within
    ``total``), else None."""
    if not isinstance(value, list) or not isinstance(total, int):
        return None
    spans: list[list[int]] = []
    end = 0
    for span in value:
        if not (isinstance(span, list) and len(span) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in span)):
            return None
        if not end <= span[0] < span[1] <= total:
            return None
        spans.append([span[0], span[1]])
        end = span[1]
    return spans


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
