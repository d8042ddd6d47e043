"""The boto3 client of the remote tier: its settings, and what the sessions of one process share.

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
