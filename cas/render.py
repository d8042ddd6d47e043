"""How the command line shows results: tables, JSON documents, sizes, times and summaries.

Pure functions from the public result types (``cas.Entry``, ``cas.GcPlan``, ``cas.Stats``,
``cas.VerifyReport``, ``cas.TransferReport``, the settings' ``Config``) to lines of text or
plain data; printing, exit statuses and errors stay in cas/cli.py. The command line imports this
module inside the commands that show something, so ``cas --help`` and ``cas path`` never pay
for it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas import Counter, human_size

if TYPE_CHECKING:
    from cas import Entry, GcItem, GcPlan, Stats, TransferReport, VerifyReport
    from cas.settings import Config


def as_json(document: object) -> str:
    """One indented JSON document, as every ``--json`` prints it."""
    return json.dumps(document, indent=2)


def size(value: int | None) -> str:
    """Bytes for people, ``-`` when unknown (an evicted blob)."""
    return "-" if value is None else human_size(value)


def when(stamp: float | None) -> str:
    """A local date and time to the minute, ``-`` when unknown."""
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


# -- cas gc ---------------------------------------------------------------------------------------


def plan_document(plan: GcPlan, dry_run: bool) -> dict[str, Any]:
    """``cas gc --json``: the counts, and the blobs listed by the report."""

    def item(entry: GcItem) -> dict[str, Any]:
        return {"digest": entry.digest, "names": list(entry.names), "size": entry.size,
                "last_access": entry.last_access, "reason": entry.reason}

    return {
        "dry_run": dry_run,
        "stored_before": plan.stored_before,
        "stored_after": plan.stored_after,
        "low_water": plan.target,
        "freed_bytes": plan.freed,
        "removed_count": plan.removed,
        # The first REPORT_LIMIT of each, oldest first: a report of a cleanup of a million
        # blobs does not hold them all in memory.
        "removed": [item(victim) for victim in plan.victims],
        "kept": [item(kept) for kept in plan.kept],
    }


def _described(entry: GcItem) -> str:
    names = ", ".join(entry.names) if entry.names else "(no name)"
    return f"{names}  {entry.digest[:12]}  {size(entry.size)}  {entry.reason}"


def plan_lines(plan: GcPlan, dry_run: bool) -> list[str]:
    """``cas gc``: what was freed, each listed victim, and what was kept and why."""
    verb = "would free" if dry_run else "freed"
    lines = [
        f"{verb} {plan.removed} blobs, {size(plan.freed)}: {size(plan.stored_before)} ->"
        f" {size(plan.stored_after)} (low water {size(plan.target)})"
    ]
    lines += [f"  {'would remove' if dry_run else 'removed'}  {_described(victim)}"
              for victim in plan.victims]
    if plan.removed > len(plan.victims):
        lines.append(f"  ... and {plan.removed - len(plan.victims)} more")
    if plan.kept:
        lines.append(f"kept {len(plan.kept)} blobs that cleanup would otherwise have removed:")
        lines += [f"  kept  {_described(kept)}" for kept in plan.kept]
    return lines


# -- cas ls ---------------------------------------------------------------------------------------


def entry_document(entry: Entry) -> dict[str, Any]:
    """One entry of ``cas ls --json``."""
    return {
        "name": entry.name,
        "digest": entry.digest,
        "size": entry.size,
        "last_access": entry.last_access,
        "pinned": entry.pinned,
        "present": entry.present,
        "source": entry.source,
        "state": entry.state,
        "leases": entry.leases,
        "kind": entry.kind,
        "files": entry.files,
    }


def entry_line(entry: Entry) -> str:
    """One line of ``cas ls``: digest, size, last access, state flags and name; a tree's
    name ends with ``/`` and its number of files follows."""
    flags = (("pinned", entry.pinned), ("leased", entry.leases > 0),
             ("evicted", entry.state == "evicted"), ("damaged", entry.damaged))
    state = ",".join(flag for flag, on in flags if on) or "-"
    return (f"{entry.digest[:12]}  {size(entry.size):>10}  {when(entry.last_access)}"
            f"  {state:<8}  {entry.name or ''}"
            + (f"/  (tree, {entry.files} files)" if entry.kind == "tree" else "")).rstrip()


# -- cas config -----------------------------------------------------------------------------------


def config_document(root: Path, root_source: str, config: Config, keys: tuple[str, ...]
                    ) -> dict[str, Any]:
    """``cas config --json``: the root, the files read, the profile and every setting."""
    settings = config.settings
    return {
        "root": {"value": str(root), "source": root_source},
        "files": [str(path) for path in config.files],
        "profile": {"value": config.profile, "source": config.profile_source},
        "settings": {
            key: {"value": settings.public(key), "text": settings.show(key),
                  "source": config.sources[key]}
            for key in keys
        },
    }


def config_lines(root: Path, root_source: str, config: Config, keys: tuple[str, ...]
                 ) -> list[str]:
    """``cas config``: one aligned line per setting, with where it came from."""
    settings = config.settings
    rows = [
        ("root", str(root), root_source),
        ("files", ", ".join(str(path) for path in config.files) or "-", ""),
        ("profile", config.profile or "-", config.profile_source or ""),
    ]
    rows += [(key, settings.show(key), config.sources[key]) for key in keys]
    width = max(len(row[1]) for row in rows)
    return [f"{key:<17} {value:<{width}}  {source}".rstrip() for key, value, source in rows]


# -- cas stats ------------------------------------------------------------------------------------


def stats_lines(stats: Stats) -> list[str]:
    """The readable table of ``cas stats``."""
    count, usage = stats.counters, stats.usage
    percent: Callable[[float | None], str] = lambda ratio: (  # noqa: E731
        "-" if ratio is None else f"{ratio:.1%}"
    )
    rows = [
        ("stored", f"{human_size(usage.bytes)} in {usage.blobs} blob{'s' * (usage.blobs != 1)}"),
        ("names", str(usage.names)),
        ("live leases", str(usage.live_leases)),
        ("share of max size", percent(stats.usage_ratio)),
        ("high water mark", f"{human_size(stats.max_cache_size)} (max_cache_size)"),
        ("low water mark", f"{human_size(stats.low_water_bytes)}"),
        ("hits", str(count[Counter.HITS])),
        ("misses", str(count[Counter.MISSES])),
        ("hit ratio", percent(stats.hit_ratio)),
        ("downloads succeeded", str(count[Counter.DOWNLOADS_SUCCEEDED])),
        ("downloads failed", str(count[Counter.DOWNLOADS_FAILED])),
        ("download success rate", percent(stats.download_success_rate)),
        ("download retries", str(count[Counter.DOWNLOAD_RETRIES])),
        ("downloaded", human_size(count[Counter.DOWNLOADED_BYTES])),
        ("saved by resume", human_size(count[Counter.RESUME_SAVED_BYTES])),
        ("saved by dedup", human_size(count[Counter.DEDUP_SAVED_BYTES])),
        ("evictions", f"{count[Counter.EVICTIONS]} ({human_size(count[Counter.EVICTED_BYTES])})"),
        ("cleanup runs", str(count[Counter.CLEANUP_RUNS])),
        ("verification failures", str(count[Counter.VERIFICATION_FAILURES])),
        ("staging debris", f"{stats.debris_files} files ({human_size(stats.debris_bytes)})"),
        ("staging (tmp/)", f"{stats.staging_files} files ({human_size(stats.staging_bytes)})"),
        ("quarantine", f"{stats.quarantine_files} files ({human_size(stats.quarantine_bytes)})"),
        ("trees", str(stats.trees)),
        ("views", f"{stats.views} ({human_size(stats.view_bytes)} copied)"),
    ]
    return [f"{label:<22} {value}" for label, value in rows]


# -- cas verify, push, pull -----------------------------------------------------------------------


def verify_lines(report: VerifyReport) -> list[str]:
    """``cas verify``: the summary, then each finding and what became of it."""
    lines = [report.summary()]
    for finding in report.findings:
        state = "REMAINS" if finding.remains else "fixed"
        names = f" ({', '.join(finding.names)})" if finding.names else ""
        lines.append(f"  {state:<7}  {finding.kind:<8}  {finding.subject}{names}:"
                     f" {finding.detail}; {finding.action}")
    return lines


def damage_remains(report: VerifyReport) -> str:
    """The one-line error of a verify that left damage."""
    kinds = sorted({finding.kind for finding in report.remaining})
    return (f"damage remains: {len(report.remaining)} finding(s) of kind {', '.join(kinds)};"
            " see the report")


def transfer_lines(report: TransferReport) -> list[str]:
    """``cas push``/``cas pull``: "<digest>  <ref>" for each ref transferred or there already."""
    return [f"{digest}  {ref}"
            for ref, digest in sorted({**report.present, **report.done}.items())]
