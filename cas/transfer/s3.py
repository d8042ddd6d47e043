"""The remote tier's storage: blobs and small records in an S3-compatible bucket.

Mechanism only, like download.py: this module knows nothing of the catalog. The policy (when
to read through, what to push) is cas/ops/tier.py. Layout under ``s3://bucket/prefix``:

    <prefix>/blobs/ab/<digest>           the content, keyed by its BLAKE3 digest
    <prefix>/names/<quoted name>.json    a ``NameRecord``: digest, size, source URL, sha256
    <prefix>/names/#<sha256 of name>.json  the same, for a name whose quoted form is long
    <prefix>/sha256/<sha256>.json        an ``Alias``: the BLAKE3 digest of an upstream checksum

Blob keys are content addresses and records are idempotent, so any number of stores on any
number of machines write without coordinating: two writers of one blob write the same bytes.

Nothing read from the bucket is trusted. A blob streams through the store's one staging
protocol (``BlobStore.stage_stream``: a private file under ``tmp/``, hashed while written,
fsynced) and is handed over only when its BLAKE3 digest and size, and its SHA-256 when one is
expected, match; a record is checked field by field before it is used.

The client is boto3, imported when a remote is first used (``cas path`` of a stored blob never
pays for it). Endpoint, region and credentials come from the standard AWS sources: ``AWS_*``
variables including ``AWS_ENDPOINT_URL``, and the shared config and credentials files. Objects
above ``Transfer.threshold`` move by multipart transfer, ``Transfer.concurrency`` parts at once.
Transient errors (connection failures, timeouts, throttling, 5xx) are retried by botocore's
standard retry mode with the store's ``retries`` budget, but only within ``RETRY_WINDOW`` seconds
of a request's first attempt: the remote is a cache, and a store that takes 13 s to answer 500
must cost one such answer, not six, before the origin is asked. Permanent errors (403,
NoSuchBucket, bad or missing credentials) are not retried, and become a ``RemoteError`` with
``permanent`` set; a refused access says which bucket and that the credentials may be wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote, unquote, urlsplit

from cas.errors import CasError, IntegrityError, NotFound, RemoteError, UsageError
from cas.refs import check_digest, check_name
from cas.storage.blobs import BlobStore
from cas.storage.processes import forks
from cas.transfer import USER_AGENT
from cas.transfer.request import Download, check_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("cas")

MiB = 1 << 20
#: Largest metadata object read: records are a few hundred bytes; anything bigger is not ours.
RECORD_MAX = 64 * 1024
#: Longest quoted name used as a key as it is; longer names are keyed by their SHA-256 instead
#: (``#`` never appears in a quoted name). With ``.json`` the key's last segment stays under the
#: 255 bytes that SeaweedFS (and most file systems behind S3 gateways) allow a segment.
NAME_KEY_MAX = 240
#: The limit of the first layout (before issue 13): quoted names up to 512 characters were keys.
#: Such records are still read, and listed once.
LEGACY_NAME_KEY_MAX = 512
#: Seconds after a request's first attempt within which a failed attempt is retried.
RETRY_WINDOW = 5.0
#: Further downloads of a blob after its body stream broke (each request retries besides).
STREAM_RETRIES = 1
#: Error codes no retry can fix.
PERMANENT_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "NoSuchBucket", "AuthorizationHeaderMalformed", "ExpiredToken",
    "InvalidToken", "AccountProblem", "InvalidObjectState", "MethodNotAllowed",
})  # fmt: skip


@dataclass(frozen=True)
class Transfer:
    """How blobs move: multipart above ``threshold`` bytes, in parts of ``part_size``, with
    ``concurrency`` parts in flight. boto3's defaults, which suit S3 itself."""

    threshold: int = 8 * MiB
    part_size: int = 8 * MiB
    concurrency: int = 10


