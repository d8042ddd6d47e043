"""botocore's errors, translated at this one boundary into RemoteError, and the time window
within which botocore may retry a request.

Transient errors (connection failures, timeouts, throttling, 5xx) are retried by botocore's
standard retry mode with the store's ``retries`` budget, but only within ``RETRY_WINDOW``
seconds of a request's first attempt (``RetryWindow``). Permanent errors (403, NoSuchBucket,
bad or missing credentials) are not retried, and become a ``RemoteError`` with ``permanent``
set; a refused access says which bucket and that the credentials may be wrong. botocore is
imported inside the functions: only a remote in use pays for it.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from cas.errors import RemoteError

#: Seconds after a request's first attempt within which a failed attempt is retried.
RETRY_WINDOW = 5.0
#: Error codes no retry can fix.
PERMANENT_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "NoSuchBucket", "AuthorizationHeaderMalformed", "ExpiredToken",
    "InvalidToken", "AccountProblem", "InvalidObjectState", "MethodNotAllowed",
})  # fmt: skip


def local(error: BaseException) -> bool:
    """Whether ``error`` is an OSError of this machine's files, not of the network (botocore's
    network errors derive from OSError too, through the requests exceptions it carries)."""
    from botocore.exceptions import BotoCoreError

    return isinstance(error, OSError) and not isinstance(error, BotoCoreError)


def missing(error: BaseException) -> bool:
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


def failure(error: BaseException, doing: str, url: str, bucket: str) -> RemoteError:
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


class RetryWindow:
    """Stops botocore's retries once ``seconds`` have passed since a request's first attempt.

    botocore's standard mode bounds attempts, not time: a store that needs 13 s to answer 500
    to a GET cost 6 x 13 s before the origin was asked. Installed as the first
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
