"""Start-up pays only for what it uses: the heavy libraries stay unloaded where they are not needed.

Each check runs in a fresh interpreter and reads its ``sys.modules``; no timing is asserted
(benchmarks/suite_startup.py measures the times).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cas

#: Libraries that cost tens to hundreds of milliseconds to import, each needed by few commands.
HEAVY = ("sqlalchemy", "urllib3", "boto3", "botocore", "tqdm", "zstandard")

#: Runs the command line in this interpreter, then prints every module it loaded, then the heavy
#: packages among them, as JSON on the last two lines of stderr. ``argv[1]`` shifts the clock by
#: that many seconds first (so a stored last access looks stale), the rest is the command line.
_PROBE = textwrap.dedent(
    """
    import json, sys, time
    shift = float(sys.argv[1])
    if shift:
        real = time.time
        time.time = lambda: real() + shift
    sys.argv = ["cas", *sys.argv[2:]]
    try:
        if sys.argv[1:] == ["--import-plugin"]:
            import cas.pytest_plugin
        else:
            from cas.cli import main
            main()
    except SystemExit as end:
        if end.code:
            raise
    finally:
        heavy = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
        print(json.dumps(sorted(sys.modules)), file=sys.stderr)
        print(json.dumps(heavy), file=sys.stderr)
    """
).replace("HEAVY", repr(HEAVY))


def _probe(*args: str, shift: float) -> tuple[list[str], str]:
    """The last lines of stderr and the stdout of a fresh process running ``cas ARGS``."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(shift), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()[-2:], result.stdout


def loaded(*args: str, shift: float = 0.0) -> tuple[set[str], str]:
    """The heavy packages a fresh process loaded running ``cas ARGS``, and its stdout."""
    lines, stdout = _probe(*args, shift=shift)
    return set(json.loads(lines[-1])), stdout


def every_module(*args: str, shift: float = 0.0) -> tuple[set[str], str]:
    """Every module a fresh process loaded running ``cas ARGS``, and its stdout."""
    lines, stdout = _probe(*args, shift=shift)
    return set(json.loads(lines[0])), stdout


#: What `cas path NAME` must not load: the operations that write, clean up, fetch or verify
#: (Store wires them on first use), the catalog's connection pool (made by the first read or
#: write transaction), and standard-library modules only rare paths need (click
#: loads ``inspect`` and ``uuid`` itself; ``cas cat`` copies with ``shutil``; ``logging`` loads
#: when cas first logs, cas/logs.py).
NOT_ON_THE_PATH_ROUTE = (
    "cas.ops.put", "cas.ops.record", "cas.ops.names", "cas.ops.cleanup", "cas.ops.eviction",
    "cas.ops.upkeep", "cas.ops.fetch", "cas.ops.tier", "cas.ops.manifest", "cas.ops.verify",
    "cas.ops.writing", "cas.ops.unpack", "cas.storage.archives", "cas.storage.extract",
    "cas.storage.pool",
    "tarfile", "zipfile", "gzip",
    "cas.transfer", "cas.render", "cas.progress",
    "platformdirs", "tomllib", "difflib", "hashlib", "socket", "secrets", "shutil", "tempfile",
    "concurrent.futures", "logging",
)


@pytest.fixture
def named(root: Path) -> Path:
    """A store at ``root`` holding one blob under the name ``fixture``."""
    with cas.Store.open(root) as store:
        store.put(b"a fixture\n", name="fixture")
    return root


def test_importing_the_pytest_plugin_loads_nothing_heavy() -> None:
    """Every pytest run of a project with cas installed imports the plugin: it stays light."""
    assert loaded("--import-plugin")[0] == set()


def test_the_harness_loads_no_http_client_until_a_fetch() -> None:
    """A test session that only reads stored fixtures pays for no HTTP client."""
    probe = "import sys, cas.harness; print(sorted(m for m in HEAVY if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe.replace("HEAVY", repr(HEAVY))],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_load_nothing_heavy(flag: str) -> None:
    """`cas --version` and `cas --help` load no store, and `--help` still lists every command."""
    from cas.cli import cli

    modules, output = loaded(flag)
    assert modules == set()
    if flag == "--help":
        for name in cli.commands:
            assert f"  {name} " in output, name


def test_path_loads_no_sqlalchemy_s3_or_progress_bars(named: Path) -> None:
    """`cas path NAME` on a warm store, a look-up only, never loads SQLAlchemy, boto3 or tqdm."""
    modules, output = loaded("--root", str(named), "path", "fixture")
    assert Path(output.strip()).read_bytes() == b"a fixture\n"
    assert modules.isdisjoint({"sqlalchemy", "boto3", "botocore", "tqdm"}), modules