@dataclass(frozen=True)
class NameRecord:
    """What the remote knows of a name: its content and where that came from."""

    name: str
    digest: str
    size: int
    url: str | None = None
    sha256: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> NameRecord:
        """Parse and check a record read from the bucket; UsageError names what is wrong."""
        try:
            value = json.loads(data)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            size = value.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"size {size!r} is not a number of bytes")
            record = cls(
                name=check_name(value["name"]),
                digest=check_digest(value["digest"], "digest"),
                size=size,
                url=check_url(value["url"]) if value.get("url") is not None else None,
                sha256=(check_digest(value["sha256"], "sha256")
                        if value.get("sha256") is not None else None),
            )  # fmt: skip
        except KeyError as error:
            raise UsageError(f"remote record {where} is not valid: no {error}") from error
        except (ValueError, TypeError, UsageError) as error:
            raise UsageError(f"remote record {where} is not valid: {error}") from error
        return record


@dataclass(frozen=True)
class Listed:
    """One record found by listing the remote's names: the name, or why it is none."""

    where: str  #: the record's s3:// URL
    name: str | None = None
    error: CasError | None = None


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

    def _new_client(self) -> S3Client:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as error:
            raise RemoteError(
                f"remote {self.url} needs boto3: pip install 'cas-fixtures[s3]'",
                url=self.url, permanent=True,
            ) from error  # fmt: skip

        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.retries + 1},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            max_pool_connections=max(10, self.transfer.concurrency + 2),
            user_agent_extra=USER_AGENT,
        )
        # A session of its own: boto3's default session is not thread-safe to create clients.
        client = boto3.session.Session().client("s3", config=config)
        _RetryWindow(self.retry_window).install(client)
        return client

    def _miss(self) -> None:
        """Make sure a 404 means a missing object, not a missing bucket: a HEAD of either
        answers a bare 404, and a misconfigured remote must not pass for an empty one."""
        if self._bucket_seen:
            return
        client = self.client
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            if _missing(error):
                raise RemoteError(
                    f"remote {self.url}: bucket {self.bucket!r} does not exist (NoSuchBucket)",
                    url=self.url, status=404, attempts=1, permanent=True,
                ) from error  # fmt: skip
            raise self._failure(error, "cannot look up the bucket of", self.url) from error
        self._bucket_seen = True

    def _failure(self, error: BaseException, doing: str, url: str) -> RemoteError:
        return _failure(error, doing, url, self.bucket)

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
        return self._key("blobs", digest[:2], digest)

    def name_key(self, name: str) -> str:
        """The key of a name's record: the name URL-quoted (``/`` too), or hashed if long, so
        that no segment of the key reaches 255 bytes, whatever the name."""
        quoted = quote(name, safe="")
        if len(quoted) > NAME_KEY_MAX:
            quoted = "#" + hashlib.sha256(name.encode()).hexdigest()
        return self._key("names", quoted + ".json")

    def legacy_name_key(self, name: str) -> str | None:
        """Where the first layout kept the record of ``name``, when that differs from
        ``name_key``: quoted names of ``NAME_KEY_MAX`` to ``LEGACY_NAME_KEY_MAX`` characters."""
        quoted = quote(name, safe="")
        if NAME_KEY_MAX < len(quoted) <= LEGACY_NAME_KEY_MAX:
            return self._key("names", quoted + ".json")
        return None

    def alias_key(self, sha256: str) -> str:
        """The key of the record that maps an upstream SHA-256 to a BLAKE3 digest."""
        return self._key("sha256", sha256 + ".json")

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
            if _missing(error):
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
            if _missing(error):
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
    ) -> Download | None:
        """Stream the blob into a staging file of ``blobs`` and verify it; None when the remote
        does not have it.

        Raises IntegrityError (nothing is kept) when the content is not ``digest``, or not
        ``size`` bytes or ``sha256`` when given; RemoteError when the remote cannot be used.
        ``received(n)`` is told the bytes that came over the network.
        """
        key = self.blob_key(digest)
        where = self.url_of(key)
        pipe = _Pipe(where, size, sha256 is not None)
        manager = self._manager()
        failed = True
        try:
            # Typed for files and BaseSubscribers; s3transfer only calls write and on_done.
            target: Any = pipe
            done: Any = _Done(pipe)
            future = manager.download(self.bucket, key, target, subscribers=[done])
            try:
                staged = blobs.stage_stream(cast(BinaryIO, pipe))
            finally:
                pipe.close()  # if staging stopped early, the download's next write fails
            future.result()
            failed = False
        except CasError:
            raise
        except Exception as error:
            if _local(error):
                raise  # the store's own disk (ENOSPC, EACCES): not the remote's failure
            if _missing(error):
                self._miss()
                return None
            raise self._failure(error, "cannot download", where) from error
        finally:
            manager.shutdown(cancel=failed)
            if received is not None and pipe.count:
                received(pipe.count)
        found = pipe.sha256.hexdigest() if pipe.sha256 is not None else None
        problem = _mismatch(staged.digest, staged.size, found, digest, size, sha256)
        if problem is not None:
            staged.discard()
            expected, got, what = problem
            raise IntegrityError(
                f"remote object {where} is damaged: its {what} is {got}, not {expected};"
                " it was not stored",
                expected=expected,
                found=got,
            )
        return Download(staged=staged, sha256=found, attempts=1, transferred=pipe.count,
                        resumed=0)  # fmt: skip

    def put(self, digest: str, blob: BinaryIO) -> None:
        """Upload an open blob under its digest (multipart when large).

        Overwrites what is there: the same content, or damaged content being repaired.
        """
        key = self.blob_key(digest)
        manager = self._manager()
        try:
            manager.upload(blob, self.bucket, key).result()
        except Exception as error:
            if _local(error):
                raise  # reading the blob here failed, not the remote
            raise self._failure(error, "cannot upload to", self.url_of(key)) from error
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
        folder = self._key("names") + "/"
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
            if not leaf.endswith(".json") or "/" in leaf:
                raise UsageError(f"remote record {where} is not valid: not <name>.json")
            stem = leaf.removesuffix(".json")
            if not stem.startswith("#"):
                name = unquote(stem, errors="strict")
                try:
                    return Listed(where, check_name(name))
                except UsageError as error:
                    raise UsageError(f"remote record {where} is not valid: {error}") from error
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
        try:
            value = json.loads(data)
            if value.get("sha256") != sha256:
                raise ValueError(f"it is the record of {value.get('sha256')!r}")
            return check_digest(value.get("blake3"), "blake3")
        except (ValueError, TypeError, AttributeError, UsageError) as error:
            raise UsageError(f"remote record {self.url_of(key)} is not valid: {error}") from error

    def put_alias(self, sha256: str, digest: str) -> None:
        record = {"sha256": sha256, "blake3": digest}
        self._put_record(self.alias_key(sha256), json.dumps(record, sort_keys=True).encode())

    def _get_record(self, key: str) -> bytes | None:
        client = self.client
        try:
            response = client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                data = body.read(RECORD_MAX + 1)
        except Exception as error:
            if _missing(error):
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


