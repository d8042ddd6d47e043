"""The store's counters by name: ``Counter`` and the help text of each.

Counters are monotonic totals in the catalog's ``counters`` table, added to with
``Catalog.count(Counter.X, amount)``; storage/metrics.py reads them into the stats report. Apart
from it because every read counts a hit, while only ``stats`` needs the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Counter(StrEnum):
    """Every counter, by its name in the catalog; its Prometheus name is ``cas_<name>_total``."""

    HITS = "hits"
    MISSES = "misses"
    DOWNLOADS_SUCCEEDED = "downloads_succeeded"
    DOWNLOADS_FAILED = "downloads_failed"
    DOWNLOAD_RETRIES = "download_retries"
    DOWNLOADED_BYTES = "downloaded_bytes"
    RESUME_SAVED_BYTES = "resume_saved_bytes"
    DEDUP_SAVED_BYTES = "dedup_saved_bytes"
    EVICTIONS = "evictions"
    EVICTED_BYTES = "evicted_bytes"
    CLEANUP_RUNS = "cleanup_runs"
    VERIFICATION_FAILURES = "verification_failures"


HELP: Mapping[Counter, str] = {
    Counter.HITS: "Refs served from a stored blob (path, read, open, lease).",
    Counter.MISSES: "Refs asked for that were unknown or whose blob was not stored.",
    Counter.DOWNLOADS_SUCCEEDED: "Downloads that ended with verified content.",
    Counter.DOWNLOADS_FAILED: "Downloads that failed after their retries.",
    Counter.DOWNLOAD_RETRIES: "Download attempts made after a failed attempt.",
    Counter.DOWNLOADED_BYTES: "Bytes received from the network.",
    Counter.RESUME_SAVED_BYTES: "Bytes not downloaded again thanks to resuming a partial file.",
    Counter.DEDUP_SAVED_BYTES: "Bytes put whose content was stored already (never a download).",
    Counter.EVICTIONS: "Blobs removed by cleanup.",
    Counter.EVICTED_BYTES: "Bytes of the blobs removed by cleanup.",
    Counter.CLEANUP_RUNS: "Cleanup (gc) runs that completed.",
    Counter.VERIFICATION_FAILURES: "Blobs that verification found missing or damaged.",
}
