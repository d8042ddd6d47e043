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

from sqlalchemy import Connection, text

# Parameters: :now, :grace_cutoff, :age_cutoff, :excess (bytes to free), :dead (JSON array of
# lease ids whose holder is known dead: they protect nothing).
_PROTECTED = """
    EXISTS (SELECT 1 FROM leases l WHERE l.digest = b.digest AND l.expires > :now
            AND l.id NOT IN (SELECT value FROM json_each(:dead)))
"""
_PINNED = "EXISTS (SELECT 1 FROM names n WHERE n.digest = b.digest AND n.pinned)"

VICTIMS_SQL = f"""
WITH candidates AS (
    SELECT b.digest, b.size, b.last_access,
           sum(b.size) OVER (ORDER BY b.last_access, b.digest ROWS UNBOUNDED PRECEDING) AS upto
    FROM blobs b
    WHERE b.last_access < :grace_cutoff AND NOT {_PINNED} AND NOT {_PROTECTED}
)
SELECT digest, size, last_access,
       CASE WHEN upto - size < :excess THEN 'size' ELSE 'age' END AS reason,
       (SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = c.digest) AS names
FROM candidates c
WHERE upto - size < :excess OR last_access < :age_cutoff
ORDER BY last_access, digest
"""

# Protected blobs that the policy would otherwise have taken: older than the newest victim, or
# past the age limit. Reported so that a store left above its low-water mark surprises no one.
KEPT_SQL = f"""
SELECT b.digest, b.size, b.last_access,
       CASE WHEN {_PROTECTED} THEN 'leased' WHEN {_PINNED} THEN 'pinned' ELSE 'recent' END,
       (SELECT group_concat(name, char(10)) FROM names n WHERE n.digest = b.digest)
FROM blobs b
WHERE (b.last_access < :age_cutoff OR (:excess > 0 AND b.last_access <= :horizon))
  AND (b.last_access >= :grace_cutoff OR {_PINNED} OR {_PROTECTED})
ORDER BY b.last_access
LIMIT :limit
"""


@dataclass(frozen=True)
class Limits:
    """The cleanup policy's parameters, in bytes and seconds."""

    max_size: int
    low_water: float
    max_age: float
    grace_period: float


@dataclass(frozen=True)
class Item:
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
    params = {
        "now": now,
        "grace_cutoff": now - limits.grace_period,
        "age_cutoff": now - limits.max_age,
        "excess": excess,
        "dead": json.dumps(dead_leases),
    }
    result = Plan(stored, target)
    rows = conn.execute(text(VICTIMS_SQL), params)
    result.victims = [Item(r[0], r[1], r[2], r[3], _names(r[4])) for r in rows]
    reached = result.freed >= excess
    horizon = max((item.last_access for item in result.victims), default=0.0) if reached else now
    rows = conn.execute(text(KEPT_SQL), {**params, "horizon": horizon, "limit": kept_limit})
    result.kept = [Item(r[0], r[1], r[2], r[3], _names(r[4])) for r in rows]
    return result


def _names(joined: str | None) -> tuple[str, ...]:
    return tuple(joined.split("\n")) if joined else ()
