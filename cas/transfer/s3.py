"""The remote tier's storage: blobs and small records in an S3-compatible bucket.

Mechanism only, like transfer/http.py: this module knows nothing of the catalog. The policy
(when to read through, what to push) is cas/ops/tier.py; the keys and records are
transfer/s3_records.py. Blob keys are content addresses and records are idempotent, so any
number of stores on any number of machines write without coordinating: two writers of one blob
write the same bytes.

Nothing read from the bucket is trusted. A blob is downloaded in ranges, in parallel, into a
staging file of the store (``Staging.stage_written``: a private file under ``tmp/``, hashed
in order as it fills, fsynced) and is handed over only when its BLAKE3 digest and size, and its
SHA-256 when one is expected, match (transfer/s3_ranges.py); a record is checked field by field
before it is used.

The client is boto3, imported when a remote is first used (``cas path`` of a stored blob never
pays for it). Endpoint, region and credentials come from the standard AWS sources: ``AWS_*``
variables including ``AWS_ENDPOINT_URL``, and the shared config and credentials files. Blobs
above ``Transfer.threshold`` go up by multipart upload and come down in ranges of
``Transfer.part_size``, ``Transfer.concurrency`` parts at once; smaller ones take one request.
Failures are retried and translated as transfer/s3_errors.py says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from cas.errors import CasError, IntegrityError, NotFound, RemoteError, UsageError
from cas.logs import log
from cas.storage.blobs import BlobStore
from cas.storage.processes import forks
from cas.storage.staging import Staged
from cas.transfer.request import Download
from cas.transfer.s3_client import new_client, quick_get
from cas.transfer.s3_errors import RETRY_WINDOW, failure, local, missing
from cas.transfer.s3_ranges import RangedGet, mismatch
from cas.transfer.s3_records import (
    ALIASES,
    NAMES,
    RECORD_MAX,
    Listed,
    NameRecord,
    alias_from_json,
    alias_leaf,
    alias_to_json,
    blob_parts,
    legacy_name_leaf,
    name_leaf,
    name_of_leaf,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


MiB = 1 << 20
#: Further requests for a part of a blob after its body stream broke (each request retries
#: besides).
STREAM_RETRIES = 1
#: Connections kept beside those of the parts in flight: fixtures moved at once, records.
POOL_EXTRA = 24


@dataclass(frozen=True)
class Transfer:
    """How blobs move: multipart above ``threshold`` bytes, in parts of ``part_size``, with
    ``concurrency`` parts in flight. boto3's defaults, which suit S3 itself."""

    threshold: int = 8 * MiB
    part_size: int = 8 * MiB
    concurrency: int = 10


