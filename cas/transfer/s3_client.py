"""The boto3 client of the remote tier: its settings, what the sessions of one process share,
and a cheaper GET of small objects.

boto3 is imported here, when a remote is first used.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from cas.errors import RemoteError
from cas.transfer import USER_AGENT
from cas.transfer.s3_errors import RetryWindow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: botocore's data loader (parsed service models and endpoint rules), shared by the sessions of
#: this process: reading them costs a new session 0.1 s of CPU. Each client still gets a
#: session of its own (boto3's default session is not thread-safe to create clients, and a
#: session keeps the credentials it first found).
_SHARED: dict[str, object] = {}
_SHARED_LOCK = threading.Lock()


def _session() -> Any:
    """A new boto3 session over the process's shared botocore components."""
    import boto3.session
    import botocore.session

    core = botocore.session.get_session()
    # Timestamps (LastModified of each object read or listed) stay text: cas reads none, and
    # botocore parses each with dateutil, a tenth of a millisecond apiece.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    with _SHARED_LOCK:
        for name, component in _SHARED.items():
            core.register_component(name, component)
        session = boto3.session.Session(botocore_session=core)
        loader = core.get_component("data_loader")
        # boto3 adds its folder to the loader's search path once per session: once is enough.
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
        _SHARED.setdefault("data_loader", loader)
    return session


def new_client(url: str, *, retries: int, timeout: float, connections: int,
               retry_window: float) -> S3Client:  # fmt: skip
    """A client for the remote ``url``: standard retries, ``timeout`` per connect and read,
    a pool of ``connections``. RemoteError when boto3 is not installed."""
    try:
        session = _session()
        from botocore.config import Config
    except ImportError as error:
        raise RemoteError(
            f"remote {url} needs boto3: pip install 'cas-fixtures[s3]'",
            url=url, permanent=True,
        ) from error  # fmt: skip

    config = Config(
        retries={"mode": "standard", "total_max_attempts": retries + 1},
        connect_timeout=timeout,
        read_timeout=timeout,
        # Parts in flight, and the blobs and records that pushes and pulls move at once.
        max_pool_connections=connections,
        user_agent_extra=USER_AGENT,
        # No CRC32 of every body received: each blob is checked by its BLAKE3 digest. (Sent
        # bodies keep theirs: without it, botocore signs a body's SHA-256 over plain HTTP.)
        response_checksum_validation="when_required",
    )
    client = cast("S3Client", session.client("s3", config=config))
    RetryWindow(retry_window).install(client)
    return client


#: Seconds a presigned URL of ``quick_get`` is valid: it is used at once.
PRESIGNED_FOR = 300


def quick_get(client: Any, bucket: str, key: str, limit: int) -> tuple[int, bytes] | None:
    """(200, body) or (404, b"") for the object at ``key``, fetched by a presigned URL sent
    through the client's own HTTP session (its proxies, certificates, pool and timeouts); None
    for anything else (another status, a body over ``limit`` bytes, an error, a client without
    that session), and the caller asks through ``get_object``, whose retries and error
    translation apply.

    Why: botocore's request pipeline (parameters, endpoint rules, events, signing, parsing)
    costs a third of the CPU of a small GET, and a pull of many small fixtures is bound by that
    CPU: 0.85 ms against 1.2 ms a record here.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None:
        return None
    from botocore.awsrequest import AWSRequest

    try:
        url = client.generate_presigned_url("get_object", ExpiresIn=PRESIGNED_FOR,
                                            Params={"Bucket": bucket, "Key": key})  # fmt: skip
        request = AWSRequest(method="GET", url=url).prepare()
        request.stream_output = True
        response = session.send(request)
    except Exception:
        return None
    raw = response.raw
    try:
        body = raw.read(limit + 1) if response.status_code == 200 else b""
        if len(body) > limit:
            raw.close()  # the rest is not read: the connection is not reused
            return None
        raw.drain_conn()  # a 404's error document; nothing after a body read in full
        raw.release_conn()
    except Exception:
        raw.close()
        return None
    if response.status_code == 404:
        return 404, b""
    return (200, bytes(body)) if response.status_code == 200 else None
