"""Verification: find what is wrong in a store, fix what loses nothing, report the rest.

What is found (a ``Finding`` kind) and what is done about it (`cas verify`, SPEC guarantees
1, 2, 5 and 7):

    missing   a blob row without its file: the row goes (a row never outlives its file), the
              names stay, and the digest is recorded as damaged
    corrupt   a file whose content or size is not what its name and row say: the file moves to
              ``quarantine/`` (kept 30 days for a person to look at, then removed by
              cleanup: cas/ops/cleanup.py), then as for a missing one
    orphan    a file without a row whose content matches its name: adopted (a row is added)
    stray     a file without a row that does not match, or any other entry under ``blobs/``:
              moved to ``quarantine/``
    symlink   a symlink under ``blobs/`` or ``tmp/``: the link goes; it is never followed
    mode      a blob file that is not 0444: made 0444
    debris    staging files of writers that are gone: removed
    lease     a lease whose holder, a process of this host, is gone: removed
    damaged   a damaged digest not stored again since: ``repair`` fetches named fixtures again
              from their recorded sources
    dangling  a name whose blob is gone and that has no source: none (put the content again,
              or untag the name)
    catalog   ``PRAGMA quick_check`` finds the catalog damaged: reported with what to do; stop
    tree,     a tree missing a member's blob (damage that remains), and an entry of ``views/``
    view      that is not a right view (removed): cas/ops/verify_views.py

Damage that remains (missing, corrupt, damaged, dangling, catalog not repaired) makes the CLI
exit with status 4.

Quick mode checks that each blob exists with its row's size and mode, and rehashes only files
whose stat signature changed since they were last verified (an edit in place changes mtime or
ctime). Full mode rehashes every blob, the least recently verified first, on a thread pool of
one thread more than the cores, blake3 mapping each file without the GIL (cas/storage/hashing.py
``hash_fd``: within 1.1x of b3sum); a ``budget`` stops it when spent and the next run continues
where it stopped, as the catalog records when each blob was verified.

Verify runs safely beside other processes: every change to files and rows happens under the
catalog's write lock (under which a put publishes too) after re-checking that the entry is
still the one examined: same inode, size, mode and times.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from cas.errors import CasError, StoreError, UsageError
from cas.logs import log
from cas.ops.findings import KINDS, Finding, VerifyReport
from cas.ops.leases import dead_leases
from cas.ops.verify_views import check_trees, check_views
from cas.storage import queries as q
from cas.storage import verification as v
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.catalog_file import damaged_catalog
from cas.storage.counters import Counter
from cas.storage.found import Found, signature, unchanged
from cas.storage.staging import BLOB_MODE
from cas.transfer.request import Progress

__all__ = ["KINDS", "Finding", "Verifier", "VerifyReport", "check_budget", "workers"]

#: Hash results recorded per write transaction: a killed verify keeps most of its progress.
BATCH = 1000
#: Bytes, and files, hashed per task of the thread pool.
TASK_BYTES = 8 << 20
TASK_FILES = 64

#: Fetch a damaged named fixture again from its recorded source (``Store.fetch``).
Refetch = Callable[[v.DamagedRow], None]


@dataclass(frozen=True)
class _Damage:
    kind: str
    detail: str


def check_budget(budget: object) -> float | None:
    """``budget`` as seconds, or None; raise UsageError unless it is a positive number."""
    if budget is None:
        return None
    if (isinstance(budget, bool) or not isinstance(budget, int | float)
            or not math.isfinite(budget) or budget <= 0):
        raise UsageError(f"budget {budget!r} is not a positive number of seconds")
    return float(budget)


def workers() -> int:
    """Hashing threads: one more than the cores this process may use (a thread waiting in
    open or mmap then leaves no core idle: 10 % faster here), at most 8."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return min(8, (len(usable) if usable else os.cpu_count() or 1) + 1)