class Remote:
    """One ``s3://bucket/prefix``: has, get and put of blobs by digest, and of small records.

    ``timeout`` bounds each connect and read; ``retries`` further attempts follow a transient
    failure, within ``retry_window`` seconds of the first. ``client`` replaces the boto3 client
    built from the AWS sources (a test seam). Safe to share between threads.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 300.0,
        retries: int = 5,
        retry_window: float = RETRY_WINDOW,
        transfer: Transfer | None = None,
        client: Any = None,
    ) -> None:
        if not url.startswith("s3://"):
            raise UsageError(f"remote {url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.timeout = timeout
        self.retries = retries
        self.retry_window = retry_window
        self.transfer = transfer or Transfer()
        self._client = client
        self._own_client = client is None
        self._forks = forks()
        self._lock = threading.Lock()
        self._bucket_seen = False
        self._pool: ThreadPoolExecutor | None = None
        self._pool_forks = self._forks

    def __repr__(self) -> str:
        return f"<cas.transfer.s3.Remote {self.url!r}>"

    # -- the client ------------------------------------------------------------------------------

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client, built on first use."""
        with self._lock:
            # A forked child must not talk over its parent's pooled connections.
            if self._own_client and (self._client is None or forks() != self._forks):
                self._client = self._new_client()
                self._forks = forks()
            return cast("S3Client", self._client)

    def _parts(self) -> Executor:
        """The threads that download the parts of large blobs, ``Transfer.concurrency`` of
        them for every blob of this remote at once (a forked child makes its own)."""
        with self._lock:
            if self._pool is None or forks() != self._pool_forks:
                self._pool = ThreadPoolExecutor(self.transfer.concurrency,
                                                thread_name_prefix="cas-s3-part")  # fmt: skip
                self._pool_forks = forks()
            return self._pool

    def _new_client(self) -> S3Client:
        return new_client(self.url, retries=self.retries, timeout=self.timeout,
                          connections=self.transfer.concurrency + POOL_EXTRA,
                          retry_window=self.retry_window)  # fmt: skip

    def _miss(self) -> None:
        """Make sure a 404 means a missing object, not a missing bucket: a HEAD of either
        answers a bare 404, and a misconfigured remote must not pass for an empty one."""
        if self._bucket_seen:
            return
        client = self.client
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            if missing(error):
                raise RemoteError(
                    f"remote {self.url}: bucket {self.bucket!r} does not exist (NoSuchBucket)",
                    url=self.url, status=404, attempts=1, permanent=True,
                ) from error  # fmt: skip
            raise self._failure(error, "cannot look up the bucket of", self.url) from error
        self._bucket_seen = True

    def _failure(self, error: BaseException, doing: str, url: str) -> RemoteError:
        return failure(error, doing, url, self.bucket)

    def _manager(self) -> Any:
        """A new s3transfer TransferManager for one blob (after the client, so that a missing
        boto3 is a RemoteError)."""
        client = self.client
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=self.transfer.threshold,
            multipart_chunksize=self.transfer.part_size,
            max_concurrency=self.transfer.concurrency,
            num_download_attempts=min(self.retries, STREAM_RETRIES) + 1,
            preferred_transfer_client="classic",  # the same code path wherever cas runs
        )
        return create_transfer_manager(client, config)

    # -- layout ----------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def blob_key(self, digest: str) -> str:
        """The key of a blob: the one owner of the remote ``blobs/ab/<digest>`` scheme."""
        return self._key(*blob_parts(digest))

    def name_key(self, name: str) -> str:
        """The key of a name's record (``name_leaf``: no segment reaches 255 bytes)."""
        return self._key(NAMES, name_leaf(name))

    def legacy_name_key(self, name: str) -> str | None:
        """Where the first layout kept the record of ``name``, when that differs from
        ``name_key`` (``legacy_name_leaf``)."""
        leaf = legacy_name_leaf(name)
        return self._key(NAMES, leaf) if leaf is not None else None

    def alias_key(self, sha256: str) -> str:
        """The key of the record that maps an upstream SHA-256 to a BLAKE3 digest."""
        return self._key(ALIASES, alias_leaf(sha256))

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- blobs -----------------------------------------------------------------------------------

    def readable(self, digest: str) -> bool:
        """Whether the remote serves the first byte of a blob it has (a HEAD answers from
        metadata alone, so an object whose content was lost still looks present). False when
        the store answers a server error; other failures raise RemoteError."""
        key = self.blob_key(digest)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
            with contextlib.closing(response["Body"]) as body:
                body.read()
        except Exception as error:
            if missing(error):
                return False
            failure = self._failure(error, "cannot read", self.url_of(key))
            if failure.status is not None and failure.status >= 500:
                log.debug("%s", failure)
                return False
            raise failure from error
        return True

    def size_of(self, digest: str) -> int | None:
        """The size of the remote blob, or None when the remote does not have it."""
        key = self.blob_key(digest)
        client = self.client
        try:
            head = client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if missing(error):
                self._miss()
                return None
            raise self._failure(error, "cannot look up", self.url_of(key)) from error
        return int(head["ContentLength"])

    def get(
        self,
        digest: str,
        blobs: BlobStore,
        *,
        size: int | None = None,
        sha256: str | None = None,
        received: Callable[[int], None] | None = None,
        sync: bool = True,
        inline: bytes | None = None,
    ) -> Download | None:
        """Download the blob into a staging file of ``blobs`` (fsynced unless ``sync`` is
        False: ``BlobStore.batch_sync``) and verify it; None when the remote does not have it.
        ``inline`` is its content as its name's record brought it (``verified_content``):
        staged without another request.

        Raises IntegrityError (nothing is kept) when the content is not ``digest``, or not
        ``size`` bytes or ``sha256`` when given; RemoteError when the remote cannot be used.
        ``received(n)`` is told the bytes that came over the network.
        """
        if inline is not None:
            staged = blobs.staging.stage_bytes(inline, digest, sync=sync)
            if received is not None:
                received(len(inline))
            found = hashlib.sha256(inline).hexdigest() if sha256 is not None else None
            return self._verified(staged, self.url_of(self.blob_key(digest)), len(inline),
                                  found, digest, size, sha256)  # fmt: skip
        key = self.blob_key(digest)
        where = self.url_of(key)
        ranged = RangedGet(
            self.client, self.bucket, key, where, part_size=self.transfer.part_size,
            pool=self._parts, size=size, want_sha256=sha256 is not None,
            stream_retries=min(self.retries, STREAM_RETRIES),
        )  # fmt: skip
        try:
            staged = blobs.staging.stage_written(ranged.fill, sync=sync)
        except CasError:
            raise
        except Exception as error:
            if local(error):
                raise  # the store's own disk (ENOSPC, EACCES): not the remote's failure
            if missing(error):
                self._miss()
                return None
            raise self._failure(error, "cannot download", where) from error
        finally:
            if received is not None and ranged.count:
                received(ranged.count)
        found = ranged.sha256.hexdigest() if ranged.sha256 is not None else None
        return self._verified(staged, where, ranged.count, found, digest, size, sha256)

    @staticmethod
    def _verified(
        staged: Staged, where: str, count: int, found: str | None,
        digest: str, size: int | None, sha256: str | None,
    ) -> Download:  # fmt: skip
        """The download of ``staged``, or IntegrityError (and nothing kept) when it is not
        what was expected."""
        problem = mismatch(staged.digest, staged.size, found, digest, size, sha256)
        if problem is not None:
            staged.discard()
            expected, got, what = problem
            raise IntegrityError(
                f"remote object {where} is damaged: its {what} is {got}, not {expected};"
                " it was not stored",
                expected=expected,
                found=got,
            )
        return Download(staged=staged, upstream={"sha256": found} if found else {},
                        attempts=1, transferred=count, resumed=0)  # fmt: skip

    def put(self, digest: str, blob: BinaryIO) -> None:
        """Upload an open blob under its digest: one PUT up to ``Transfer.threshold``, a
        multipart upload above, whose parts are read by the threads that send them.

        Overwrites what is there: the same content, or damaged content being repaired.
        """
        key = self.blob_key(digest)
        size = os.fstat(blob.fileno()).st_size
        try:
            if size < self.transfer.threshold:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=blob)
            else:
                self._upload(blob, key)
        except Exception as error:
            if local(error):
                raise  # reading the blob here failed, not the remote
            raise self._failure(error, "cannot upload to", self.url_of(key)) from error

    def _upload(self, blob: BinaryIO, key: str) -> None:
        """A multipart upload. Given a file name, s3transfer reads each part in the thread that
        sends it (a file object is read part by part into memory first, up to ten parts); the
        name is the open descriptor's, so a path swapped meanwhile is never read."""
        manager = self._manager()
        fd_path = f"/proc/self/fd/{blob.fileno()}"
        try:
            if os.path.exists(fd_path):
                manager.upload(fd_path, self.bucket, key).result()
            else:
                manager.upload(blob, self.bucket, key).result()
        finally:
            manager.shutdown()

    # -- records ---------------------------------------------------------------------------------

    def get_name(self, name: str) -> NameRecord | None:
        """The remote's record of ``name``, or None. Raises UsageError for an invalid record."""
        key = self.name_key(name)
        data = self._get_record(key)
        legacy = self.legacy_name_key(name)
        if data is None and legacy is not None:
            key, data = legacy, self._get_record(legacy)
        if data is None:
            return None
        record = NameRecord.from_json(data, self.url_of(key))
        if record.name != name:
            raise UsageError(
                f"remote record {self.url_of(key)} names {record.name!r}, not {name!r}"
            )
        return record

    def put_name(self, record: NameRecord) -> None:
        self._put_record(self.name_key(record.name), record.to_json())

    def names(self) -> Iterator[str]:
        """Every name the remote has a valid record of, once each (see ``listing``)."""
        for entry in self.listing():
            if entry.name is not None:
                yield entry.name

    def listing(self) -> Iterator[Listed]:
        """Each record under ``names/``: its name, or why it cannot be one (a key that is not
        a quoted name, a hash-keyed record that is invalid or cannot be read). A name kept
        under both layouts is listed once. Raises RemoteError when the listing itself fails."""
        folder = self._key(NAMES) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        seen: set[str] = set()
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    entry = self._entry(item["Key"], item["Key"][len(folder) :])
                    if entry.name is None or entry.name not in seen:
                        seen.update([entry.name] if entry.name is not None else [])
                        yield entry
        except CasError:
            raise
        except Exception as error:
            raise self._failure(error, "cannot list", self.url_of(folder)) from error

    def _entry(self, key: str, leaf: str) -> Listed:
        """What the record at ``key`` (``leaf`` below ``names/``) names."""
        where = self.url_of(key)
        try:
            name = name_of_leaf(leaf, where)
            if name is not None:
                return Listed(where, name)
            data = self._get_record(key)
            if data is None:  # deleted since the listing
                raise NotFound(f"remote record {where} is gone")
            return Listed(where, NameRecord.from_json(data, where).name)
        except UnicodeDecodeError as error:
            return Listed(where, error=UsageError(f"remote record {where} is not valid: {error}"))
        except CasError as error:
            return Listed(where, error=error)

    def get_alias(self, sha256: str) -> str | None:
        """The BLAKE3 digest the remote maps an upstream SHA-256 to, or None."""
        key = self.alias_key(sha256)
        data = self._get_record(key)
        if data is None:
            return None
        return alias_from_json(data, sha256, self.url_of(key))

    def put_alias(self, sha256: str, digest: str) -> None:
        self._put_record(self.alias_key(sha256), alias_to_json(sha256, digest))

    def _get_record(self, key: str) -> bytes | None:
        client = self.client
        quick = quick_get(client, self.bucket, key, RECORD_MAX)
        if quick is not None:
            status, data = quick
            if status == 404:
                self._miss()
                return None
            return data
        try:
            response = client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                data = body.read(RECORD_MAX + 1)
        except Exception as error:
            if missing(error):
                self._miss()
                return None
            raise self._failure(error, "cannot read", self.url_of(key)) from error
        if len(data) > RECORD_MAX:
            raise UsageError(f"remote record {self.url_of(key)} is larger than {RECORD_MAX} bytes")
        return bytes(data)

    def _put_record(self, key: str, data: bytes) -> None:
        client = self.client
        try:
            client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json"
            )
        except Exception as error:
            raise self._failure(error, "cannot write", self.url_of(key)) from error
