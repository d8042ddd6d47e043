"""Bad input through the real command line: one `cas: error:` line, the SPEC exit status, and
nothing already stored is lost."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cas.catalog import LATEST_VERSION

from .conftest import run_cas

KEPT = b"content stored before the bad input"

# Root bypasses file permissions; dropping these capabilities makes permission bits apply.
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
           "--inh-caps=-dac_override,-dac_read_search"]


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    return _NO_DAC


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A store root holding one named blob."""
    root = tmp_path / "store"
    source = tmp_path / "kept.bin"
    source.write_bytes(KEPT)
    assert run_cas("put", str(source), "--name", "kept", root=root).returncode == 0
    return root


def _assert_one_error_line(result: subprocess.CompletedProcess[bytes], status: int,
                           mentions: str) -> None:
    lines = result.stderr.decode().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("cas: error: ")
    assert mentions.lower() in lines[0].lower()


def _assert_kept(root: Path) -> None:
    result = run_cas("cat", "kept", root=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == KEPT


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], int, str]] = {
    "missing source": (lambda root, tmp: ["put", str(tmp / "nope.bin")], 3, "does not exist"),
    "folder as file": (lambda root, tmp: ["put", str(tmp)], 2, "folder"),
    "64-hex name": (lambda root, tmp: ["tag", "ab" * 32, "kept"], 2, "64 hex"),
    "empty name": (lambda root, tmp: ["tag", "", "kept"], 2, "empty"),
    "over-long name": (lambda root, tmp: ["tag", "n" * 256, "kept"], 2, "at most 255"),
    "control character": (lambda root, tmp: ["tag", "a\x07b", "kept"], 2, "control"),
    "unknown name": (lambda root, tmp: ["path", "no/such/fixture"], 3, "no/such/fixture"),
    "unknown digest": (lambda root, tmp: ["cat", "0" * 64], 3, "0" * 64),
    "unknown ref to rm": (lambda root, tmp: ["rm", "nothing"], 3, "nothing"),
    "unknown name to untag": (lambda root, tmp: ["untag", "nothing"], 3, "nothing"),
    "tag of unknown ref": (lambda root, tmp: ["tag", "new", "nothing"], 3, "nothing"),
    "unknown command": (lambda root, tmp: ["frobnicate"], 2, "frobnicate"),
    "missing argument": (lambda root, tmp: ["tag", "only-one"], 2, "missing"),
    "name with several files": (lambda root, tmp: ["put", "a", "b", "--name", "x"], 2, "--name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(filled: Path, tmp_path: Path, case: str) -> None:
    """Each bad input is one error line with its exit status, and the stored blob survives."""
    make_args, status, mentions = CASES[case]
    result = run_cas(*make_args(filled, tmp_path), root=filled)
    _assert_one_error_line(result, status, mentions)
    _assert_kept(filled)


def test_unreadable_source(filled: Path, tmp_path: Path) -> None:
    """A source file without read permission is a one-line error; nothing is staged."""
    source = tmp_path / "secret.bin"
    source.write_bytes(b"secret")
    source.chmod(0)
    os.chmod(filled, 0o777)
    for folder in (filled / "tmp", filled / "blobs", filled):
        os.chmod(folder, 0o777)
    result = subprocess.run(
        [*_unprivileged(), *_cas_command(filled), "put", str(source)],
        capture_output=True, timeout=60,
    )
    _assert_one_error_line(result, 1, "permission denied")
    _assert_kept(filled)
    assert [p.name for p in (filled / "tmp").iterdir()] == ["locks"]


def test_root_is_a_file(tmp_path: Path) -> None:
    """A root that is a regular file is refused, and the file is left alone."""
    root = tmp_path / "file"
    root.write_bytes(b"not a folder")
    result = run_cas("ls", root=root)
    _assert_one_error_line(result, 1, "not a folder")
    assert root.read_bytes() == b"not a folder"


def test_root_not_writable(filled: Path) -> None:
    """A store root the user cannot write is refused with one line; reads of it are untouched."""
    os.chmod(filled, 0o555)
    try:
        result = subprocess.run(
            [*_unprivileged(), *_cas_command(filled), "put", "-"],
            input=b"new", capture_output=True, timeout=60,
        )
        _assert_one_error_line(result, 1, "not writable")
    finally:
        os.chmod(filled, 0o700)
    _assert_kept(filled)


def test_catalog_not_sqlite(tmp_path: Path) -> None:
    """A catalog.db that is not a SQLite database is reported, never overwritten."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "catalog.db").write_bytes(b"garbage" * 1000)
    result = run_cas("ls", root=root)
    _assert_one_error_line(result, 1, "not a usable SQLite catalog")
    assert (root / "catalog.db").read_bytes() == b"garbage" * 1000


def test_catalog_of_newer_version(filled: Path) -> None:
    """A catalog of a newer schema version is refused, its rows untouched."""
    db = sqlite3.connect(filled / "catalog.db", isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")
    db.close()
    result = run_cas("cat", "kept", root=filled)
    _assert_one_error_line(result, 1, "newer")
    db = sqlite3.connect(filled / "catalog.db", isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION}")
    db.close()
    _assert_kept(filled)


def _cas_command(root: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "cas", "--root", str(root)]
