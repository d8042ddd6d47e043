"""startup: what a process pays before cas does anything, against floors measured in the same run.

Rows, each a whole process timed from spawn to exit, all interleaved round by round:

- the floors: ``python -c pass``; ``python -c 'import click'`` (the command line's framework);
  and a bare script that imports click, sqlite3 and blake3 and does what ``cas path NAME``
  must do (the same SELECT on catalog.db, one lstat of the blob, print its path);
- ``cas --version`` and ``cas --help`` (targets: 3x ``python -c pass``, or 1.3x
  ``python -c 'import click'`` where click's own import makes the first impossible);
- ``cas path NAME`` on a warm store, and on one where the blob's last access is stale so that
  the command writes the new one at exit (target: 1.3x the floor script);
- ``python -c 'import cas.pytest_plugin'`` against ``python -c 'import pytest'``;
- a pytest run of a one-test file with the cas plugin against ``pytest -p no:cas`` on it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from unittest import mock

from harness import Context, Row, SuiteResult, Target, interleave, median, timed_run
from harness import remove as remove_path
from suite_cli import cas_command, clean_env

import cas

RUNS = 30
QUICK_RUNS = 2
NAME = "bench/fixture.bin"
#: How old the stale blobs' last access is: well past cas's one-minute granularity.
STALE_BY = 3600.0

#: The floor of `cas path NAME`: the libraries it cannot do without, and the same work.
FLOOR_SCRIPT = '''\
import os
import sqlite3
import sys

import blake3  # noqa: F401  (cas hashes with it; imported on every route)
import click

# The statement of cas.storage.queries.stored_blob for a name.
SELECT = (
    "SELECT b.digest, b.size, b.last_access FROM names n JOIN blobs b ON b.digest = n.digest"
    " WHERE n.name = ?"
)


@click.command()
@click.option("--root", required=True)
@click.argument("name")
def path(root: str, name: str) -> None:
    conn = sqlite3.connect(os.path.join(root, "catalog.db"))
    digest = conn.execute(SELECT, (name,)).fetchone()[0]
    conn.close()
    blob = os.path.join(root, "blobs", digest[:2], digest)
    os.lstat(blob)
    click.echo(blob)


path()
'''

PASS = "`python -c pass`"
CLICK = "`python -c 'import click'`"
FLOOR = "floor script (click, sqlite3, blake3; SELECT, lstat)"
PATH = "`cas path NAME`"
STALE = "`cas path NAME`, stale access written"

TRIVIAL_TEST = "def test_nothing():\n    assert True\n"


def _stores(scratch: Path, stale_names: int) -> tuple[Path, Path, str]:
    """A warm store holding NAME, and a store whose blobs ``stale-<i>`` were last accessed
    ``STALE_BY`` ago (put with the clock set back: each round reads a stale one once)."""
    warm, stale = scratch / "warm", scratch / "stale"
    content = b"a fixture for the start-up benchmark\n" * 128
    with cas.Store.open(warm) as store:
        digest = store.put(content, name=NAME)
    earlier = time.time() - STALE_BY
    with mock.patch("time.time", lambda: earlier), cas.Store.open(stale) as store:
        store.put_many({f"stale-{index}": content + str(index).encode()
                        for index in range(stale_names)})
    return warm, stale, digest


def run(ctx: Context) -> SuiteResult:
    """Time every command of the module docstring, interleaved; medians and ratios."""
    runs = ctx.rounds if ctx.rounds is not None else (QUICK_RUNS if ctx.quick else RUNS)
    remove_path(ctx.scratch)
    ctx.scratch.mkdir(parents=True)
    warm, stale, digest = _stores(ctx.scratch, runs + 1)  # one for the warm-up round
    floor = ctx.scratch / "floor.py"
    floor.write_text(FLOOR_SCRIPT, encoding="utf-8")
    tests = ctx.scratch / "pytest"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # no repository config
    (tests / "test_trivial.py").write_text(TRIVIAL_TEST, encoding="utf-8")
    cas_cli = cas_command(ctx.python)
    # Bytecode is cached as after an install (pip compiles it): a first, untimed run writes
    # what is missing, where PYTHONDONTWRITEBYTECODE would compile every module on every run.
    env = {key: value for key, value in clean_env().items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    pytest_run = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_trivial.py"]

    commands: dict[str, list[str]] = {
        PASS: [ctx.python, "-c", "pass"],
        CLICK: [ctx.python, "-c", "import click"],
        FLOOR: [ctx.python, str(floor), "--root", str(warm), NAME],
        "`cas --version`": [*cas_cli, "--version"],
        "`cas --help`": [*cas_cli, "--help"],
        PATH: [*cas_cli, "--root", str(warm), "path", NAME],
        "`python -c 'import pytest'`": [ctx.python, "-c", "import pytest"],
        "`python -c 'import cas.pytest_plugin'`": [ctx.python, "-c", "import cas.pytest_plugin"],
        "pytest run, cas plugin loaded": pytest_run,
        "`pytest -p no:cas` run": [*pytest_run, "-p", "no:cas"],
    }
    for label, command in commands.items():  # each works, and cas path finds the blob
        output = subprocess.run(command, cwd=tests, env=env, capture_output=True, text=True)
        if output.returncode != 0:
            raise AssertionError(f"{label}: exit {output.returncode}: {output.stderr[-2000:]}")
        shown = output.stdout.strip()
        if label in (FLOOR, PATH) and not (
            shown.endswith(digest) or Path(shown).parent.name == digest  # a name's view
        ):
            raise AssertionError(f"{label} printed {output.stdout!r}, not the blob or its view")

    def timer(command: list[str]) -> float:
        return timed_run(command, cwd=tests, env=env, stdout=subprocess.DEVNULL)

    stale_reads = iter(range(runs + 1))

    def stale_path() -> float:
        name = f"stale-{next(stale_reads)}"
        return timer([*cas_cli, "--root", str(stale), "path", name])

    contenders = {label: (lambda command=command: timer(command))
                  for label, command in commands.items()}
    contenders[STALE] = stale_path
    ctx.log(f"startup: {runs} interleaved rounds of {len(contenders)} commands after a warm-up")
    samples = interleave(contenders, runs, lambda _message: None)
    ms = {label: [seconds * 1000 for seconds in values] for label, values in samples.items()}
    for label, values in ms.items():
        ctx.log(f"  {label}: median {median(values):.1f} ms")
    written = _stale_accesses_written(stale, runs + 1)

    def row(label: str, peer: str, target: Target | None = None, note: str = "") -> Row:
        return Row(label, "ms", median(ms[label]), peer, median(ms[peer]), target=target,
                   note=note, cas_samples=tuple(ms[label]), peer_samples=tuple(ms[peer]),
                   subject=label)  # fmt: skip

    within = Target("<=", 1.3)
    rows = [
        row(CLICK, PASS, note="click's own import: the floor under any click command line"),
        row(FLOOR, PASS),
        row("`cas --version`", PASS),
        row("`cas --version`", CLICK, within),
        row("`cas --help`", PASS),
        row("`cas --help`", CLICK, within),
        row(PATH, PASS),
        row(PATH, FLOOR, within),
        row(STALE, FLOOR, within,
            note=f"{written} of {runs + 1} stale last accesses were written by the command"),
        row("`python -c 'import cas.pytest_plugin'`", "`python -c 'import pytest'`",
            note="what the plugin adds to importing pytest"),
        row("pytest run, cas plugin loaded", "`pytest -p no:cas` run", Target("<=", 1.1),
            note="one trivial test; every other installed plugin loads in both"),
    ]
    remove_path(ctx.scratch)
    notes = [
        f"Each command run {runs} times, all interleaved and their order reversed every round, "
        "after one untimed round; medians of wall time from spawn to exit. All use the "
        f"benchmark's interpreter (`{ctx.python}`); `cas` is the console script beside it.",
        "Targets: `cas --version`/`--help` within 3x `python -c pass` or 1.3x "
        "`python -c 'import click'`; `cas path NAME` within 5x `python -c pass` or 1.3x the "
        "floor script. Importing click alone takes several times `python -c pass` here, so the "
        "rows hold the 1.3x targets; the ratios to `python -c pass` are shown too.",
        "The stale row reads a different blob each round, each put with its last access "
        f"{STALE_BY:.0f} s in the past, so every run writes a last access at exit.",
        "The pytest rows run `python -m pytest -q -p no:cacheprovider test_trivial.py` in a "
        "folder with an empty pytest.ini.",
        "PYTHONDONTWRITEBYTECODE is unset for every command, so each runs from cached bytecode "
        "as an installed package does.",
    ]
    return SuiteResult(rows, notes)


def _stale_accesses_written(stale: Path, count: int) -> int:
    """How many of the stale blobs now have a recent last access (the command wrote them)."""
    recent = time.time() - STALE_BY / 2
    with cas.Store.open(stale) as store:
        return sum(1 for entry in store.entries()
                   if entry.name is not None and entry.name.startswith("stale-")
                   and entry.last_access is not None and entry.last_access > recent
                   and int(entry.name.split("-")[1]) < count)
