"""cli: wall time of ``cas path NAME`` as a whole process, and what that process imports.

Shell scripts and test harnesses call the CLI in loops, so its start-up cost is the figure; the
peers are bare interpreters that import nothing, SQLAlchemy, or cas.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness import Context, Row, SuiteResult, interleave, median, timed_run
from harness import remove as remove_path

import cas

RUNS = 20
QUICK_RUNS = 2
IMPORTTIME_RUNS = 5
NAME = "bench/fixture.bin"


@dataclass(frozen=True)
class Import:
    """One line of ``-X importtime``: a module, its nesting, and its times in microseconds."""

    name: str
    depth: int
    self_us: int
    cumulative_us: int
    parent: str | None


def cas_command(python: str) -> list[str]:
    """The ``cas`` console script beside the interpreter, else ``python -m cas``."""
    script = Path(python).parent / "cas"
    return [str(script)] if script.is_file() else [python, "-m", "cas"]


def parse_importtime(text: str) -> list[Import]:
    """Parse ``-X importtime`` output, in which a module's line follows its children's."""
    lines: list[tuple[str, int, int, int]] = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, field = line.removeprefix("import time:").split("|", 2)
        name = field.strip()
        depth = (len(field) - len(field.lstrip()) - 1) // 2
        lines.append((name, depth, int(self_us), int(cumulative_us)))
    parents: dict[int, str] = {}
    pending: list[int] = []
    for index, (name, depth, _, _) in enumerate(lines):
        while pending and lines[pending[-1]][1] > depth:
            parents[pending.pop()] = name
        pending.append(index)
    return [
        Import(name, depth, self_us, cumulative_us, parents.get(index))
        for index, (name, depth, self_us, cumulative_us) in enumerate(lines)
    ]


def clean_env() -> dict[str, str]:
    """The environment without settings that would change what is measured."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CAS_", "PYTHONPROFILEIMPORTTIME", "PYTHONIMPORTTIME"))
    }


def run(ctx: Context) -> SuiteResult:
    """Time ``cas path`` and three interpreters, interleaved; then break down its imports."""
    runs = ctx.rounds if ctx.rounds is not None else (QUICK_RUNS if ctx.quick else RUNS)
    remove_path(ctx.scratch)
    root = ctx.scratch / "store"
    with cas.Store.open(root) as store:
        expected = str(store.put(b"a fixture for the cli benchmark\n" * 128, name=NAME))
    path_command = [*cas_command(ctx.python), "--root", str(root), "path", NAME]
    env = clean_env()
    output = subprocess.run(path_command, check=True, capture_output=True, text=True, env=env)
    shown = output.stdout.strip()
    if not (shown.endswith(expected) or Path(shown).parent.name == expected):
        raise AssertionError(f"`cas path` printed {output.stdout!r}, not the blob or its view")

    commands = {
        "cas path NAME": path_command,
        "python -c pass": [ctx.python, "-c", "pass"],
        "python -c 'import sqlalchemy'": [ctx.python, "-c", "import sqlalchemy"],
        "python -c 'import cas'": [ctx.python, "-c", "import cas"],
    }
    contenders = {
        label: lambda command=command: timed_run(command, stdout=subprocess.DEVNULL, env=env)
        for label, command in commands.items()
    }
    ctx.log(f"cli: {runs} interleaved runs of each command after a warm-up")
    samples = interleave(contenders, runs, lambda _message: None)
    ms = {label: [seconds * 1000 for seconds in values] for label, values in samples.items()}
    for label, values in ms.items():
        ctx.log(f"  {label}: median {median(values):.1f} ms")

    def row(metric: str, cas_label: str, peer_label: str, note: str = "") -> Row:
        return Row(
            metric,
            "ms",
            median(ms[cas_label]),
            f"`{peer_label}`",
            median(ms[peer_label]),
            note=note,
            cas_samples=tuple(ms[cas_label]),
            peer_samples=tuple(ms[peer_label]),
            subject=f"`{cas_label}`",
        )

    rows = [
        row("`cas path NAME`, whole process", "cas path NAME", "python -c pass"),
        row(
            "`cas path NAME`, whole process",
            "cas path NAME",
            "python -c 'import cas'",
            "what the command itself adds over importing cas",
        ),
        row("`python -c 'import cas'`", "python -c 'import cas'", "python -c pass"),
        row(
            "`python -c 'import cas'`",
            "python -c 'import cas'",
            "python -c 'import sqlalchemy'",
            "SQLAlchemy's share of importing cas",
        ),
    ]
    import_runs = 1 if ctx.quick else IMPORTTIME_RUNS
    ctx.log(f"cli: {import_runs} runs under -X importtime")
    details = import_report(path_command, env, import_runs)
    remove_path(ctx.scratch)
    notes = [
        f"Each command run {runs} times, the four interleaved and their order reversed every "
        "round, after one untimed round; medians. All use the benchmark's interpreter "
        f"(`{ctx.python}`); `cas` is the console script beside it.",
        "No target is set for these: the figures say what a call of the CLI costs.",
    ]
    return SuiteResult(rows, notes, details)


