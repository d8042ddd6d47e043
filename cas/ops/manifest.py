"""Manifests: fixtures declared by name in a TOML file, and syncing a store with one.

    [fixtures."models/tiny.gguf"]
    url = "https://example.org/tiny.gguf"
    sha256 = "…"        # and/or blake3 = "…"; size = 1234 is optional
    unpack = "tar.gz"   # optional: unpack the verified archive (cas/storage/archives.py)

``load`` checks the whole file before anything is fetched, so a bad entry is a one-line
UsageError naming the fixture and the key; ``sync`` fetches every fixture, several at a time,
and reports what was fetched, what was already present and what failed. It fetches through the
callable it is given (the store's fetch) and draws progress through the bars it is given (a
face's), so it knows neither the store nor tqdm.
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from cas.errors import CasError, NotFound, UsageError
from cas.ops.fetch import Fetched, expectation
from cas.refs import check_name
from cas.transfer.request import Progress, check_url
from cas.urls import redact

log = logging.getLogger("cas")

KEYS = ("url", "sha256", "blake3", "size", "unpack")


@dataclass(frozen=True)
class Fixture:
    """One manifest entry."""

    name: str
    url: str
    sha256: str | None = None
    blake3: str | None = None
    size: int | None = None
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
        raise UsageError(f"{here} must be a table with url and sha256 or blake3")
    for key in entry:
        if key not in KEYS:
            raise UsageError(f"{here}: unknown key {key!r} (known: {', '.join(KEYS)})")
    if "url" not in entry:
        raise UsageError(f"{here}: key 'url' is missing")
    for key in ("url", "sha256", "blake3", "unpack"):
        if key in entry and not isinstance(entry[key], str):
            raise UsageError(f"{here}: key {key!r} must be a string")
    if "sha256" not in entry and "blake3" not in entry:
        raise UsageError(f"{here}: needs key 'sha256' or 'blake3' to verify the download")
    try:
        check_url(redact(entry["url"]))  # a message names the URL without its credentials
    except UsageError as error:
        raise UsageError(f"{here}: key 'url': {error}") from error
    for key in ("sha256", "blake3", "size"):
        try:
            expectation(**{"blake3": None, "sha256": None, "size": None, key: entry.get(key)})
        except UsageError as error:
            raise UsageError(f"{here}: key {key!r}: {error}") from error
    if "unpack" in entry:
        from cas.storage.archives import check_kind

        try:
            check_kind(entry["unpack"])
        except UsageError as error:
            raise UsageError(f"{here}: key 'unpack': {error}") from error
    return Fixture(
        name=name,
        url=entry["url"],
        sha256=entry["sha256"].lower() if "sha256" in entry else None,
        blake3=entry["blake3"].lower() if "blake3" in entry else None,
        size=entry.get("size"),
        unpack=entry["unpack"].lower() if "unpack" in entry else None,
    )


class FetchFixture(Protocol):
    """Fetches one fixture into the store (the store's fetch, with its outcome)."""

    def __call__(self, url: str, *, name: str | None, blake3: str | None, sha256: str | None,
                 size: int | None, unpack: str | None, progress: Progress | None) -> Fetched: ...


class Bar(Protocol):
    """A progress bar of one transfer: told (done, total) bytes, then closed."""

    def __call__(self, done: int, total: int | None) -> None: ...

    def close(self) -> None: ...


class Total(Protocol):
    """A progress bar of the whole sync: advanced once a fixture, then closed."""

    def advance(self) -> None: ...

    def close(self) -> None: ...


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
    fetch: FetchFixture, path: str | os.PathLike[str], *, jobs: int = 4,
    bar: Callable[[str], Bar] | None = None, total_bar: Callable[[int], Total] | None = None,
) -> SyncReport:
    """Fetch every fixture of the manifest at ``path`` through ``fetch``, ``jobs`` at a time.

    Failures do not stop the others; they are in the report. ``bar(name)`` makes the progress
    bar of one transfer, ``total_bar(count)`` the one of them all. KeyboardInterrupt (Ctrl-C)
    starts no further
    fixture, stops the running downloads at their next chunk, keeping their partial files for
    a resume, and is raised again.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a positive number, not {jobs!r}")
    fixtures = load(path)
    report = SyncReport()
    total = total_bar(len(fixtures)) if total_bar is not None and fixtures else None

    stop = threading.Event()  # set on Ctrl-C: running downloads end at their next chunk

    def one(fixture: Fixture) -> Fetched:
        shown = bar(fixture.name) if bar is not None else None

        def report(done: int, size: int | None) -> None:
            if stop.is_set():
                # The downloader keeps the partial of an interrupted transfer for a resume.
                raise KeyboardInterrupt
            if shown is not None:
                shown(done, size)

        try:
            return fetch(
                fixture.url, name=fixture.name, blake3=fixture.blake3,
                sha256=fixture.sha256, size=fixture.size, unpack=fixture.unpack,
                progress=report,
            )  # fmt: skip
        finally:
            if shown is not None:
                shown.close()

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cas-sync")
    try:
        futures = {pool.submit(one, fixture): fixture for fixture in fixtures}
        for future in as_completed(futures):
            name = futures[future].name
            try:
                fetched = future.result()
            except CasError as error:
                log.error("fixture %r failed: %s", name, error)
                report.failed[name] = error
            else:
                report.digests[name] = fetched.digest
                (report.fetched if fetched.downloaded else report.present).append(name)
            if total is not None:
                total.advance()
    except BaseException:
        # Ctrl-C (or any other end): start nothing more, stop the running downloads at their
        # next chunk, and wait only for that.
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if total is not None:
            total.close()
    report.fetched.sort()
    report.present.sort()
    return report
