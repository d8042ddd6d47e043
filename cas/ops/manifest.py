"""Manifests: fixtures declared by name in a TOML file, and syncing a store with one.

    [fixtures."models/tiny.gguf"]
    url = "https://example.org/tiny.gguf"
    sha256 = "…"        # and/or blake3, sha1, md5 = "…"; size = 1234 is optional
    unpack = "tar.gz"   # optional: unpack the verified archive (cas/storage/archives.py)

An entry without any hash is allowed: its first fetch records the digest (the name and the
URL's source row remember it), and later syncs are served that content from the store.

``load`` checks the whole file before anything is fetched, so a bad entry is a one-line
UsageError naming the fixture and the key; ``sync`` fetches every fixture, several at a time,
and reports what was fetched, what was already present and what failed. It fetches through the
callable it is given (the store's fetch) and draws progress through the bars it is given (a
face's), so it knows neither the store nor tqdm.
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cas.errors import CasError, NotFound, UsageError
from cas.logs import log
from cas.ops import schedule
from cas.ops.fetch import Fetched, expectation
from cas.refs import check_name
from cas.transfer.request import Progress, check_url
from cas.urls import redact
from cas.values import SYNC_JOBS, Headers, parse_headers

KEYS = ("url", "sha256", "blake3", "sha1", "md5", "size", "headers", "unpack")
HASHES = ("blake3", "sha256", "sha1", "md5")


@dataclass(frozen=True)
class Fixture:
    """One manifest entry."""

    name: str
    url: str
    sha256: str | None = None
    blake3: str | None = None
    size: int | None = None
    #: Extra request headers; values may hold ``${VAR}``, and are secrets: not in the repr.
    headers: Headers = field(default=(), repr=False)
    sha1: str | None = None
    md5: str | None = None
    unpack: str | None = None  #: the kind to unpack the archive as, or None


def load(path: str | os.PathLike[str]) -> list[Fixture]:
    """Every fixture of the manifest at ``path``, checked.

    Raises NotFound for a missing file, UsageError for bad TOML or a bad entry.
    """
    where = f"manifest {os.fspath(path)}"
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError as error:
        raise NotFound(f"{where} does not exist") from error
    except IsADirectoryError as error:
        raise UsageError(f"{where} is a folder, not a file") from error
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{where} is not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise UsageError(f"{where} is not UTF-8 text") from error
    for key in data:
        if key != "fixtures":
            raise UsageError(f"{where}: unknown key {key!r}; fixtures go in [fixtures.\"name\"]")
    tables = data.get("fixtures", {})
    if not isinstance(tables, dict):
        raise UsageError(f"{where}: 'fixtures' must be a table of [fixtures.\"name\"] tables")
    return [_fixture(where, name, entry) for name, entry in tables.items()]


def _fixture(where: str, name: str, entry: Any) -> Fixture:
    try:
        check_name(name)
    except UsageError as error:
        raise UsageError(f"{where}: fixture {name!r}: {error}") from error
    here = f"{where}: fixture {name!r}"
    if not isinstance(entry, dict):
        raise UsageError(f"{here} must be a table with a url (and sha256, blake3, sha1 or md5)")
    for key in entry:
        if key not in KEYS:
            raise UsageError(f"{here}: unknown key {key!r} (known: {', '.join(KEYS)})")
    if "url" not in entry:
        raise UsageError(f"{here}: key 'url' is missing")
    for key in ("url", *HASHES, "unpack"):
        if key in entry and not isinstance(entry[key], str):
            raise UsageError(f"{here}: key {key!r} must be a string")
    try:
        check_url(redact(entry["url"]))  # a message names the URL without its credentials
    except UsageError as error:
        raise UsageError(f"{here}: key 'url': {error}") from error
    for key in (*HASHES, "size"):
        try:
            expectation(**{"blake3": None, "sha256": None, "size": None, key: entry.get(key)})
        except UsageError as error:
            raise UsageError(f"{here}: key {key!r}: {error}") from error
    try:  # a message names the header, never its value
        headers = parse_headers(entry.get("headers"))
    except ValueError as error:
        raise UsageError(f"{here}: key 'headers': {error}") from None
    if "unpack" in entry:
        from cas.storage.archives import check_kind

        try:
            check_kind(entry["unpack"])
        except UsageError as error:
            raise UsageError(f"{here}: key 'unpack': {error}") from error
    hashes = {key: entry[key].lower() for key in HASHES if key in entry}
    unpack = entry["unpack"].lower() if "unpack" in entry else None
    return Fixture(name=name, url=entry["url"], size=entry.get("size"), headers=headers,
                   unpack=unpack, **hashes)  # fmt: skip


def check_fixture(fixture: Fixture) -> Fixture:
    """``fixture`` if its URL is http(s) and its hashes and size are well formed; else a
    UsageError naming the problem (the URL without its credentials)."""
    check_name(fixture.name)
    check_url(redact(fixture.url))
    expectation(fixture.blake3, fixture.sha256, fixture.size, fixture.sha1, fixture.md5)
    return fixture


class FetchFixture(Protocol):
    """Fetches one fixture into the store (the store's fetch, with its outcome)."""

    def __call__(self, url: str, *, name: str | None, blake3: str | None, sha256: str | None,
                 sha1: str | None, md5: str | None, size: int | None, refresh: bool,
                 headers: Headers, unpack: str | None,
                 progress: Progress | None) -> Fetched: ...


class Bar(Protocol):
    """A progress bar of one transfer: told (done, total) bytes, then closed."""

    def __call__(self, done: int, total: int | None) -> None: ...

    def close(self) -> None: ...


class Total(Protocol):
    """A progress bar of the whole sync: told the bytes of all transfers as (done, total), with
    total None while some size is unknown, and advanced once a fixture ends; then closed."""

    def __call__(self, done: int, total: int | None) -> None: ...

    def advance(self) -> None: ...

    def close(self) -> None: ...


class _Tally:
    """The bytes of a whole sync, summed from each transfer's reports, for the total bar."""

    def __init__(self, fixtures: list[Fixture], total: Total) -> None:
        self._total = total
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._size: dict[str, int | None] = {fixture.name: fixture.size for fixture in fixtures}
        self._sum_done = 0
        self._sum_size = sum(size for size in self._size.values() if size is not None)
        self._unknown = sum(size is None for size in self._size.values())

    def __call__(self, name: str, done: int, size: int | None) -> None:
        """A transfer's report: ``done`` bytes of ``size`` (None while unknown)."""
        with self._lock:
            if size is not None and self._size[name] is None:
                self._resize(name, size)
            self._set(name, done)

    def finished(self, name: str, size: int | None) -> None:
        """A fixture ended: ``size`` bytes when it is stored, what came so far when it failed."""
        with self._lock:
            final = self._done.get(name, 0) if size is None else size
            self._resize(name, final)
            self._set(name, final)
        self._total.advance()

    def _resize(self, name: str, size: int) -> None:
        before = self._size[name]
        self._unknown -= before is None
        self._sum_size += size - (before or 0)
        self._size[name] = size

    def _set(self, name: str, done: int) -> None:
        self._sum_done += done - self._done.get(name, 0)
        self._done[name] = done
        self._total(self._sum_done, None if self._unknown else self._sum_size)


@dataclass
class SyncReport:
    """What a sync did, fixture by fixture."""

    digests: dict[str, str] = field(default_factory=dict)  #: name -> digest, successes only
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, CasError] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.fetched)} fetched, {len(self.present)} already present,"
            f" {len(self.failed)} failed"
        )

    def raise_for_failures(self) -> None:
        """Raise a CasError naming every failed fixture, if any failed."""
        if not self.failed:
            return
        total = len(self.digests) + len(self.failed)
        details = "; ".join(f"{name}: {error}" for name, error in sorted(self.failed.items()))
        first = next(iter(self.failed.values()))
        raise CasError(f"{len(self.failed)} of {total} fixtures failed: {details}") from first