def import_report(command: list[str], env: Mapping[str, str], runs: int) -> str:
    """Markdown tables of what ``command`` imports: the costliest modules and packages."""
    timings: dict[str, list[int]] = defaultdict(list)
    self_times: dict[str, list[int]] = defaultdict(list)
    structure: list[Import] = []
    for _ in range(runs):
        result = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        )
        structure = parse_importtime(result.stderr)
        for entry in structure:
            timings[entry.name].append(entry.cumulative_us)
            self_times[entry.name].append(entry.self_us)
    cumulative = {name: median_us(values) for name, values in timings.items()}
    own = {name: median_us(values) for name, values in self_times.items()}
    by_name = {entry.name: entry for entry in structure}
    total = sum(cumulative[entry.name] for entry in structure if entry.depth == 0)

    def within(entry: Import) -> str:
        """The nearest cas module whose import brought ``entry`` in."""
        parent = entry.parent
        while parent is not None and not _is_cas(parent):
            parent = by_name[parent].parent
        return f"`{parent}`" if parent else "—"

    def importer(entry: Import) -> str:
        return f"`{entry.parent}`" if entry.parent else "top level (the script, or a call)"

    def ms(values: dict[str, int], entry: Import) -> str:
        return f"{values[entry.name] / 1000:.1f}"

    lines = [
        "### What `cas path` imports",
        "",
        f"`PYTHONPROFILEIMPORTTIME=1 {Path(command[0]).name} --root STORE path NAME`, median "
        f"over {runs} run(s): {len(structure)} modules, {total / 1000:.0f} ms of imports in all "
        "(the profiler adds overhead of its own). `-X importtime` credits a module to the first "
        'module that imported it; "within" is the cas module whose import statement led there.',
        "",
        "Top 10 modules by cumulative import time (dots show nesting):",
        "",
        "| module | imported by | within | self ms | cumulative ms | share |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for entry in sorted(structure, key=lambda item: -cumulative[item.name])[:10]:
        lines.append(
            f"| {'· ' * entry.depth}`{entry.name}` | {importer(entry)} | {within(entry)} "
            f"| {ms(own, entry)} | {ms(cumulative, entry)} "
            f"| {cumulative[entry.name] / total:.0%} |"
        )
    lines += [
        "",
        "Packages where they are entered, 1 ms or more (what the CLI imports, and for whom):",
        "",
        "| package | kind | entered through | imported by | within | cumulative ms | share |",
        "| --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    entries = [
        entry
        for entry in structure
        if not _is_cas(entry.name)
        and cumulative[entry.name] >= 1000
        and (entry.parent is None or _top(entry.parent) != _top(entry.name))
        and importlib.util.find_spec(_top(entry.name)) is not None
    ]
    for entry in sorted(entries, key=lambda item: -cumulative[item.name])[:15]:
        kind = "stdlib" if _top(entry.name) in sys.stdlib_module_names else "third-party"
        lines.append(
            f"| {_top(entry.name)} | {kind} | `{entry.name}` | {importer(entry)} "
            f"| {within(entry)} | {ms(cumulative, entry)} "
            f"| {cumulative[entry.name] / total:.0%} |"
        )
    return "\n".join(lines)


def median_us(values: list[int]) -> int:
    """Median of microsecond figures, as an integer."""
    return int(median([float(value) for value in values]))


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_cas(name: str) -> bool:
    return name == "cas" or name.startswith("cas.")