class Verifier:
    """One run of verification over one store's blobs and catalog."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, refetch: Refetch | None = None,
                 progress: Progress | None = None, threads: int | None = None) -> None:
        self._blobs = blobs
        self._catalog = catalog
        self._refetch = refetch
        self._progress = progress
        self._threads = threads or workers()
        self._found: dict[str, _Damage] = {}  # damage found in this run, by digest

    def run(self, *, full: bool = True, budget: float | None = None) -> VerifyReport:
        """Verify the whole store (see the module docstring); return the report.

        Raises UsageError for a bad budget, StoreError for a store opened read-only.
        """
        seconds = check_budget(budget)
        if self._catalog.read_only:
            raise StoreError(f"store root {self._blobs.root} is not writable"
                             f" ({self._catalog.read_only}); verify needs to write")
        started = time.monotonic()
        deadline = None if seconds is None else started + seconds
        report = VerifyReport(full)
        problems = self._catalog.integrity_problems()
        if problems:
            report.findings.append(Finding(
                "catalog", self._catalog.path.name, "; ".join(problems[:3]),
                damaged_catalog(self._catalog.path, "PRAGMA quick_check failed"), remains=True,
            ))  # fmt: skip
            report.seconds = time.monotonic() - started
            return report
        self._reclaim_leases(report)
        self._clear_debris(report)
        files = self._scan(report)
        with self._catalog.read() as conn:
            rows = v.verify_rows(conn)
        self._drop_missing([digest for digest in rows if digest not in files])
        files = self._fix_modes(report, files)
        wrong_size = [found for digest, found in files.items()
                      if digest in rows and found.info.st_size != rows[digest].size]
        self._quarantine(report, [(found, _Damage(
            "corrupt", f"{found.info.st_size} bytes, its row says {rows[found.digest or ''].size}"
        )) for found in wrong_size])  # fmt: skip
        candidates = _to_hash(files, rows, full, {f.digest for f in wrong_size})
        self._hash(report, candidates, rows, deadline)
        self._settle_damage(report)
        check_views(self._blobs, self._catalog, report, full=full)  # after blobs/ is settled
        check_trees(self._catalog, report)
        new_damage = sum(1 for damage in self._found.values() if damage.kind != "stray")
        self._catalog.count(Counter.VERIFICATION_FAILURES, new_damage)
        self._catalog.flush()
        report.seconds = time.monotonic() - started
        log.info("%s", report.summary())
        return report

    # -- housekeeping: leases and staging debris ----------------------------------------------

    def _reclaim_leases(self, report: VerifyReport) -> None:
        def work(conn: Connection) -> list[int]:
            dead = dead_leases(conn, time.time())
            q.delete_leases(conn, dead)
            return dead

        for lease in self._catalog.write(work):
            report.findings.append(Finding(
                "lease", f"lease {lease}", "its holder, a process of this host, is gone",
                "removed",
            ))  # fmt: skip

    def _clear_debris(self, report: VerifyReport) -> None:
        for entry in self._blobs.debris():
            symlink = entry.is_symlink()
            if self._blobs.remove_debris(entry):
                report.findings.append(Finding(
                    "symlink" if symlink else "debris", self._relative(entry.path),
                    "a symlink in tmp/" if symlink else "a staging file no writer will finish",
                    "removed",
                ))  # fmt: skip

    # -- blobs/: what is there, and what is missing ---------------------------------------------

    def _scan(self, report: VerifyReport) -> dict[str, Found]:
        """Blob files by digest; symlinks and strays are dealt with on the way."""
        files: dict[str, Found] = {}
        odd: list[Found] = []
        for found in self._blobs.scan():
            if found.kind == "blob" and found.digest is not None:
                files[found.digest] = found
            else:
                odd.append(found)
        report.checked = len(files)
        links = {found: _link_target(found) for found in odd if found.kind == "symlink"}
        if links:
            def work(conn: Connection) -> list[Found]:
                return [found for found in links if self._blobs.remove_link(found)]

            for found in self._catalog.write(work):
                report.findings.append(Finding(
                    "symlink", self._relative(found.path),
                    f"a symlink to {links[found]} under blobs/", "removed the link",
                ))  # fmt: skip
        self._quarantine(report, [(found, _Damage("stray", "not a blob file in its place"))
                                  for found in odd if found.kind == "stray"])
        return files

    def _drop_missing(self, digests: list[str]) -> None:
        if not digests:
            return

        def work(conn: Connection) -> list[str]:
            now = time.time()
            gone = [digest for digest in digests
                    if q.find_blob(conn, digest) is not None and self._blobs.stat(digest) is None]
            for digest in gone:
                v.record_damaged(conn, digest, "missing", None, now)
            return gone

        for digest in self._catalog.write(work):
            self._found[digest] = _Damage("missing", "its row has no file")

    def _fix_modes(self, report: VerifyReport, files: dict[str, Found]) -> dict[str, Found]:
        wrong = [found for found in files.values()
                 if stat.S_IMODE(found.info.st_mode) != BLOB_MODE]
        if not wrong:
            return files

        def work(conn: Connection) -> list[tuple[Found, os.stat_result]]:
            return [(found, info) for found in wrong
                    if (info := self._blobs.fix_mode(found)) is not None]

        fixed = dict(files)
        for found, info in self._catalog.write(work):
            report.findings.append(Finding(
                "mode", self._relative(found.path),
                f"mode {stat.S_IMODE(found.info.st_mode):04o}", "made 0444",
            ))  # fmt: skip
            if found.digest is not None:
                fixed[found.digest] = replace(found, info=info)
        return fixed

    def _quarantine(self, report: VerifyReport, bad: list[tuple[Found, _Damage]]) -> None:
        """Move each entry aside (if unchanged); a blob with a row becomes damaged."""
        if not bad:
            return

        def work(conn: Connection) -> list[tuple[Found, _Damage, str, bool]]:
            now = time.time()
            moved = []
            for found, damage in bad:
                target = self._blobs.quarantine(found)
                if target is None:
                    continue  # changed since it was examined: the next run looks again
                where = self._relative(target)
                had_row = found.digest is not None and q.find_blob(conn, found.digest) is not None
                if had_row:
                    assert found.digest is not None
                    v.record_damaged(conn, found.digest, damage.kind, where, now)
                moved.append((found, damage, where, had_row))
            return moved

        for found, damage, where, had_row in self._catalog.write(work):
            if had_row and found.digest is not None:
                self._found[found.digest] = _Damage(damage.kind,
                                                    f"{damage.detail}; moved to {where}")
            else:
                report.findings.append(Finding(
                    "stray", self._relative(found.path), damage.detail, f"moved to {where}",
                ))  # fmt: skip

    # -- content -------------------------------------------------------------------------------

    def _hash(self, report: VerifyReport, candidates: list[Found], rows: dict[str, v.VerifyRow],
              deadline: float | None) -> None:
        """Rehash ``candidates`` in order on a thread pool until done or out of time.

        Files go to the pool in batches of about ``TASK_BYTES``: one future per file would
        wake this thread (and take the GIL from the hashing threads) a thousand times a GiB.
        """
        total = sum(found.info.st_size for found in candidates)
        right: list[Found] = []
        wrong: list[tuple[Found, _Damage]] = []
        window: deque[Future[list[tuple[Found, str, os.stat_result] | None]]] = deque()

        def settle() -> None:
            for result in window.popleft().result():
                if result is None:
                    continue  # gone or replaced since the scan: the next run sees it
                found, digest, info = result
                report.hashed += 1
                report.hashed_bytes += info.st_size
                hashed = replace(found, info=info)
                if digest == found.digest:
                    right.append(hashed)
                else:
                    kind = "corrupt" if found.digest in rows else "stray"
                    wrong.append((hashed, _Damage(kind, f"its content is {digest}, not its name")))
            if len(right) >= BATCH:
                self._record_right(report, right, rows)
                right.clear()
            if self._progress is not None:
                self._progress(report.hashed_bytes, total)

        with ThreadPoolExecutor(self._threads, thread_name_prefix="cas-verify") as pool:
            done = 0
            for batch in _batches(candidates):
                # Out of time: stop, but only after one batch, so that every run progresses.
                if done and deadline is not None and time.monotonic() >= deadline:
                    break
                window.append(pool.submit(self._hash_batch, batch))
                done += len(batch)
                if len(window) >= 2 * self._threads:
                    settle()
            report.pending = len(candidates) - done
            while window:
                settle()
        self._record_right(report, right, rows)
        self._quarantine(report, wrong)

    def _hash_batch(self, batch: list[Found]) -> list[tuple[Found, str, os.stat_result] | None]:
        results: list[tuple[Found, str, os.stat_result] | None] = []
        for found in batch:
            assert found.digest is not None
            try:
                results.append((found, *self._blobs.hash_blob(found.digest)))
            except OSError:
                results.append(None)
        return results

    def _record_right(self, report: VerifyReport, right: list[Found],
                      rows: dict[str, v.VerifyRow]) -> None:
        """Mark verified blobs; adopt right files that had no row."""
        if not right:
            return
        batch = list(right)

        def work(conn: Connection) -> list[Found]:
            now = time.time()
            v.mark_verified(conn, [(found.digest or "", found.info.st_size,
                                    signature(found.info)) for found in batch
                                   if found.digest in rows], now)
            return [found for found in batch if found.digest not in rows
                    and found.digest is not None and unchanged(found)
                    and v.adopt_blob(conn, found.digest, found.info.st_size,
                                     found.info.st_mtime, signature(found.info), now)]

        for found in self._catalog.write(work):
            report.findings.append(Finding(
                "orphan", found.digest or "", "a file without a row",
                "adopted: its content matches its name",
            ))  # fmt: skip

    # -- damage: repair, and what remains --------------------------------------------------------

    def _settle_damage(self, report: VerifyReport) -> None:
        def survey(conn: Connection) -> tuple[list[v.DamagedRow], list[tuple[str, str]]]:
            return v.damaged(conn), v.dangling_names(conn)

        damaged, dangling = self._catalog.write(survey)
        repaired: dict[str, str | None] = {}  # digest -> None when fetched again, else why not
        if self._refetch is not None:
            for row in damaged:
                if row.url is not None:
                    repaired[row.digest] = self._repair(row)
        for row in damaged:
            report.findings.append(self._damage_finding(row, repaired))
        forget = [row.digest for row in damaged if not row.names]
        if forget:
            self._catalog.write(lambda conn: v.forget_damaged(conn, forget))
        for name, digest in dangling:
            report.findings.append(Finding(
                "dangling", name, f"points at {digest}, which is not stored and has no source",
                "none: put the content again, or untag the name", remains=True, names=(name,),
            ))  # fmt: skip

    def _repair(self, row: v.DamagedRow) -> str | None:
        assert self._refetch is not None
        try:
            self._refetch(row)
        except CasError as error:
            log.warning("cannot fetch %s again from %s: %s", row.digest, row.url, error)
            return str(error)
        log.info("fetched %s again from %s", row.digest, row.url)
        return None

    def _damage_finding(self, row: v.DamagedRow, repaired: dict[str, str | None]) -> Finding:
        names = tuple(row.names.split("\n")) if row.names else ()
        new = self._found.get(row.digest)
        kind = new.kind if new else "damaged"
        detail = new.detail if new else (
            f"found {row.problem} on {time.strftime('%Y-%m-%d %H:%M', time.localtime(row.found))}"
            + (f", moved to {row.quarantined}" if row.quarantined else "")
        )
        done = "row dropped, names kept" if new else "not stored again yet"
        if row.digest in repaired and repaired[row.digest] is None:
            return Finding(kind, row.digest, detail, f"{done}; fetched again from {row.url}",
                           names=names)
        if row.digest in repaired:
            action = f"{done}; fetching it again from {row.url} failed: {repaired[row.digest]}"
        elif row.url is not None:
            action = f"{done}; `cas verify --repair` fetches it again from {row.url}"
        elif names:
            action = f"{done}; no source to fetch it from: put the same content again or untag"
        else:
            action = "row dropped; no name refers to it and it has no source"
        return Finding(kind, row.digest, detail, action, remains=True, names=names)

    def _relative(self, path: str | os.PathLike[str]) -> str:
        return os.path.relpath(path, self._blobs.root)


def _to_hash(files: dict[str, Found], rows: dict[str, v.VerifyRow], full: bool,
             skip: set[str | None]) -> list[Found]:
    """What to rehash, in order: files without rows (to adopt them or move them aside), then
    files changed since their last verification, then never verified ones, then the least
    recently verified. A quick run stops after the changed ones."""
    orphans = [found for digest, found in files.items() if digest not in rows]
    changed: list[Found] = []
    rest: list[tuple[float, str, Found]] = []
    for digest, found in files.items():
        row = rows.get(digest)
        if row is None or digest in skip:
            continue
        if row.signature is not None and row.signature != signature(found.info):
            changed.append(found)
        elif full:
            rest.append((row.verified if row.verified is not None else -1.0, digest, found))
    return orphans + changed + [found for _, _, found in sorted(rest, key=_order)]


def _batches(candidates: list[Found]) -> list[list[Found]]:
    """``candidates`` in order, cut into runs of about TASK_BYTES (at most TASK_FILES)."""
    batches: list[list[Found]] = []
    size = TASK_BYTES
    for found in candidates:
        if size >= TASK_BYTES or len(batches[-1]) >= TASK_FILES:
            batches.append([])
            size = 0
        batches[-1].append(found)
        size += found.info.st_size
    return batches


def _order(item: tuple[float, str, Found]) -> tuple[float, str]:
    return item[0], item[1]


def _link_target(found: Found) -> str:
    try:
        return os.readlink(found.path)
    except OSError:
        return "?"
