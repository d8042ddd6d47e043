"""The catalog's schema versions, read from schema.sql, and the migration that applies them.

schema.sql is the one source of truth for the tables: a log of versions, each opened by a
``-- version: N`` line and followed by its statements. A catalog records the version it is at
in ``PRAGMA user_version``; opening one that is older applies the versions after it, in one
write transaction (cas/storage/catalog.py).
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

from cas.errors import CatalogError
from cas.logs import log


@functools.cache
def _schema_text() -> str:
    """schema.sql: packaged beside the code in a wheel, at the repository root in a checkout.

    Read as a plain file where the package is one (importlib.resources, only for a package
    that is not, costs milliseconds to import on every start).
    """
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "schema.sql", package.parent / "schema.sql"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    from importlib import resources

    return resources.files("cas").joinpath("schema.sql").read_text(encoding="utf-8")


@functools.cache
def schema_versions() -> list[tuple[int, list[str]]]:
    """The versions of schema.sql, oldest first, each with its statements (parsed once, when
    a catalog is created or migrated: opening one at the latest version needs only that
    number, ``LATEST_VERSION``)."""
    versions: list[tuple[int, list[str]]] = []
    pending = ""
    for line in _schema_text().splitlines(keepends=True):
        if line.startswith("-- version:"):
            versions.append((int(line.split(":", 1)[1]), []))
            continue
        if not versions:
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if statement.strip(";").strip():
                versions[-1][1].append(statement)
            pending = ""
    numbers = [number for number, _ in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(f"schema.sql versions are not 1..N in order: {numbers}")
    return versions


def _latest_version() -> int:
    """The number of the last ``-- version: N`` line of schema.sql, without parsing the
    statements (``schema_versions`` checks that the versions are 1..N in order)."""
    text = _schema_text()
    return int(text[text.rindex("\n-- version:") + len("\n-- version:"):].split("\n", 1)[0])


LATEST_VERSION = _latest_version()


def __getattr__(name: str) -> Any:
    """``SCHEMA_VERSIONS``: every version with its statements, parsed on first use."""
    if name == "SCHEMA_VERSIONS":
        return schema_versions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_not_newer(path: Path, version: int) -> None:
    """Raise CatalogError when the catalog ``path`` is at a version this cas does not know."""
    if version > LATEST_VERSION:
        raise CatalogError(
            f"{path} has schema version {version}, newer than the {LATEST_VERSION} "
            "this cas knows; upgrade cas to use this store"
        )


def migrate(conn: sqlite3.Connection, current: int) -> None:
    """Apply every version after ``current`` inside ``conn``'s write transaction.

    Raises CatalogError for a catalog that has tables but no version (not made by cas).
    """
    if current == 0 and conn.execute(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'blobs'"
    ).fetchone()[0]:
        raise CatalogError("catalog has tables but no schema version; it was not made by cas")
    for number, statements in schema_versions():
        if number > current:
            log.info("catalog: applying schema version %d", number)
            for statement in statements:
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION}")