# -- streaming a download into staging -------------------------------------------------------------


class _Pipe:
    """Carries a download's bytes, in order, from s3transfer's writer thread to the staging
    reader: ``write`` on one side, ``read`` on the other, a bounded queue between.

    s3transfer writes a target without ``seek`` strictly in order (it holds early parts back),
    so the reader hashes the content as it arrives. The size is checked on the way: a remote
    object longer than expected is refused before it fills the disk.
    """

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


class _Done:
    """An s3transfer subscriber that ends the pipe when the transfer finishes, either way."""

    def __init__(self, pipe: _Pipe) -> None:
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


def _mismatch(
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


# -- errors: botocore's, translated at this one boundary -------------------------------------------


def _local(error: BaseException) -> bool:
    """Whether ``error`` is an OSError of this machine's files, not of the network (botocore's
    network errors derive from OSError too, through the requests exceptions it carries)."""
    from botocore.exceptions import BotoCoreError

    return isinstance(error, OSError) and not isinstance(error, BotoCoreError)


def _missing(error: BaseException) -> bool:
    """Whether ``error`` says the object does not exist (a miss, not a failure)."""
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")
    return False


#: Error codes that mean the credentials were refused or lack a permission (HEAD answers a bare
#: "403" with no body, so its code is the status).
DENIED_CODES = frozenset({
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "AllAccessDisabled", "AccountProblem",
})  # fmt: skip


def _failure(error: BaseException, doing: str, url: str, bucket: str) -> RemoteError:
    """A one-line RemoteError for a botocore or s3transfer error, permanent or not."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        meta = error.response.get("ResponseMetadata", {})
        code = str(info.get("Code", "")) or "error"
        status = meta.get("HTTPStatusCode")
        attempts = int(meta.get("RetryAttempts", 0)) + 1
        permanent = code in PERMANENT_CODES or (
            status is not None and 400 <= status < 500 and status not in (408, 429)
        )
        message = " ".join(str(info.get("Message", "")).split())
        if status == 403 or code in DENIED_CODES:
            return RemoteError(
                f"{doing} {url}: access denied to bucket {bucket!r} (HTTP 403"
                + ("" if code == "403" else f" {code}") + "):"
                " the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS"
                " profile) may be wrong or lack permission",
                url=url, status=status, attempts=attempts, permanent=True,
            )  # fmt: skip
        return RemoteError(
            f"{doing} {url}: {code}" + (f" ({message})" if message else "")
            + (f" after {attempts} attempts" if attempts > 1 else ""),
            url=url, status=status, attempts=attempts, permanent=permanent,
        )  # fmt: skip
    permanent = isinstance(
        error, NoCredentialsError | PartialCredentialsError | ParamValidationError
    )
    if isinstance(error, EndpointConnectionError):
        endpoint = urlsplit(str(error.kwargs.get("endpoint_url", ""))).netloc
        text = f"cannot connect to {endpoint or 'the endpoint'}"
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    return RemoteError(f"{doing} {url}: {text}", url=url, permanent=permanent)



class _RetryWindow:
    """Stops botocore's retries once ``seconds`` have passed since a request's first attempt.

    botocore's standard mode bounds attempts, not time: a store that needs 13 s to answer 500
    to a GET cost 6 x 13 s before the origin was asked (issue 13). Installed as the first
    ``needs-retry`` handler, this one raises the failure itself when the window has closed, so
    the standard handler is not asked for another attempt. Uploads keep the whole budget: a
    part may take longer than the window to send, and a push has no origin to fall back on.
    """

    KEY = "cas_first_attempt"
    UPLOADS = frozenset({"PutObject", "UploadPart"})

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def install(self, client: Any) -> None:
        events = client.meta.events
        events.register_first("before-call.s3", self.started)
        events.register_first("needs-retry.s3", self.check)

    def started(self, context: dict[str, Any], **_: Any) -> None:
        context[self.KEY] = time.monotonic()

    def check(
        self, request_dict: dict[str, Any], operation: Any, response: Any = None,
        caught_exception: BaseException | None = None, **_: Any,
    ) -> None:  # fmt: skip
        context = request_dict.get("context", {})
        started = context.get(self.KEY)
        if (started is None or operation.name in self.UPLOADS
                or time.monotonic() - started < self.seconds):  # fmt: skip
            return  # within the window: the standard handler decides
        if caught_exception is not None:
            raise caught_exception
        if response is not None and response[0].status_code >= 300:
            from botocore.exceptions import ClientError

            parsed = response[1]
            override = context.get("error_code_override")
            if override:
                parsed.setdefault("Error", {})["Code"] = override
            raise ClientError(parsed, operation.name)
