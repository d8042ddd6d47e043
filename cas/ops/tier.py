"""The remote tier's policy: read-through, push after the origin, push and pull.

A store whose ``remote`` setting names an ``s3://bucket/prefix`` shares fixtures with every other
store that names it. cas/transfer/s3.py moves and verifies the bytes; this module decides when:

- Read-through. A fetch that misses locally and knows the content it expects (a BLAKE3 digest,
  a SHA-256 that the store or the remote maps to one, or a SHA-1 or MD5 that this store
  verified before) tries the remote before the origin URL. The remote keeps ``sha256/``
  records only: MD5 and SHA-1 admit chosen collisions, so a record mapping one to a digest is
  taken from nobody but this store's own verified downloads.
  That covers ``fetch`` with an expected digest, ``path(name)`` of an evicted fixture and
  ``sync``. Without an expected digest the origin stays the authority and is asked directly.
- Push after the origin. What a fetch downloaded from its origin is pushed (blob, then the
  name's record and the SHA-256 alias), when ``remote_push`` is on, so the next store finds it.
- ``push`` and ``pull`` of named fixtures, digests, a manifest, or everything.

The remote is a cache that may fail or lie: a damaged object is refused (nothing of it is
stored) and the fetch falls back to the origin; a remote that is down or misconfigured is
reported by one warning, and skipped for ``PAUSE`` seconds, so that a sync of many fixtures
does not wait out every retry again for each of them. An object that is damaged, or that the
store answers a server error for, is uploaded again after the origin served it (even while
the remote is skipped), and ``push`` reads a byte of every blob it finds already present, so
an object whose content the store lost is repaired, not taken for "already in the remote".
A push uploads each blob once, however many of its refs share it; a pull skips a record it
cannot read (counted as failed) and pulls the rest.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial

from cas.errors import (
    CasError,
    IntegrityError,
    NotFound,
    RemoteError,
    UsageError,
)
from cas.logs import log
from cas.ops import manifest as manifests
from cas.ops import tier_trees
from cas.ops.batch import Item, Moved, Once, TransferReport, run
from cas.ops.group import GroupCommit
from cas.ops.lookup import resolve
from cas.ops.manifest import Fixture
from cas.ops.record import Clock, Fetched, Keep, Recorder
from cas.refs import check_name, is_digest
from cas.storage import queries as q
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.transfer.request import Expected
from cas.transfer.s3 import Remote
from cas.transfer.s3_records import INLINE_MAX, NameRecord
from cas.urls import redact

#: After the remote failed, fetches go straight to the origin for this many seconds.
PAUSE = 60.0

#: Holds the single-flight locks of some keys (``Downloader.single_flight``): one transfer of a
#: blob at a time however many fetch or pull it, in this process or another.
SingleFlight = Callable[[list[str]], AbstractContextManager[None]]


@dataclass(frozen=True)
class _Local:
    """A ref to push, as the catalog knows it."""

    digest: str
    size: int | None  #: None when its blob is not stored here (an evicted fixture)
    name: str | None = None
    url: str | None = None
    sha256: str | None = None


class RemoteTier:
    """The remote tier of one store: its Remote, and the store's blobs and catalog, the recorder
    that keeps what is pulled, and the single-flight locks that fetches take too."""

    def __init__(
        self, remote: Remote, blobs: BlobStore, catalog: Catalog, recorder: Recorder,
        single_flight: SingleFlight, *, push: bool = True, clock: Clock = time.time,
    ) -> None:  # fmt: skip
        self.remote = remote
        self.push_enabled = push
        self._blobs = blobs
        self._catalog = catalog
        self._recorder = recorder
        self._single_flight = single_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._damaged: set[str] = set()  # digests whose remote object failed verification

    # -- read-through ------------------------------------------------------------------------------

    def read_through(self, url: str, name: str | None, expected: Expected) -> Fetched | None:
        """The content a fetch expects, from the remote and verified, recorded as the fetch
        would record it; None when the remote does not have it or cannot be used now."""
        if self._paused():
            return None
        digest = expected.blake3
        try:
            if digest is None:  # a checksum this store verified before names its content
                digest = next(filter(None, (self._local_alias(key, value) for key, value
                                            in expected.upstream().items())), None)  # fmt: skip
            if digest is None and expected.sha256 is not None:  # SHA-256 records only: below
                digest = self.remote.get_alias(expected.sha256)
            if digest is None:
                return None
            pulled = self.remote.get(
                digest, self._blobs, size=expected.size, sha256=expected.sha256,
                received=self._received,
            )  # fmt: skip
        except (IntegrityError, UsageError) as error:  # damaged blob, invalid record
            if digest is not None:
                self._damaged.add(digest)
            log.warning("%s; fetching %s from its origin instead", error, url)
            return None
        except RemoteError as error:
            if digest is not None and error.status is not None and error.status >= 500:
                self._damaged.add(digest)  # the store has it but cannot serve it: repair it
            self._down(error, f"fetching {url} from its origin instead")
            return None
        if pulled is None:
            log.debug("%s is not in the remote %s", digest, self.remote.url)
            return None
        return self._recorder.keep(
            pulled, url=url, name=name, expected=expected,
            via=self.remote.url_of(self.remote.blob_key(digest)),
        )  # fmt: skip

    def offer(self, fetched: Fetched, url: str, name: str | None, expected: Expected) -> None:
        """Push what a fetch downloaded from its origin, when ``remote_push`` is on. A failure
        is a warning: the fetch itself succeeded."""
        if not self.push_enabled or not fetched.downloaded:
            return
        if self._paused() and fetched.digest not in self._damaged:
            return
        local = _Local(fetched.digest, fetched.size, name, url, expected.sha256)
        try:
            self._push(local)
        except RemoteError as error:
            self._down(error, f"{url} stays in this store only")
        except (CasError, OSError) as error:  # evicted, damaged or unreadable: nothing to push
            log.warning("cannot push %s to the remote: %s", fetched.digest, error)

    # -- push --------------------------------------------------------------------------------------

    def push(self, refs: Sequence[str] | None) -> TransferReport:
        """Copy each ref (a name or a digest; default every name) to the remote: the blob
        unless the remote has it, then the name's record and SHA-256 alias."""
        report = TransferReport("pushed", "in the remote")
        blobs: Once[tuple[int, bool]] = Once()  # one upload per blob, however many refs share it
        with self._catalog.read() as conn:
            if refs is None:
                refs = sorted({row.name for row in q.entries(conn) if row.name is not None})
            items: list[Item] = []
            for ref in refs:
                try:
                    local = self._resolve(conn, ref)
                except CasError as error:
                    report.failed[ref] = error
                    continue
                items.append((ref, partial(self._push, local, blobs)))
        run(items, report)
        return report

    def _resolve(self, conn: Connection, ref: str) -> _Local:
        target = resolve(conn, ref)
        named = q.find_name(conn, target.name) if target.name is not None else None
        if named is None:
            return _Local(target.digest, target.size)
        # An unpacked fixture's url gives its archive, not this content: not pushed as its source.
        url = named.url if named.unpack is None else None
        return _Local(named.digest, named.size, named.name, url, named.sha256)

    def _push(self, local: _Local, blobs: Once[tuple[int, bool]] | None = None) -> Moved:
        """Blob first, then records: a record never names a blob the remote lacks. ``blobs``
        shares each blob's upload between the refs of one push."""
        once = blobs if blobs is not None else Once()
        members = tier_trees.members_of(self._catalog, local.digest)  # a tree's, first
        sent = tier_trees.each(lambda m: once.run(m.digest, partial(
            self._push_blob, _Local(m.digest, m.size)))[0][1], members)
        (size, uploaded), first = once.run(local.digest, partial(self._push_blob, local))
        uploaded = uploaded or sent
        uploaded = uploaded and first  # the other refs of this blob found it there
        if local.name is not None:
            content = None if members else self._small_content(local.digest, size)
            record = NameRecord(local.name, local.digest, size, local.url, local.sha256, content)
            if content is not None and record.verified_content() is None:  # damaged here
                record = replace(record, content=None)
            self.remote.put_name(record)
        if local.sha256 is not None:
            self.remote.put_alias(local.sha256, local.digest)
        log.info("%s %s (%d bytes)%s", "pushed" if uploaded else "published", local.digest,
                 size, f" as {local.name!r}" if local.name else "")
        return Moved(local.digest, uploaded)

    def _small_content(self, digest: str, size: int) -> bytes | None:
        """The bytes of a small blob stored here, for its name's record (``INLINE_MAX``)."""
        if size > INLINE_MAX or not self._blobs.has(digest, size):
            return None
        try:
            with self._blobs.open(digest) as blob:
                return blob.read(size + 1)
        except OSError:
            return None

    def _push_blob(self, local: _Local) -> tuple[int, bool]:
        """Make sure the remote holds the blob, readable: its size, and whether it went up."""
        remote_size = self.remote.size_of(local.digest)
        size = local.size
        if size is None or not self._blobs.has(local.digest, size):
            if remote_size is None:
                raise NotFound(f"blob {local.digest} is not stored here nor in the remote")
            return remote_size, False  # an evicted fixture the remote has: its record can go up
        if (remote_size == size and local.digest not in self._damaged
                and (size == 0 or self.remote.readable(local.digest))):  # fmt: skip
            return size, False
        try:
            blob = self._blobs.open(local.digest)
        except OSError as error:
            raise NotFound(f"blob {local.digest} is not stored here") from error
        with blob:
            if os.fstat(blob.fileno()).st_size != size:
                raise IntegrityError(
                    f"blob {local.digest} is damaged here; run `cas verify`",
                    expected=size, found=os.fstat(blob.fileno()).st_size,
                )  # fmt: skip
            self.remote.put(local.digest, blob)
        self._damaged.discard(local.digest)
        return size, True

    # -- pull --------------------------------------------------------------------------------------

    def pull(
        self, refs: Sequence[str] | None, manifest: str | os.PathLike[str] | None = None
    ) -> TransferReport:
        """Copy each ref (a name or a digest) from the remote, each fixture of ``manifest``,
        or, with neither, every name the remote has; verified, as any download."""
        if refs is not None and manifest is not None:
            raise UsageError("pull either refs or a manifest, not both")
        report = TransferReport("pulled", "in the store")
        # The fixtures pulled at once share transactions, and small blobs one syncfs a batch
        # (opened before the first write: it reports the write errors met since).
        with (self._blobs.batch_sync() as sync_staged,
              GroupCommit(self._recorder, sync_staged) as group):  # fmt: skip
            items: list[Item] = []
            if manifest is not None:
                for fixture in manifests.load(manifest):
                    items.append((fixture.name, partial(self._pull_fixture, fixture, group)))
            elif refs is not None:
                items = [(ref, partial(self._pull_ref, ref, group)) for ref in refs]
            else:
                for entry in self.remote.listing():
                    if entry.error is not None:  # one bad record must not stop the others
                        log.warning("skipping %s: %s", entry.where, entry.error)
                        report.failed[entry.where] = entry.error
                    elif entry.name is not None:
                        items.append((entry.name, partial(self._pull_ref, entry.name, group)))
            run(items, report)
        return report

    def _pull_ref(self, ref: str, group: GroupCommit) -> Moved:
        if not isinstance(ref, str):
            raise UsageError(f"a ref must be a digest or a name, not {type(ref).__name__}")
        if is_digest(ref):
            return self._pull_tree(group, ref.lower())
        record = self.remote.get_name(check_name(ref))
        if record is None:
            raise NotFound(f"no name {ref!r} in the remote {self.remote.url}")
        content = record.verified_content()
        if content is not None and not tier_trees.is_record(content):
            # A small blob that came with its record, and no tree's: named as it is recorded.
            return self._pull(group, record.digest, record.size, ref, record.url,
                              record.sha256, inline=content)  # fmt: skip
        moved = self._pull_tree(group, record.digest, record.size)
        named = self._pull(group, record.digest, record.size, ref, record.url, record.sha256)
        return moved if moved.transferred else named

    def _pull_tree(self, group: GroupCommit, digest: str, size: int | None = None) -> Moved:
        """Pull a blob unnamed; when it is a tree's record, its members too, then the tree's
        rows (before any name points at it). Each waits for its recording: the record's file
        is read once published, and the rows need every member stored."""
        def recorded(digest: str, size: int | None) -> Moved:
            moved = self._pull(group, digest, size)
            if moved.later is not None:
                moved.later.result()
            return moved

        moved = recorded(digest, size)
        tree = tier_trees.stored_record(self._blobs, digest)
        if tree is None:
            return moved
        sent = tier_trees.each(lambda m: recorded(m.digest, m.size).transferred,
                               list({m.digest: m for m in tree.files}.values()))
        tier_trees.record_pulled(self._catalog, digest, tree)
        return moved._replace(transferred=moved.transferred or sent)

    def _pull_fixture(self, fixture: Fixture, group: GroupCommit) -> Moved:
        digest, sha256 = fixture.blake3, fixture.sha256
        if digest is None and sha256 is not None:
            digest = self._local_alias("sha256", sha256) or self.remote.get_alias(sha256)
        for key, value in (("sha1", fixture.sha1), ("md5", fixture.md5)):
            if digest is None and value is not None:
                digest = self._local_alias(key, value)
        hashless = not (fixture.blake3 or sha256 or fixture.sha1 or fixture.md5)
        if hashless:  # what the name got from this URL: here, else the remote's record of it
            with self._catalog.read() as conn:
                named = q.find_name(conn, fixture.name)
            record = (named if named is not None and named.url == redact(fixture.url)
                      else self.remote.get_name(fixture.name))  # fmt: skip
            if record is not None and record.url == redact(fixture.url):
                digest = record.digest
        if digest is None:
            what = "no record of its URL" if hashless else "its digest is unknown there"
            raise NotFound(f"fixture {fixture.name!r} is not in the remote ({what})")
        # An unpacked fixture's digests are its archive's: the archive is pulled, not named
        # (a sync then unpacks it without network).
        name = fixture.name if fixture.unpack is None else None
        return self._pull(group, digest, fixture.size, name, fixture.url, sha256)

    def _pull(
        self, group: GroupCommit, digest: str, size: int | None = None,
        name: str | None = None, url: str | None = None, sha256: str | None = None,
        inline: bytes | None = None,
    ) -> Moved:  # fmt: skip
        """Pull one blob unless it is stored, and name it; recorded with ``group``. A small
        blob is synced with its batch (one syncfs), a large one by its own fsync. ``inline``:
        its verified content, from its name's record."""
        keys = [f"blake3:{digest}"] + ([f"sha256:{sha256}"] if sha256 else [])
        expected = Expected(blake3=digest, sha256=sha256, size=size)
        # The fetch's single-flight locks: one transfer however many pull or fetch it at once
        # (content that came inline is here already: nothing to share).
        with self._single_flight(keys) if inline is None else contextlib.nullcontext():
            recording = group.pending(digest)  # by another ref of this pull
            if recording is None:
                if self._name_if_stored(digest, size, name, url, sha256):
                    return Moved(digest, False)
                small = size is not None and size < self.remote.transfer.threshold
                pulled = self.remote.get(digest, self._blobs, size=size, sha256=sha256,
                                         received=self._received, sync=not small,
                                         inline=inline)  # fmt: skip
                if pulled is None:
                    raise NotFound(f"blob {digest} is not in the remote {self.remote.url}")
                via = self.remote.url_of(self.remote.blob_key(digest))
                keep = Keep(pulled, url, name, expected, via, source=False)
                return Moved(digest, True, later=group.submit(keep, synced=not small))
        recording.exception()  # recorded (or not) now: name it, or pull it after all
        return self._pull(group, digest, size, name, url, sha256, inline)

    def _name_if_stored(
        self, digest: str, size: int | None, name: str | None, url: str | None,
        sha256: str | None,
    ) -> bool:  # fmt: skip
        """If the blob is stored here, point ``name`` at it; whether it was."""
        with self._catalog.read() as conn:
            row = q.find_blob(conn, digest)
        if row is None or not self._blobs.has(digest, row.size):
            return False
        if size is not None and row.size != size:
            raise IntegrityError(
                f"content {digest} is {row.size} bytes here, not the expected {size}",
                expected=size, found=row.size,
            )  # fmt: skip
        if sha256 is not None:  # checked against the bytes before it is recorded
            self._recorder.confirm(digest, {"sha256": sha256}, name or digest)
        if name is None:
            return True

        def work(conn: Connection) -> bool:
            if q.find_blob(conn, digest) is None:  # removed meanwhile: pull it after all
                return False
            q.set_name(conn, name, digest, self._clock(), url=url, sha256=sha256,
                       expected_size=row.size)  # fmt: skip
            return True

        return self._catalog.write(work)

    # -- shared ------------------------------------------------------------------------------------

    def _local_alias(self, algorithm: str, value: str) -> str | None:
        with self._catalog.read() as conn:
            return q.find_alias(conn, algorithm, value)

    def _received(self, amount: int) -> None:
        self._catalog.count(Counter.DOWNLOADED_BYTES, amount)

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _down(self, error: RemoteError, then: str) -> None:
        """Note that the remote failed: one warning, then ``PAUSE`` seconds without it."""
        with self._lock:
            first = not self._paused()
            self._paused_until = time.monotonic() + PAUSE
        if first:
            log.warning("remote %s cannot be used (%s); %s, and the remote is skipped for %.0fs",
                        self.remote.url, error, then, PAUSE)  # fmt: skip
        else:
            log.debug("remote %s failed again: %s", self.remote.url, error)
