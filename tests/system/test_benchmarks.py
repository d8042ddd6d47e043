"""The benchmark runner works end to end in quick mode; timings are never asserted here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "benchmarks" / "run.py"

pytest.importorskip("diskcache", reason="the benchmark extra (diskcache) is not installed")


def run_quick(tmp_path: Path, *suites: str, env: dict[str, str] | None = None) -> str:
    """Run ``run.py --quick`` from a foreign folder; return the report it wrote."""
    output = tmp_path / "RESULTS.md"
    command = [sys.executable, str(RUNNER), *suites, "--quick"]
    command += ["--scratch", str(tmp_path / "scratch"), "--output", str(output)]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return output.read_text(encoding="utf-8")


def summary_rows(report: str) -> list[str]:
    """The data rows of the report's summary table."""
    section = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]


#: Rows each suite's quick run must write: (metric prefix, peer); the transfer suite has its own
#: test below, with sizes small enough for a throttled origin.
EXPECTED_ROWS: dict[str, list[tuple[str, str]]] = {
    "put-large": [("put of a 64 MiB file, wall time", "cp + sync"),
                  ("peak RSS of the 64 MiB put", "—")],
    "small": [("put of 1,000 named 4 KiB blobs", "diskcache Cache.set"),
              ("look-up of 1,000 names", "diskcache Cache.get")],
    "fetch": [("fetch of 64 MiB over loopback, throughput", "curl -o"),
              ("fetch of 64 MiB over loopback, wall time", "pooch.retrieve, known SHA-256")],
    "ranges": [("fetch of 64 MiB over unthrottled loopback, wall time", "curl -o")],
    "checksums": [("fetch of 16 MiB expecting an MD5, wall time", "pooch.retrieve, known MD5")],
    "gc": [("gc of 5,000 blobs: remove the files", "xargs -0 rm -f")],
    "verify": [("full verify of 65 MiB in 64 blobs", "b3sum" if shutil.which("b3sum") else "—")],
    "cli": [("`cas path NAME`, whole process", "`python -c pass`"),
            ("`python -c 'import cas'`", "`python -c 'import sqlalchemy'`")],
    "s3-pull": [("pull of a 64 MiB blob from a local S3 server", "boto3 download_file"),
                ("push of a 64 MiB blob to a local S3 server", "boto3 upload_file"),
                ("pull of 20 x 64 KiB fixtures from a local S3 server", "boto3 get_object loop")],
    "archives": [("fetch + unpack of a 10 MiB tar.gz", "pooch.retrieve, processor=pooch.Untar()")],
    "trees": [("path(tree) materializing 1,000 files", "cp -r")],
    "startup": [("`cas --version`", "`python -c 'import click'`"),
                ("`cas --help`", "`python -c 'import click'`"),
                ("`cas path NAME`", "floor script (click, sqlite3, blake3; SELECT, lstat)"),
                ("`cas path NAME`, stale access written",
                 "floor script (click, sqlite3, blake3; SELECT, lstat)"),
                ("`python -c 'import cas.pytest_plugin'`", "`python -c 'import pytest'`"),
                ("pytest run, cas plugin loaded", "`pytest -p no:cas` run")],
}


#: Suites that serve their input with nginx: without it they write a note and no rows.
NGINX_SUITES = {"fetch", "ranges", "checksums"}


def test_every_suite_but_transfer_has_its_expected_rows() -> None:
    """A suite added to the runner gets a quick run here too."""
    sys.path.insert(0, str(RUNNER.parent))
    try:
        from run import SUITES
    finally:
        sys.path.remove(str(RUNNER.parent))
    assert set(SUITES) - {"transfer"} == set(EXPECTED_ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("suite", sorted(EXPECTED_ROWS))
def test_quick_run_of_a_suite_writes_its_rows(tmp_path: Path, suite: str) -> None:
    """`run.py SUITE --quick`, each suite on its own (so that a suite relying on what another
    imported fails here), exits 0 and writes the command, the machine facts and the rows."""
    report = run_quick(tmp_path, suite)

    rows = summary_rows(report)
    if suite in NGINX_SUITES and shutil.which("nginx") is None:
        assert "nginx is not installed" in report
        assert not any(row.startswith(f"| {suite} |") for row in rows), rows
        return
    for metric, peer in EXPECTED_ROWS[suite]:
        assert any(
            row.startswith(f"| {suite} | {metric}") and f"| {peer} |" in row for row in rows
        ), (metric, peer, rows)
    assert not any("ERROR" in row for row in rows)
    if suite == "verify" and not shutil.which("b3sum"):
        assert "b3sum is not installed" in report
    if suite == "cli":
        assert "### What `cas path` imports" in report
    assert f"{RUNNER.name} {suite} --quick --scratch" in report
    for fact in ("| cores |", "| Python |", "| SQLite |", "| scratch folder |"):
        assert fact in report
    if suite != "verify":  # which keeps its input store between runs, as its notes say
        leftovers = [p for p in (tmp_path / "scratch").rglob("*") if p.name == "catalog.db"]
        assert not leftovers, f"stores are removed after a run: {leftovers}"


def test_missing_b3sum_is_skipped_with_a_note(tmp_path: Path) -> None:
    """Without b3sum on PATH the put-large suite still runs and says what it skipped."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("cp", "sync", "git"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, tools / tool)
    report = run_quick(tmp_path, "put-large", env={**os.environ, "PATH": str(tools)})

    rows = summary_rows(report)
    assert any("| cp + sync |" in row for row in rows)
    assert not any("| b3sum |" in row for row in rows)
    assert "b3sum is not installed" in report


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_transfer_suite_runs_against_a_throttled_nginx(tmp_path: Path) -> None:
    """`run.py transfer --quick` with tiny sizes: the throttled-origin rows are written (the
    aria2c and hf_transfer ones when those are installed, else a note), nginx is stopped and
    the scratch folder holds no store or download afterwards."""
    report = run_quick(tmp_path, "transfer", "--set", "size=4MiB", "--set", "fixtures=4",
                       "--set", "smallest=64KiB", "--set", "largest=2MiB")

    rows = summary_rows(report)
    large = "| transfer | 4 MiB from an origin capped at 40m/connection, wall time"
    assert any(row.startswith(large) and "| curl -o |" in row for row in rows), rows
    assert any("| transfer | sync of 4 fixtures, 64 KiB to 2 MiB" in row for row in rows), rows
    assert any("peak anonymous memory (RssAnon) of `cas fetch` of 4 MiB" in row for row in rows)
    if shutil.which("aria2c"):
        assert any(row.startswith(large) and "| aria2c -x8 -s8 -k1M |" in row for row in rows)
        assert any("| aria2c -i LIST -j8 -x8 -s8 -k1M |" in row for row in rows)
    else:
        assert "aria2c is not installed" in report
    try:
        import hf_transfer  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert "hf_transfer is not installed" in report
    else:
        assert any("| hf_transfer.download, max_files=8" in row for row in rows)
    assert not any("ERROR" in row for row in rows)
    assert "--set size=4MiB" in report
    scratch = tmp_path / "scratch" / "transfer"
    assert not (scratch / "transfer").exists(), "stores, downloads and nginx's folder are removed"
    pid = subprocess.run(["pgrep", "-f", str(scratch)], capture_output=True, text=True)
    assert pid.stdout == "", "nginx was stopped"
