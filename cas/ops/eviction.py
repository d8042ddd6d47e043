"""Eviction policy: which blobs cleanup removes, as data (SQL) rather than branches.

A blob is protected while a live lease holds it, while a pinned name points at it, and within
the grace period after its last access (guarantee 3); a last access in the future (the clock
went back) counts as now, and cleanup writes it so (``clamp_future``), so that the blob ages.
A tree is one fixture: its members are never victims while its record blob is stored (a tree's
rows exist only while its record's blob row does: schema.sql), so leases and pins of the tree
hold them too; once the record goes, members age out by their own last access unless another
tree or name keeps them. Among the rest, size-based cleanup takes the least recently accessed
blobs until the store is down to ``low_water`` of ``max_size``, and age-based cleanup takes
those not accessed for ``max_age``. Choosing is one query (a running sum over last-access
order), read in batches; applying them is the store's business. The report keeps totals and
the first ``REPORT_LIMIT`` blobs with their names, so that the memory of a cleanup does not
grow with the catalog.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from cas.errors import UsageError
from cas.settings import Settings
from cas.storage.catalog import Connection
from cas.storage.queries import LIVE_LEASE
from cas.values import parse_duration, parse_size

#: Blobs listed by name in a report (each of removed and kept); the rest are only counted.
REPORT_LIMIT = 1000

# Parameters: :now, :grace_cutoff, :age_cutoff, :dead (JSON array of lease ids whose holder is
# known dead: they protect nothing). The protected set is small (leased or pinned blobs), so it
# is built once and each blob checked against it, instead of probing leases and names for every
# one of a million rows.
_PROTECTED = f"""
protected (digest, reason) AS (
    SELECT digest, 'leased' FROM leases WHERE {LIVE_LEASE}
    UNION ALL SELECT digest, 'pinned' FROM names WHERE pinned
)
"""
_NAMES = "(SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = b.digest)"

# Every evictable blob in last-access order, with the running sum of sizes. Victims are a prefix
# of it (the size-based ones and the age-based ones are each the oldest), so the caller stops
# reading at the first row that is neither: the window streams over the index on (last_access,
# size), which holds the digest too (blobs has no rowid) and so covers the query, and the rows
# after that prefix are never computed.
VICTIMS_SQL = f"""
WITH {_PROTECTED}
SELECT b.digest, b.size, b.last_access,
       sum(b.size) OVER (ORDER BY b.last_access, b.size, b.digest ROWS UNBOUNDED PRECEDING)
FROM blobs b
WHERE b.last_access < :grace_cutoff AND b.digest NOT IN (SELECT digest FROM protected)
  AND NOT EXISTS (SELECT 1 FROM tree_entries e WHERE e.digest = b.digest)
ORDER BY b.last_access, b.size, b.digest
"""

# Protected blobs that the policy would otherwise have taken (older than the newest victim, or
# past the age limit), so that a store left above its low-water mark surprises no one. A last
# access in the future counts as now (a dry run reads; a real cleanup clamped it already).
KEPT_SQL = f"""
WITH {_PROTECTED}
SELECT b.digest, b.size, min(b.last_access, :now), min(p.reason), {_NAMES}
FROM protected p JOIN blobs b ON b.digest = p.digest
WHERE min(b.last_access, :now) <= :horizon OR b.last_access < :age_cutoff
GROUP BY b.digest
UNION ALL
SELECT b.digest, b.size, min(b.last_access, :now), 'recent', {_NAMES}
FROM blobs b
WHERE b.last_access >= :grace_cutoff
  AND (min(b.last_access, :now) <= :horizon OR b.last_access < :age_cutoff)
  AND b.digest NOT IN (SELECT digest FROM protected)
