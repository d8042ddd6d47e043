"""Metrics: the stats and health of a store, computed from its counters (storage/counters.py)
and what it holds.

Counters are monotonic totals in the catalog's ``counters`` table, so they add up across
processes (SPEC "Metrics"). Code adds to one with ``Catalog.count(Counter.X, amount)``, which
costs no transaction of its own: increments wait in memory and ride along with the next write
transaction, the store's close, or a flush once they have waited ``ACCESS_GRANULARITY``, the same
way as last-access updates (guarantee 6). A process killed with SIGKILL loses the increments it
had not written yet, never more.

Who adds to what: the ``HELP`` text of each counter (storage/counters.py) says when it grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cas.settings import Settings
from cas.storage.counters import HELP, Counter

#: More staging debris than this (files or bytes) makes ``cas stats --check`` fail: gc is not
#: running.
DEBRIS_MAX_FILES = 100
DEBRIS_MAX_BYTES = 2**30


@dataclass(frozen=True)
class Usage:
    """What the catalog holds now."""

    bytes: int
    blobs: int
    names: int
    live_leases: int


@dataclass(frozen=True)
class Stats:
    """Counters, storage use, water marks and staging debris of one store at one moment."""

    counters: Mapping[Counter, int]
    usage: Usage
    max_cache_size: int
    low_water_bytes: int
    #: What the next gc removes from tmp/ (storage/staging.py ``is_debris``).
    debris_files: int
    debris_bytes: int
    #: Every file in tmp/ now: partial downloads (a killed fetch's too, until gc or verify
    #: reclaims it) and puts in progress. Size-based cleanup counts these bytes as stored.
    staging_files: int = 0
    staging_bytes: int = 0
    #: What verify moved to ``quarantine/`` and cleanup has not yet removed (cas/ops/cleanup.py).
    quarantine_files: int = 0
    quarantine_bytes: int = 0
    #: Stored trees; named views under ``views/`` and the bytes of their copies (executable
    #: files of trees: a view's other files are hard links of blobs and cost nothing more).
    trees: int = 0
    views: int = 0
    view_bytes: int = 0

    @classmethod
    def build(
        cls, counts: Mapping[str, int], usage: Usage, settings: Settings, debris: tuple[int, int],
        staging: tuple[int, int] = (0, 0),
        quarantine: tuple[int, int] = (0, 0),
        views: tuple[int, int, int] = (0, 0, 0),
    ) -> Stats:
        """Stats from the catalog's counter rows (unknown names ignored, missing ones 0)."""
        return cls(
            counters={counter: int(counts.get(counter, 0)) for counter in Counter},
            usage=usage,
            max_cache_size=settings.max_cache_size,
            low_water_bytes=settings.low_water_bytes,
            debris_files=debris[0],
            debris_bytes=debris[1],
            staging_files=staging[0],
            staging_bytes=staging[1],
            quarantine_files=quarantine[0],
            quarantine_bytes=quarantine[1],
            trees=views[0],
            views=views[1],
            view_bytes=views[2],
        )

    @property
    def usage_ratio(self) -> float | None:
        """Stored bytes as a share of ``max_cache_size``; None when that is 0."""
        return self.usage.bytes / self.max_cache_size if self.max_cache_size else None

    @property
    def hit_ratio(self) -> float | None:
        """Hits over hits and misses; None before the first of either."""
        return _ratio(self.counters[Counter.HITS], self.counters[Counter.MISSES])

    @property
    def download_success_rate(self) -> float | None:
        """Succeeded downloads over finished ones; None before the first."""
        return _ratio(
            self.counters[Counter.DOWNLOADS_SUCCEEDED], self.counters[Counter.DOWNLOADS_FAILED]
        )

    def problems(self) -> list[str]:
        """Why the store is unhealthy, one phrase per problem; empty when it is healthy."""
        found = []
        if self.usage.bytes > self.max_cache_size:
            found.append(
                f"over its size limit: {human_size(self.usage.bytes)} stored,"
                f" max_cache_size is {human_size(self.max_cache_size)}; run `cas gc`"
            )
        failures = self.counters[Counter.VERIFICATION_FAILURES]
        if failures:
            found.append(
                f"{failures} verification failure{'s' if failures != 1 else ''} recorded;"
                " run `cas verify --repair`"
            )
        if self.debris_files > DEBRIS_MAX_FILES or self.debris_bytes > DEBRIS_MAX_BYTES:
            found.append(
                f"staging debris piling up: {self.debris_files} files"
                f" ({human_size(self.debris_bytes)}) in tmp/ that no writer will finish;"
                " run `cas gc`"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``cas stats --json``."""
        return {
            "counters": {str(counter): value for counter, value in self.counters.items()},
            "storage": {
                "bytes": self.usage.bytes,
                "blobs": self.usage.blobs,
                "names": self.usage.names,
                "live_leases": self.usage.live_leases,
                "usage_ratio": self.usage_ratio,
            },
            "water_marks": {"high": self.max_cache_size, "low": self.low_water_bytes},
            "hit_ratio": self.hit_ratio,
            "download_success_rate": self.download_success_rate,
            "staging_debris": {"files": self.debris_files, "bytes": self.debris_bytes},
            "staging": {"files": self.staging_files, "bytes": self.staging_bytes},
            "quarantine": {"files": self.quarantine_files, "bytes": self.quarantine_bytes},
            "trees": self.trees,
            "views": {"count": self.views, "copied_bytes": self.view_bytes},
            "problems": self.problems(),
        }

    def prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4); undefined ratios are left out."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float | None) -> None:
            if value is not None:
                lines.extend(
                    (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value!r}")
                )

        for counter, value in self.counters.items():
            metric(f"cas_{counter}_total", "counter", HELP[counter], value)
        usage = self.usage
        metric("cas_storage_bytes", "gauge", "Bytes of the stored blobs.", usage.bytes)
        metric("cas_storage_blobs", "gauge", "Stored blobs.", usage.blobs)
        metric("cas_names", "gauge", "Names in the catalog.", usage.names)
        metric("cas_live_leases", "gauge", "Leases not expired whose holder is not known dead.",
               usage.live_leases)
        metric(
            "cas_storage_usage_ratio", "gauge", "Stored bytes over max_cache_size.",
            self.usage_ratio,
        )  # fmt: skip
        metric("cas_max_cache_size_bytes", "gauge", "High water mark.", self.max_cache_size)
        metric("cas_low_water_bytes", "gauge", "Low water mark.", self.low_water_bytes)
        metric("cas_hit_ratio", "gauge", "Hits over hits and misses.", self.hit_ratio)
        metric(
            "cas_download_success_ratio", "gauge", "Succeeded over finished downloads.",
            self.download_success_rate,
        )  # fmt: skip
        metric(
            "cas_staging_debris_files", "gauge", "Staging files no writer will finish.",
            self.debris_files,
        )  # fmt: skip
        metric(
            "cas_staging_debris_bytes", "gauge", "Bytes of staging files no writer will finish.",
            self.debris_bytes,
        )  # fmt: skip
        metric(
            "cas_staging_files", "gauge", "Files in tmp/: partial downloads and puts.",
            self.staging_files,
        )  # fmt: skip
        metric(
            "cas_staging_bytes", "gauge", "Bytes of the files in tmp/, counted as stored by gc.",
            self.staging_bytes,
        )  # fmt: skip
        metric(
            "cas_quarantine_files", "gauge", "Files verify moved to quarantine/, not yet removed.",
            self.quarantine_files,
        )  # fmt: skip
        metric(
            "cas_quarantine_bytes", "gauge", "Bytes of the files in quarantine/.",
            self.quarantine_bytes,
        )  # fmt: skip
        metric("cas_trees", "gauge", "Trees stored.", self.trees)
        metric("cas_views", "gauge", "Named views under views/.", self.views)
        metric("cas_view_copied_bytes", "gauge", "Bytes of views that are copies, not links.",
               self.view_bytes)
        return "\n".join(lines) + "\n"


def _ratio(good: int, bad: int) -> float | None:
    return good / (good + bad) if good + bad else None


def human_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
