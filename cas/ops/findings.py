"""What verify reports: its findings, one per problem, and the report of a run.

The kinds and what verify does about each are described in cas/ops/verify.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("missing", "corrupt", "orphan", "stray", "symlink", "mode", "debris", "lease",
         "damaged", "dangling", "catalog", "tree", "view")


@dataclass(frozen=True)
class Finding:
    """One thing verify found, and what it did about it."""

    kind: str  #: one of KINDS
    subject: str  #: a digest, a name, or a path relative to the store root
    detail: str  #: what is wrong
    action: str  #: what verify did
    remains: bool = False  #: damage still there when the run ended
    names: tuple[str, ...] = ()  #: names pointing at the blob


@dataclass
class VerifyReport:
    """What one run of verify checked, found and did."""

    full: bool
    checked: int = 0  #: blob files examined (existence, size, mode)
    hashed: int = 0  #: blob files rehashed
    hashed_bytes: int = 0
    pending: int = 0  #: blobs a budget left for the next run
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Findings per kind, every kind listed."""
        return {kind: sum(1 for f in self.findings if f.kind == kind) for kind in KINDS}

    @property
    def remaining(self) -> list[Finding]:
        """The findings whose damage is still there."""
        return [finding for finding in self.findings if finding.remains]

    @property
    def damaged(self) -> bool:
        """Whether damage remains (exit status 4)."""
        return bool(self.remaining)

    def summary(self) -> str:
        """One line: what was checked, how long it took, and what was found."""
        mode = "full" if self.full else "quick"
        line = (f"{mode} verify: {self.checked} blobs checked, {self.hashed} hashed"
                f" ({self.hashed_bytes / 2**20:.1f} MiB) in {self.seconds:.2f}s")
        if self.pending:
            line += f"; {self.pending} left for the next run (budget spent)"
        found = ", ".join(f"{count} {kind}" for kind, count in self.counts.items() if count)
        line += f"; found: {found}" if found else "; found nothing wrong"
        return line + (f"; {len(self.remaining)} remain" if self.remaining else "")

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, for ``cas verify --json``."""
        return {
            "full": self.full, "checked": self.checked, "hashed": self.hashed,
            "hashed_bytes": self.hashed_bytes, "pending": self.pending,
            "seconds": round(self.seconds, 3), "counts": self.counts,
            "remaining": len(self.remaining), "damaged": self.damaged,
            "findings": [asdict(finding) for finding in self.findings],
        }  # fmt: skip