ORDER BY 3
LIMIT :limit
"""

# Last accesses recorded before the clock went back: set to now, so that they age from here
# (otherwise such a blob is never old enough to go). A range on the index of last access.
_CLAMP_SQL = "UPDATE blobs SET last_access = :now WHERE last_access > :now"

_NAMES_OF = "SELECT digest, name FROM names WHERE digest IN ({marks}) ORDER BY name"


@dataclass(frozen=True)
class Limits:
    """The cleanup policy's parameters, in bytes and seconds: read from the store's settings
    (``max_cache_size``, ``low_water``, ``max_age``, ``grace_period``), never copied."""

    settings: Settings

    @classmethod
    def of(cls, settings: Settings, max_size: object = None, max_age: object = None) -> Limits:
        """The policy of ``settings``, with ``max_size`` and ``max_age`` of one cleanup in
        place of theirs when given. Raises UsageError for a negative or malformed one."""
        if max_size is None and max_age is None:
            return cls(settings)
        try:
            size = settings.max_cache_size if max_size is None else parse_size(max_size)
        except ValueError as error:
            raise UsageError(f"max_size {max_size!r}: {error}") from None
        try:
            age = settings.max_age if max_age is None else parse_duration(max_age)
        except ValueError as error:
            raise UsageError(f"max_age {max_age!r}: {error}") from None
        return cls(dataclasses.replace(settings, max_cache_size=size, max_age=age))

    @property
    def max_size(self) -> int:
        return self.settings.max_cache_size

    @property
    def low_water_bytes(self) -> int:
        return self.settings.low_water_bytes

    @property
    def max_age(self) -> float:
        return self.settings.max_age

    @property
    def grace_period(self) -> float:
        return self.settings.grace_period

    def excess(self, stored: int, shrinking: bool = False) -> int:
        """The bytes size-based cleanup frees from a store holding ``stored`` bytes: none at
        or below ``max_size``, unless the cleanup is ``shrinking`` already (one that started
        above it goes on down to low water, batch after batch)."""
        if stored <= self.max_size and not shrinking:
            return 0
        return max(0, stored - self.low_water_bytes)


class Item(NamedTuple):
    """A blob in a cleanup report, with its names and why it went or stayed."""

    digest: str
    size: int
    last_access: float
    reason: str
    names: tuple[str, ...] = ()


@dataclass
class Plan:
    """What a cleanup removed (or would remove) and kept, and why.

    ``victims`` lists the first ``REPORT_LIMIT`` removed blobs, oldest first; ``removed`` and
    ``freed`` count them all.
    """

    stored_before: int
    target: int
    victims: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    removed: int = 0
    freed: int = 0
    #: Seconds spent choosing the victims, updating the catalog and removing the files.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stored_after(self) -> int:
        return self.stored_before - self.freed

    @property
    def room(self) -> int:
        """How many more victims the report lists by name."""
        return REPORT_LIMIT - len(self.victims)

    def add(self, batch: list[Victim], listed: list[Item]) -> None:
        """Count a batch of victims; ``listed`` are its first ones with their names."""
        self.removed += len(batch)
        self.freed += sum(victim[1] for victim in batch)
        self.victims += listed[: self.room]


#: A victim as the victim query gives it: digest, size, last access, reason ("size" or "age").
#: A plain tuple: a cleanup may make hundreds of thousands, and an Item costs seven times more.
Victim = tuple[str, int, float, str]


def victims(conn: Connection, limits: Limits, excess: int, now: float,
            dead_leases: list[int]) -> Iterator[Victim]:
    """The victims of a cleanup that frees ``excess`` bytes by size, oldest first; stop
    reading where enough were read (the query stops with the reader)."""
    age_cutoff = now - limits.max_age
    rows = conn.execute(VICTIMS_SQL, _params(limits, now, dead_leases))
    try:
        for digest, size, last_access, upto in rows:
            if upto - size < excess:
                yield digest, size, last_access, "size"
            elif last_access < age_cutoff:
                yield digest, size, last_access, "age"
            else:
                return  # past the prefix of victims: the rest is never computed
    finally:
        rows.close()


def kept(conn: Connection, limits: Limits, now: float, dead_leases: list[int],
         newest: float, reached: bool) -> list[Item]:
    """Protected blobs that cleanup would otherwise have removed: older than the age limit,
    or not accessed since ``newest`` (the newest victim's last access) when the victims
    ``reached`` the bytes to free, and since now when they fell short."""
    horizon = newest if reached else now
    rows = conn.execute(
        KEPT_SQL,
        {**_params(limits, now, dead_leases), "horizon": horizon, "limit": REPORT_LIMIT},
    )
    return [Item(r[0], r[1], r[2], r[3], tuple(r[4].split("\n")) if r[4] else ()) for r in rows]


def clamp_future(conn: Connection, now: float) -> int:
    """Set every last access later than ``now`` (the clock went back since it was recorded)
    to ``now``, inside a cleanup's write transaction; return how many were."""
    return conn.execute(_CLAMP_SQL, {"now": now}).rowcount


def with_names(conn: Connection, victims: list[Victim]) -> list[Item]:
    """``victims`` as report items, with the names that point at each (read before their rows
    go)."""
    if not victims:
        return []
    names: dict[str, list[str]] = {}
    marks = ",".join("?" * len(victims))
    for digest, name in conn.execute(_NAMES_OF.format(marks=marks), [v[0] for v in victims]):
        names.setdefault(digest, []).append(name)
    return [Item(*victim, names=tuple(names.get(victim[0], ()))) for victim in victims]


def _params(limits: Limits, now: float, dead_leases: list[int]) -> dict[str, object]:
    return {
        "now": now,
        "grace_cutoff": now - limits.grace_period,
        "age_cutoff": now - limits.max_age,
        "dead": json.dumps(dead_leases),
    }
