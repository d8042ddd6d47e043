"""Bad input through the real command line: one `cas: error:` line, the SPEC exit status, and
nothing already stored is lost."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import cas
from cas.storage.layout import LOCKS, Layout
from cas.storage.schema import LATEST_VERSION

from tests.conftest import run_cas

KEPT = b"content stored before the bad input"
UNNAMED = "76badd64dee45f74c988e2a2e4f9bc50ca9aedfead56d14b17885bb2a6d3384a"  # in ``filled_here``

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


def _linked(tmp: Path) -> Path:
    """A folder holding a symbolic link, which a tree refuses (a folder is stored as a tree)."""
    folder = tmp / "linked"
    folder.mkdir(exist_ok=True)
    (folder / "file.txt").write_text("kept out")
    if not (folder / "escape").is_symlink():
        (folder / "escape").symlink_to("/etc/passwd")
    return folder


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], int, str]] = {
    "missing source": (lambda root, tmp: ["put", str(tmp / "nope.bin")], 3, "does not exist"),
    "folder holding a link": (lambda root, tmp: ["put", str(_linked(tmp))], 2, "symbolic link"),
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
    "verify budget not a duration": (lambda root, tmp: ["verify", "--budget", "soon"], 2,
                                     "--budget"),
    "verify budget negative": (lambda root, tmp: ["verify", "--budget", "-5m"], 2, "negative"),
    "gc size negative": (lambda root, tmp: ["gc", "--max-size", "-1"], 2, "negative"),
    "gc age with unknown unit": (lambda root, tmp: ["gc", "--max-age", "3y"], 2, "unit"),
    "fetch of a file URL": (lambda root, tmp: ["fetch", "file:///etc/passwd"], 2, "http"),
    "fetch with a short blake3": (lambda root, tmp: ["fetch", "http://127.0.0.1:9/x",
                                                     "--blake3", "abc"], 2, "64 hexadecimal"),
    "sync of a missing manifest": (lambda root, tmp: ["sync", str(tmp / "none.toml")], 3,
                                   "does not exist"),
    "lease without a command": (lambda root, tmp: ["lease", "kept"], 2, "--"),
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
    for folder in (Layout(filled).tmp, Layout(filled).blobs, filled):
        os.chmod(folder, 0o777)
    result = subprocess.run(
        [*_unprivileged(), *_cas_command(filled), "put", str(source)],
        capture_output=True, timeout=60,
    )
    _assert_one_error_line(result, 1, "permission denied")
    _assert_kept(filled)
    assert [p.name for p in Layout(filled).tmp.iterdir()] == [LOCKS]


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
    Layout(root).catalog.write_bytes(b"garbage" * 1000)
    result = run_cas("ls", root=root)
    _assert_one_error_line(result, 1, "not a usable SQLite catalog")
    assert Layout(root).catalog.read_bytes() == b"garbage" * 1000


def test_catalog_of_newer_version(filled: Path) -> None:
    """A catalog of a newer schema version is refused, its rows untouched."""
    db = sqlite3.connect(Layout(filled).catalog, isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")
    db.close()
    result = run_cas("cat", "kept", root=filled)
    _assert_one_error_line(result, 1, "newer")
    db = sqlite3.connect(Layout(filled).catalog, isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION}")
    db.close()
    _assert_kept(filled)


def _cas_command(root: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "cas", "--root", str(root)]


# -- the same through the Python API ---------------------------------------------------------------

API_CASES: dict[str, tuple[Callable[[cas.Store, Path], object], type[Exception], str]] = {
    "put of an int": (lambda s, tmp: s.put(123), cas.UsageError, "cannot put a int"),  # type: ignore[arg-type]
    "put of a text stream": (lambda s, tmp: s.put(io.StringIO("text")), cas.UsageError,  # type: ignore[arg-type]
                             "binary mode"),
    "put of a missing file": (lambda s, tmp: s.put(tmp / "nope"), cas.NotFound, "does not exist"),
    "put of a folder with a link": (lambda s, tmp: s.put(_linked(tmp)), cas.UsageError,
                                    "'escape' is a symbolic link"),
    "name not a string": (lambda s, tmp: s.put(b"x", name=5), cas.UsageError, "a string"),  # type: ignore[arg-type]
    "empty name": (lambda s, tmp: s.put(b"x", name=""), cas.UsageError, "empty"),
    "name too long": (lambda s, tmp: s.put(b"x", name="n" * 256), cas.UsageError, "at most"),
    "name with a newline": (lambda s, tmp: s.put(b"x", name="a\nb"), cas.UsageError, "control"),
    "name of 64 hex digits": (lambda s, tmp: s.tag("ab" * 32, "kept"), cas.UsageError, "64 hex"),
    "ref that is None": (lambda s, tmp: s.path(None), cas.UsageError, "a ref must be"),  # type: ignore[arg-type]
    "unknown digest": (lambda s, tmp: s.read_bytes("0" * 64), cas.NotFound, "no blob"),
    "name that looks like a path": (lambda s, tmp: s.read_bytes("../../etc/passwd"),
                                    cas.NotFound, "../../etc/passwd"),
    "tag of an unknown ref": (lambda s, tmp: s.tag("new", "nothing"), cas.NotFound, "nothing"),
    "untag of an unknown name": (lambda s, tmp: s.untag("nothing"), cas.NotFound, "nothing"),
    "remove of an unknown ref": (lambda s, tmp: s.remove("nothing"), cas.NotFound, "nothing"),
    "remove of a leased blob": (lambda s, tmp: (s.lease("kept"), s.remove("kept")), cas.InUse,
                                "leased"),
    "lease of an unknown ref": (lambda s, tmp: s.lease("nothing"), cas.NotFound, "nothing"),
    "pin of a blob without a name": (lambda s, tmp: s.pin(UNNAMED), cas.UsageError,
                                     "no name to pin"),
    "fetch of an ftp URL": (lambda s, tmp: s.fetch("ftp://example.org/x"), cas.UsageError,
                            "http"),
    "fetch of a file URL": (lambda s, tmp: s.fetch("file:///etc/passwd"), cas.UsageError,
                            "http"),
    "fetch with a bad blake3": (lambda s, tmp: s.fetch("http://127.0.0.1:9/x", blake3="zz"),
                                cas.UsageError, "64 hexadecimal"),
    "fetch with a bad sha256": (lambda s, tmp: s.fetch("http://127.0.0.1:9/x", sha256="1" * 63),
                                cas.UsageError, "64 hexadecimal"),
    "fetch with a negative size": (lambda s, tmp: s.fetch("http://127.0.0.1:9/x", size=-1),
                                   cas.UsageError, "non-negative"),
    "gc with a negative size": (lambda s, tmp: s.gc(max_size=-1), cas.UsageError, "negative"),
    "gc with a bad age": (lambda s, tmp: s.gc(max_age="soon"), cas.UsageError, "duration"),  # type: ignore[arg-type]
    "verify with a zero budget": (lambda s, tmp: s.verify(budget=0), cas.UsageError, "budget"),
    "sync of a missing manifest": (lambda s, tmp: s.sync(tmp / "none.toml"), cas.NotFound,
                                   "does not exist"),
    "open with a bad setting": (lambda s, tmp: cas.Store.open(tmp / "o", max_cache_size="2XB"),
                                cas.ConfigError, "2XB"),
    "open with an unknown setting": (lambda s, tmp: cas.Store.open(tmp / "o", nonsense=1),
                                     cas.ConfigError, "unknown setting"),
    "open of a root that is a file": (lambda s, tmp: cas.Store.open(tmp / "kept.bin"),
                                      cas.StoreError, "not a folder"),
}


def _snapshot(root: Path) -> tuple[list[tuple[object, ...]], list[str]]:
    """Every catalog row of names and blobs, and every blob file."""
    db = sqlite3.connect(Layout(root).catalog)
    try:
        rows = db.execute("SELECT name, digest FROM names ORDER BY name").fetchall()
        rows += db.execute("SELECT digest, size FROM blobs ORDER BY digest").fetchall()
    finally:
        db.close()
    return rows, sorted(p.name for p in Layout(root).blobs.rglob("*") if p.is_file())


@pytest.fixture
def filled_here(tmp_path: Path) -> Path:
    """``filled``, made in this process (the API cases need no command line)."""
    root = tmp_path / "store"
    (tmp_path / "kept.bin").write_bytes(KEPT)
    with cas.Store.open(root) as store:
        store.put(tmp_path / "kept.bin", name="kept")
        assert store.put(b"a blob without a name") == UNNAMED
    return root


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_bad_input_through_the_api(filled_here: Path, tmp_path: Path, case: str) -> None:
    """Each bad call raises its error class with one line naming the problem, and what was
    stored before is intact."""
    call, error, mentions = API_CASES[case]
    before = _snapshot(filled_here)
    with cas.Store.open(filled_here) as store:
        with pytest.raises(error) as raised:
            call(store, tmp_path)
        message = str(raised.value)
    assert "\n" not in message and mentions.lower() in message.lower(), message
    assert _snapshot(filled_here) == before
    with cas.Store.open(filled_here) as store:
        assert store.read_bytes("kept") == KEPT


def test_names_and_refs_never_reach_outside_the_root(tmp_path: Path) -> None:
    """Names that look like paths are catalog keys: stored and read inside the root only, and
    nothing is created outside it (guarantee 7)."""
    root = tmp_path / "store"
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    hostile = ["../../escape", "/etc/passwd", "a/../../b", "..", "~root/.ssh/id", "C:\\x",
               "blobs/../../catalog.db", "%2e%2e/%2e%2e/x"]
    with cas.Store.open(root) as store:
        for index, name in enumerate(hostile):
            digest = store.put(f"content {index}".encode(), name=name)
            path = store.path(name)
            # a named view inside views/, keyed by the digest: never outside the root
            assert path.resolve().is_relative_to(Layout(root).views.resolve()), path
            assert path.parent.name == digest and path.samefile(store.path(digest))
            assert store.path(digest).resolve().is_relative_to(Layout(root).blobs.resolve())
            assert store.read_bytes(name) == f"content {index}".encode()
        assert sorted(entry.name for entry in store.entries() if entry.name) == sorted(hostile)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outside_before, "store"])