def sync(
    fetch: FetchFixture, path: str | os.PathLike[str], *, jobs: int = SYNC_JOBS,
    update: bool = False,
    bar: Callable[[str], Bar] | None = None, total_bar: Callable[[int], Total] | None = None,
) -> SyncReport:
    """Fetch every fixture of the manifest at ``path`` through ``fetch``, ``jobs`` at a time;
    with ``update``, the fixtures without an expected hash are refreshed (revalidated).

    Fixtures are scheduled so that the link stays full (``cas.ops.schedule``): the largest
    first (by the manifest's ``size``; unknown sizes count as large), a quarter of the jobs
    working down from them, the rest working up from the smallest, many at once.
    Failures do not stop the others; they are in the report. ``bar(name)`` makes the progress
    bar of one transfer, ``total_bar(count)`` the one of them all (bytes of every transfer, and
    fixtures ended). KeyboardInterrupt (Ctrl-C) starts no further fixture, stops the running
    downloads at their next chunk, keeping their partial files for a resume, and is raised
    again.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a positive number, not {jobs!r}")
    fixtures = load(path)
    report = SyncReport()
    total = total_bar(len(fixtures)) if total_bar is not None and fixtures else None
    tally = _Tally(fixtures, total) if total is not None else None

    stop = threading.Event()  # set on Ctrl-C: running downloads end at their next chunk

    def one(fixture: Fixture) -> Fetched:
        shown = bar(fixture.name) if bar is not None else None

        def report(done: int, size: int | None) -> None:
            if stop.is_set():
                # The downloader keeps the partial of an interrupted transfer for a resume.
                raise KeyboardInterrupt
            if shown is not None:
                shown(done, size)
            if tally is not None:
                tally(fixture.name, done, size)

        try:
            return fetch(
                fixture.url, name=fixture.name, blake3=fixture.blake3,
                sha256=fixture.sha256, sha1=fixture.sha1, md5=fixture.md5, size=fixture.size,
                progress=report, headers=fixture.headers, unpack=fixture.unpack,
                refresh=update and not any(getattr(fixture, key) for key in HASHES),
            )  # fmt: skip
        finally:
            if shown is not None:
                shown.close()

    ordered = schedule.order(fixtures, lambda fixture: fixture.size)
    batch = schedule.run(ordered, one, jobs=jobs, stop=stop, name="cas-sync")
    try:
        for fixture, outcome in batch:
            if isinstance(outcome, CasError):
                log.error("fixture %r failed: %s", fixture.name, outcome)
                report.failed[fixture.name] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug, or Ctrl-C in a download
            else:
                report.digests[fixture.name] = outcome.digest
                (report.fetched if outcome.downloaded else report.present).append(fixture.name)
            if tally is not None:
                tally.finished(fixture.name, outcome.size if isinstance(outcome, Fetched) else None)
    finally:
        batch.close()  # on an early end: start nothing more, stop the running downloads, wait
        if total is not None:
            total.close()
    report.fetched.sort()
    report.present.sort()
    return report
