"""Eviction policy: which blobs cleanup removes, as data (SQL) rather than branches.

A blob is protected while a live lease holds it, while a pinned name points at it, and within
the grace period after its last access (guarantee 3). Among the rest, size-based cleanup takes
the least recently accessed blobs until the store is down to ``low_water`` of ``max_size``, and
age-based cleanup takes those not accessed for ``max_age``. Choosing is one query (a running sum
over last-access order); applying the plan is the store's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

from .catalog import Connection

# Parameters: :now, :grace_cutoff, :age_cutoff, :dead (JSON array of lease ids whose holder is
# known dead: they protect nothing). The protected set is small (leased or pinned blobs), so it
# is built once and each blob checked against it, instead of probing leases and names for every
# one of a million rows.
_PROTECTED = """
protected (digest, reason) AS (
    SELECT digest, 'leased' FROM leases
    WHERE expires > :now AND id NOT IN (SELECT value FROM json_each(:dead))
    UNION ALL SELECT digest, 'pinned' FROM names WHERE pinned
)
"""
_NAMES = "(SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = b.digest)"

# Every evictable blob in last-access order, with the running sum of sizes. Victims are a prefix
# of it (the size-based ones and the age-based ones are each the oldest), so the caller stops
# reading at the first row that is neither: the window streams over the last-access index
# (which holds the digest too, as blobs has no rowid), and the rows after that prefix are never
# computed.
VICTIMS_SQL = f"""
WITH {_PROTECTED}
SELECT b.digest, b.size, b.last_access,
       sum(b.size) OVER (ORDER BY b.last_access, b.digest ROWS UNBOUNDED PRECEDING) AS upto,
       {_NAMES}
FROM blobs b
WHERE b.last_access < :grace_cutoff AND b.digest NOT IN (SELECT digest FROM protected)
ORDER BY b.last_access, b.digest
"""

# Protected blobs that the policy would otherwise have taken (older than the newest victim, or
# past the age limit), so that a store left above its low-water mark surprises no one.
KEPT_SQL = f"""
WITH {_PROTECTED}
SELECT b.digest, b.size, b.last_access, min(p.reason), {_NAMES}
FROM protected p JOIN blobs b ON b.digest = p.digest
WHERE b.last_access <= :horizon OR b.last_access < :age_cutoff
GROUP BY b.digest
UNION ALL
SELECT b.digest, b.size, b.last_access, 'recent', {_NAMES}
FROM blobs b
WHERE b.last_access >= :grace_cutoff AND (b.last_access <= :horizon OR b.last_access < :age_cutoff)
  AND b.digest NOT IN (SELECT digest FROM protected)
ORDER BY 3
LIMIT :limit
"""


@dataclass(frozen=True)
class Limits:
    """The cleanup policy's parameters, in bytes and seconds."""

    max_size: int
    low_water: float
    max_age: float
    grace_period: float


class Item(NamedTuple):
    """A blob in a cleanup report, with its names and why it went or stayed."""

    digest: str
    size: int
    last_access: float
    reason: str
    names: tuple[str, ...] = ()


@dataclass
class Plan:
    """What cleanup removes and keeps, decided in one transaction."""

    stored_before: int
    target: int
    victims: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    #: Seconds spent choosing the victims, updating the catalog and removing the files.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.victims)

    @property
    def stored_after(self) -> int:
        return self.stored_before - self.freed


def plan(conn: Connection, limits: Limits, stored: int, now: float, dead_leases: list[int],
         kept_limit: int = 1000) -> Plan:
    """Choose the victims of a cleanup of a store holding ``stored`` bytes."""
    target = int(limits.max_size * limits.low_water)
    excess = stored - target if stored > limits.max_size else 0
    age_cutoff = now - limits.max_age
    params = {
        "now": now,
        "grace_cutoff": now - limits.grace_period,
        "age_cutoff": age_cutoff,
        "dead": json.dumps(dead_leases),
    }
    result = Plan(stored, target)
    rows = conn.execute(VICTIMS_SQL, params)
    add = result.victims.append  # a tight loop: it may run for hundreds of thousands of rows
    for digest, size, last_access, upto, names in rows:
        if upto - size < excess:
            reason = "size"
        elif last_access < age_cutoff:
            reason = "age"
        else:
            break  # past the prefix of victims: the rest is never computed
        add(Item(digest, size, last_access, reason, tuple(names.split("\n")) if names else ()))
    rows.close()
    # Kept blobs older than the newest victim would have gone; all would, if the target was missed.
    reached = result.freed >= excess
    horizon = max((item.last_access for item in result.victims), default=0.0) if reached else now
    rows = conn.execute(KEPT_SQL, {**params, "horizon": horizon, "limit": kept_limit})
    result.kept = [Item(r[0], r[1], r[2], r[3], _names(r[4])) for r in rows]
    return result


def _names(joined: str | None) -> tuple[str, ...]:
    return tuple(joined.split("\n")) if joined else ()
