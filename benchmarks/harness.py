"""What every benchmark suite shares: result rows and targets, interleaved timing, child processes.

A suite is a function ``run(ctx: Context) -> SuiteResult``; run.py lists the suites, runs the
ones asked for, and writes the report. Everything here is measurement plumbing, no cas logic.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Target:
    """A bound that decides pass or fail: on the ratio cas / peer, or on cas's own value."""

    op: Literal["<=", ">=", "<"]
    bound: float
    on: Literal["ratio", "value"] = "ratio"

    def holds(self, value: float) -> bool:
        """Whether ``value`` (a ratio or a raw value, as ``on`` says) meets the bound."""
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        return value < self.bound

    def describe(self, unit: str) -> str:
        """The bound as the report prints it, e.g. ``ratio ≤ 1.5`` or ``< 100 MiB``."""
        sign = {"<=": "≤", ">=": "≥", "<": "<"}[self.op]
        if self.on == "ratio":
            return f"ratio {sign} {self.bound:g}"
        return f"{sign} {format_value(self.bound, unit)}"


@dataclass(frozen=True)
class Row:
    """One measured metric: cas's median, optionally a peer's median from the same run, a target."""

    metric: str
    unit: str
    cas: float
    peer: str | None = None
    peer_value: float | None = None
    target: Target | None = None
    note: str = ""
    cas_samples: tuple[float, ...] = ()
    peer_samples: tuple[float, ...] = ()
    subject: str = "cas"  # what the "cas" figure measures, when it is not cas's API itself

    @property
    def ratio(self) -> float | None:
        """cas / peer (for times: above 1 is slower; for rates: above 1 is faster)."""
        if self.peer_value is None or self.peer_value == 0:
            return None
        return self.cas / self.peer_value

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None when there is no target or no peer figure."""
        if self.target is None:
            return None
        value = self.ratio if self.target.on == "ratio" else self.cas
        return None if value is None else self.target.holds(value)


@dataclass
class SuiteResult:
    """What a suite hands back: its rows, notes on method, and optional extra Markdown."""

    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    details: str = ""


@dataclass(frozen=True)
class Context:
    """What a suite may use: its own scratch folder, the mode, and the rounds asked for."""

    scratch: Path
    quick: bool
    rounds: int | None
    python: str = sys.executable
    options: Mapping[str, str] = field(default_factory=dict)  #: ``--set KEY=VALUE``, per suite

    def option(self, key: str, default: str) -> str:
        """A suite's own setting from ``--set KEY=VALUE``, else ``default``."""
        return self.options.get(key, default)

    def rounds_or(self, default: int, quick_default: int = 1) -> int:
        """The rounds to run: ``--rounds`` if given, else the suite's default for the mode."""
        if self.rounds is not None:
            return self.rounds
        return quick_default if self.quick else default

    def log(self, message: str) -> None:
        """Progress on stderr, so that stdout stays free."""
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Contenders in forward order on even rounds and reversed on odd ones (a, b, b, a, ...)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def add_b3sum(contenders: dict[str, Callable[[], float]], measure: Callable[[], float],
              notes: list[str]) -> None:
    """Add ``measure`` as the contender "b3sum" when b3sum is installed; else say so in
    ``notes`` (the row is then skipped, not failed)."""
    if shutil.which("b3sum"):
        contenders["b3sum"] = measure
    else:
        notes.append("b3sum is not installed (`apt-get install -y b3sum`): its row is skipped.")


def interleave(
    contenders: Mapping[str, Callable[[], float]],
    rounds: int,
    log: Callable[[str], None],
    *,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Run each contender once per round, alternating the order; return its timed samples.

    Each contender does its own untimed set-up and returns the seconds it measured. A first,
    untimed round warms caches, the allocator and the interpreter when ``warmup`` is set.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    if warmup:
        for name in names:
            contenders[name]()
    for index in range(rounds):
        for name in round_order(names, index):
            samples[name].append(contenders[name]())
        log(
            f"  round {index + 1}/{rounds}: "
            + ", ".join(f"{name} {samples[name][-1]:.3f}s" for name in names)
        )
    return samples


def timed_run(command: Sequence[str], **kwargs: object) -> float:
    """Seconds of wall time to run ``command`` to completion; raises if it fails."""
    start = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


#: Appended to a child's code: print its own peak RSS in bytes as the last line of stdout.
_PEAK_RSS_FOOTER = """
def _peak_rss():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(_peak_rss())
"""


def peak_rss(python: str, code: str, args: Sequence[str]) -> tuple[int, str]:
    """Run ``code`` in a child interpreter; return its peak resident set size and its stdout.

    The child reports its own high-water mark (VmHWM) instead of the parent reading
    ``ru_maxrss`` (through RUSAGE_CHILDREN or ``os.wait4``): subprocess spawns with vfork, and
    Linux folds the parent's RSS at exec into the child's ``ru_maxrss``, so a 300 MiB parent
    makes a 10 MiB child look 310 MiB.
    """
    result = subprocess.run(
        [python, "-c", code + _PEAK_RSS_FOOTER, *args], check=True, capture_output=True, text=True
    )
    *output, peak = result.stdout.splitlines()
    return int(peak), "\n".join(output)


def remove(path: Path) -> None:
    """Delete a file or a folder tree if present (a store's blobs are read-only: fine on POSIX)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def curl_download(url: str, out: Path) -> Callable[[], float]:
    """A contender: ``curl -o`` of ``url`` into ``out``, timed (the peer of any download)."""

    def run() -> float:
        remove(out)
        start = time.perf_counter()
        subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
        return time.perf_counter() - start

    return run


def urllib3_download(http: object, url: str, out: Path) -> Callable[[], float]:
    """A contender: a bare urllib3 stream of ``url`` into ``out`` through the PoolManager
    ``http``, with no hashing: the floor of a download in Python."""

    def run() -> float:
        remove(out)
        start = time.perf_counter()
        response = http.request("GET", url, preload_content=False)  # type: ignore[attr-defined]
        with open(out, "wb") as target:
            for chunk in response.stream(1 << 20):
                target.write(chunk)
        response.release_conn()
        return time.perf_counter() - start

    return run


def format_number(value: float, unit: str) -> str:
    """A figure rounded for reading, without its unit."""
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.1f}"
    if unit in ("ops/s", "MiB/s"):
        return f"{value:,.0f}"
    if unit == "bytes":
        return f"{value / MiB:.1f}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:g}"


def format_value(value: float, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    shown = {"bytes": "MiB"}.get(unit, unit)
    return f"{format_number(value, unit)} {shown}"