def test_path_that_writes_a_stale_access_loads_no_sqlalchemy(named: Path) -> None:
    """When the stored last access is stale, `cas path` writes the new one at close, on a plain
    connection: still no SQLAlchemy, and the access time is recorded."""
    with cas.Store.open(named) as store:
        (before,) = [entry.last_access for entry in store.entries()]
    hour = 3600.0
    modules, output = loaded("--root", str(named), "path", "fixture", shift=hour)
    assert Path(output.strip()).read_bytes() == b"a fixture\n"
    assert modules.isdisjoint({"sqlalchemy", "boto3", "botocore", "tqdm"}), modules
    with cas.Store.open(named) as store:
        (after,) = [entry.last_access for entry in store.entries()]
        assert before is not None and after is not None
        assert after >= before + hour - 60
        assert store.stats().counters[cas.Counter.HITS] == 1
    assert after <= time.time() + hour


def test_path_loads_no_http_client(named: Path) -> None:
    """`cas path NAME` never loads urllib3 either: a look-up needs no network."""
    modules, _ = loaded("--root", str(named), "path", "fixture")
    assert modules == set(), modules


@pytest.mark.parametrize("command", ["path", "cat"])
@pytest.mark.parametrize("shift", [0.0, 3600.0])
def test_reading_loads_no_write_fetch_or_rare_module(named: Path, command: str,
                                                     shift: float) -> None:
    """`cas path NAME` and `cas cat NAME`, on a warm store or writing a stale access at close,
    load only what reading needs: no write or cleanup operation, no fetch, and none of the
    standard-library modules that only rare paths use."""
    modules, output = every_module("--root", str(named), command, "fixture", shift=shift)
    assert output.strip().endswith("a fixture" if command == "cat" else "")
    unwanted = set(NOT_ON_THE_PATH_ROUTE) - ({"shutil"} if command == "cat" else set())
    assert modules.isdisjoint(unwanted), modules & unwanted


#: Runs the console entry point, then prints whether the garbage collector runs and how many
#: objects are frozen out of its way.
_COLLECTOR_PROBE = textwrap.dedent(
    """
    import gc, sys
    sys.argv = ["cas", *sys.argv[1:]]
    from cas.cli import main
    try:
        main()
    except SystemExit as end:
        if end.code:
            raise
    print(gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)
    """
)


def test_the_collector_resumes_once_the_store_is_open(named: Path) -> None:
    """The console entry point pauses the garbage collector for start-up; once the store is
    open it runs again, with what start-up made frozen out of its way."""
    result = subprocess.run(
        [sys.executable, "-c", _COLLECTOR_PROBE, "--root", str(named), "path", "fixture"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    enabled, frozen = result.stderr.split()
    assert Path(result.stdout.strip()).read_bytes() == b"a fixture\n"
    assert enabled == "True"
    assert int(frozen) > 10_000


def test_the_command_line_in_process_leaves_the_collector_alone(named: Path) -> None:
    """Only the console entry point pauses the collector: the command line run inside another
    program (CliRunner here) neither pauses nor freezes anything."""
    import gc

    from tests.conftest import run_cas

    frozen = gc.get_freeze_count()
    assert run_cas("--root", str(named), "path", "fixture").returncode == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


#: Runs the console entry point with ``sqlite3.connect`` counted; ``argv[1]`` shifts the clock.
_CONNECTIONS_PROBE = textwrap.dedent(
    """
    import sqlite3, sys, time
    shift = float(sys.argv[1])
    if shift:
        real = time.time
        time.time = lambda: real() + shift
    made = []
    connect = sqlite3.connect
    sqlite3.connect = lambda *args, **kwargs: made.append(args) or connect(*args, **kwargs)
    sys.argv = ["cas", *sys.argv[2:]]
    from cas.cli import main
    try:
        main()
    except SystemExit as end:
        if end.code:
            raise
    print(len(made), file=sys.stderr)
    """
)


@pytest.mark.parametrize("shift", [0.0, 3600.0])
def test_path_opens_the_catalog_once(named: Path, shift: float) -> None:
    """`cas path NAME` makes one catalog connection: opening checks the schema on it, the
    look-up runs on it, and the close writes the hit (and a stale access) on it."""
    result = subprocess.run(
        [sys.executable, "-c", _CONNECTIONS_PROBE, str(shift), "--root", str(named), "path",
         "fixture"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert Path(result.stdout.strip()).read_bytes() == b"a fixture\n"
    assert result.stderr.split()[-1] == "1"
    with cas.Store.open(named) as store:
        assert store.stats().counters[cas.Counter.HITS] == 1
