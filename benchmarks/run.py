"""Run cas's benchmarks against peers measured in the same run, and write RESULTS.md.

    python benchmarks/run.py [SUITE ...] [--quick] [--rounds N] [--set KEY=VALUE ...]
                             [--scratch DIR] [--output FILE]

Each suite is a module ``suite_<name>.py`` beside this file with a ``run(ctx) -> SuiteResult``;
to add one, write the module and list it in SUITES. Exit status: 0 when every suite ran (missed
targets are reported, not fatal, unless --strict), 1 when a suite failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import suite_archives
import suite_checksums
import suite_cli
import suite_fetch
import suite_gc
import suite_put_large
import suite_ranges
import suite_s3_pull
import suite_small
import suite_startup
import suite_transfer
import suite_trees
import suite_verify
from harness import Context, Row, SuiteResult, format_number, format_value

HERE = Path(__file__).resolve().parent
QUICK_MODE = "quick (small sizes and few rounds: checks the runner, not the targets)"
REPO = HERE.parent


@dataclass(frozen=True)
class Suite:
    """A named group of measurements."""

    run: Callable[[Context], SuiteResult]
    summary: str


SUITES: dict[str, Suite] = {
    "put-large": Suite(suite_put_large.run, "put of a 1 GiB file vs cp + sync and b3sum; RSS"),
    "small": Suite(suite_small.run, "10,000 named 4 KiB puts and look-ups vs diskcache"),
    "fetch": Suite(suite_fetch.run, "1 GiB over loopback from nginx vs curl, urllib3, pooch"),
    "ranges": Suite(suite_ranges.run, "1 GiB parallel ranged fetch over loopback vs urllib3,"
                    " curl; RssAnon; resume"),
    "checksums": Suite(suite_checksums.run, "fetch expecting MD5 / SHA-1 / SHA-256 vs BLAKE3"
                       " only and vs pooch.retrieve with an MD5"),
    "gc": Suite(suite_gc.run, "gc of 100,000 and 1,000,000 blobs freeing 20 % vs rm"),
    "verify": Suite(suite_verify.run, "full verify of 1 GiB in 1,000 blobs vs b3sum"),
    "cli": Suite(suite_cli.run, "`cas path NAME` as a process vs bare interpreters; imports"),
    "s3-pull": Suite(suite_s3_pull.run, "S3 pull and push of 1 GiB, pull of 200 x 64 KiB,"
                     " on moto and SeaweedFS, vs boto3"),
    "archives": Suite(suite_archives.run, "fetch + unpack of a 100 MiB tar.gz vs pooch Untar"),
    "trees": Suite(suite_trees.run, "path(tree) of 10,000 small files vs cp -r; put; sharing"),
    "startup": Suite(suite_startup.run, "`cas --version`, `--help`, `path`, the pytest plugin"
                     " vs floors: bare interpreters, click, a script doing the same SELECT"),
    "transfer": Suite(suite_transfer.run, "512 MiB and a 20-fixture sync from nginx capped at"
                      " 40m per connection vs curl, aria2c, hf_transfer; RssAnon"),
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; unknown suites are a usage error."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Measure cas against peers in one run and write a Markdown report.",
        epilog="suites: " + "; ".join(f"{name}: {suite.summary}" for name, suite in SUITES.items()),
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 2 rounds: checks that the runner works, in under a minute",
    )
    parser.add_argument("--rounds", type=int, help="rounds per suite (default: each suite's own)")
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a suite's own setting, e.g. --set size=256MiB (see each suite's docstring)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=HERE / "out",
        help="folder for inputs and stores, never committed (default: benchmarks/out)",
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md", help="report to write")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    malformed = [option for option in args.options if "=" not in option]
    if malformed:
        parser.error(f"--set wants KEY=VALUE, not {malformed[0]!r}")
    args.options = dict(option.split("=", 1) for option in args.options)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen suites, write the report, and return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = list(dict.fromkeys(args.suites)) or list(SUITES)
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    scratch: Path = args.scratch.absolute()
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, SuiteResult | str] = {}
    clock = time.monotonic()
    for name in names:
        ctx = Context(scratch / name, args.quick, args.rounds, options=args.options)
        ctx.log(f"suite {name}")
        try:
            results[name] = SUITES[name].run(ctx)
        except Exception:
            traceback.print_exc()
            results[name] = traceback.format_exc()
    elapsed = time.monotonic() - clock
    load = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    facts = [*machine_facts(scratch), ("load average (1 min)", load)]
    report = render(results, args, started, elapsed, facts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)
    print(f"[bench] wrote {args.output}", file=sys.stderr)
    if any(isinstance(result, str) for result in results.values()):
        return 1
    missed = [
        row
        for result in results.values()
        if isinstance(result, SuiteResult)
        for row in result.rows
        if row.passed is False
    ]
    return 1 if args.strict and missed else 0


# -- the report ----------------------------------------------------------------------------------


def command_line() -> str:
    """The command as it was run, with the interpreter that ran it."""
    return shlex.join([sys.executable, *sys.argv])


def _run_quietly(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    if result.returncode != 0:
        return "unavailable"
    return next(iter((result.stdout or result.stderr).strip().splitlines()), "")


def filesystem_of(folder: Path) -> str:
    """The filesystem type and mount point holding ``folder``, from /proc/mounts."""
    target = os.path.realpath(folder)
    best = ("", "unknown", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                mount_point = mount_point.replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type, device)
    except OSError:
        return "unknown"
    stats = os.statvfs(target)
    free = stats.f_bavail * stats.f_frsize / (1 << 30)
    return f"{best[1]} ({best[2]} on {best[0]}, {free:.0f} GiB free)"


def machine_facts(scratch: Path) -> list[tuple[str, str]]:
    """What the figures depend on: hardware, interpreter, libraries, tools, filesystem."""
    cpu = "unknown"
    memory = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / (1 << 20):.1f} GiB"
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        ("cores", f"{os.cpu_count()} ({usable} usable by this process); {cpu}"),
        ("memory", memory),
        ("system", platform.platform()),
        (
            "Python",
            f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        ),
        ("SQLite", sqlite3.sqlite_version),
        (
            "packages",
            ", ".join(
                f"{package} {version(package)}"
                for package in ("cas", "SQLAlchemy", "blake3", "click", "diskcache", "boto3",
                                "moto")
            ),
        ),
        ("cp", _run_quietly(["cp", "--version"])),
        ("b3sum", _run_quietly(["b3sum", "--version"])),
        ("scratch folder", f"`{scratch}`: {filesystem_of(scratch)}"),
        ("file creation", _creation_cost(scratch)),
    ]


def _creation_cost(folder: Path, count: int = 200) -> str:
    """Microseconds to create one empty file in ``folder``: slow filesystems explain a lot."""
    probe = folder / ".creation-probe"
    probe.mkdir(exist_ok=True)
    start = time.perf_counter()
    for index in range(count):
        os.close(os.open(probe / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cost = (time.perf_counter() - start) / count * 1e6
    shutil.rmtree(probe)
    return f"{cost:,.0f} µs per empty file created in the scratch folder (mean of {count})"


def git_revision() -> str:
    """The commit of the working tree, and whether it had uncommitted changes."""
    head = _run_quietly(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    changes = _run_quietly(["git", "-C", str(REPO), "status", "--porcelain", "-uno"])
    clean = changes in ("", "unavailable", "not installed")
    return head if clean else f"{head} (with uncommitted changes)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(row: Row) -> str:
    return "—" if row.ratio is None else f"{row.ratio:.2f}x"


def _verdict(row: Row) -> str:
    return {True: "pass", False: "**MISS**", None: "—"}[row.passed]


def _shortfall(row: Row) -> str:
    """How far a missed row is from its target, in words."""
    assert row.target is not None
    target = row.target
    if target.on == "value":
        return (
            f"{format_value(row.cas, row.unit)} against {target.describe(row.unit)}: "
            f"{row.cas / target.bound:.2f}x the bound"
        )
    assert row.ratio is not None
    factor = row.ratio / target.bound if target.op == "<=" else target.bound / row.ratio
    return (
        f"ratio {row.ratio:.2f} against {target.describe(row.unit)} ({row.peer}): cas needs "
        f"to be {factor:.2f}x faster to meet it"
    )


def render(
    results: dict[str, SuiteResult | str],
    args: argparse.Namespace,
    started: datetime.datetime,
    elapsed: float,
    facts: list[tuple[str, str]],
) -> str:
    """The whole report as Markdown."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run.py`; rerun it rather than editing this file. Every ratio is "
        "cas against a peer measured in the same run: for times (s, ms) above 1 means cas is "
        "slower, for rates (ops/s, MiB/s) above 1 means cas is faster. Figures are medians over "
        "rounds.",
        "",
        f"- Command: `{command_line()}`",
        f"- Date: {started.isoformat(timespec='seconds')} (took {elapsed:.0f} s)",
        f"- Commit: {git_revision()}",
        f"- Mode: {QUICK_MODE if args.quick else 'full'}",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {_cell(value)} |" for key, value in facts),
        "",
        "## Summary",
        "",
        "| suite | metric | cas | peer | peer value | ratio | target | result |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    missed: list[str] = []
    for name, result in results.items():
        if isinstance(result, str):
            lines.append(f"| {name} | suite failed (see below) | | | | | | **ERROR** |")
            continue
        for row in result.rows:
            lines.append(
                f"| {name} | {_cell(row.metric)} | {format_value(row.cas, row.unit)} "
                f"| {_cell(row.peer or '—')} "
                f"| {'—' if row.peer_value is None else format_value(row.peer_value, row.unit)} "
                f"| {_ratio(row)} "
                f"| {row.target.describe(row.unit) if row.target else '—'} | {_verdict(row)} |"
            )
            if row.passed is False:
                missed.append(f"- {name}: {row.metric}: {_shortfall(row)}.")
    lines += ["", "## Missed targets", ""]
    lines += missed or ["None."]
    for name, result in results.items():
        lines += ["", f"## {name}", ""]
        if isinstance(result, str):
            lines += ["The suite failed:", "", "```", result.rstrip(), "```"]
            continue
        lines += [f"- {note}" for note in result.notes]
        sampled = [row for row in result.rows if row.cas_samples]
        if sampled:
            lines += [
                "",
                "| metric | contender | median | every round |",
                "| --- | --- | ---: | --- |",
            ]
        shown: set[tuple[str, str]] = set()
        for row in sampled:
            pairs = ((row.subject, row.cas_samples), (row.peer or "peer", row.peer_samples))
            for who, samples in pairs:
                if (row.metric, who) in shown or not samples:
                    continue
                shown.add((row.metric, who))
                figure = row.cas if who == row.subject else row.peer_value
                every = ", ".join(format_number(value, row.unit) for value in samples)
                lines.append(
                    f"| {_cell(row.metric)} | {_cell(who)} "
                    f"| {format_value(figure or 0.0, row.unit)} | {every} |"
                )
        notes_with_text = [row for row in result.rows if row.note]
        if notes_with_text:
            lines += [""]
            lines += [
                f"- {row.metric} ({row.peer or 'cas'}): {row.note}" for row in notes_with_text
            ]
        if result.details:
            lines += ["", result.details]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
