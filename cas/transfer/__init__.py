"""Bytes from elsewhere into staging (HTTP origins, S3 buckets); never touches the catalog.

    request.py     what a transfer is asked for and hands back (light: no HTTP client)
    http.py        the Downloader: one HTTP(S) transfer, its attempts and its bounds
    retry.py       which failures are retried, backoff, the shared budget, one-line reasons
    responses.py   whole-header responses; Content-Range, validators, redirect checks
    headers.py     a request's private headers: credentials, extra headers, ${VAR} at send time
    partial.py     resumable partial downloads: the file, its hashers, its sidecar
    flight.py      single flight: lock files, heartbeat, going on past a stalled holder
    s3.py          the remote tier's bucket: has, get and put of blobs and records
    s3_records.py  the bucket's keys and records (light)
    s3_ranges.py   a remote blob in ranges, in parallel, into staging
    s3_errors.py   botocore's errors translated, and the window for its retries
"""

from cas import DISTRIBUTION, __version__

#: Sent with every request, to origins and to S3: the distribution's name and version.
USER_AGENT = f"{DISTRIBUTION}/{__version__}"
