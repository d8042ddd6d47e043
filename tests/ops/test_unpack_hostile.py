"""Hostile archives fetched with unpack, through the API and the command line: each attack is
refused with an IntegrityError (exit 4) or, for what cas cannot decide, a UsageError (exit 2);
nothing is written outside the store's staging folder, no staging folder is left behind, and
what was stored before is all still there."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas
from cas.storage.layout import PUT_PREFIX, Layout

from tests.archives import ATTACKS, ESCAPED, Hostile, hostile
from tests.conftest import run_cas
from tests.httpserver import Server, serve
from tests.transfer.test_http import fast

KEPT = b"stored before the attack\n" * 100
EXIT = {"IntegrityError": 4, "UsageError": 2}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the store that hostile members aim at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def _attack(server: Server, outside: Path, name: str) -> tuple[Hostile, str]:
    attack = hostile(str(outside))[name]
    path = f"/{name}{attack.path}"
    return attack, server.add(path, attack.build())


def _assert_contained(tmp_path: Path, root: Path) -> None:
    """No marker anywhere under the test's folder, and no staging file left in tmp/."""
    assert not [path for path in tmp_path.rglob(f"*{ESCAPED}*")]
    assert not list(Layout(root).tmp.glob(f"{PUT_PREFIX}*"))


def _seed(store: cas.Store) -> str:
    return store.put(KEPT, name="kept")


def _assert_kept(store: cas.Store, digest: str) -> None:
    assert store.read_bytes("kept") == KEPT
    assert store.path(digest).read_bytes() == KEPT
    report = store.verify()
    assert not report.findings, report.summary()


@pytest.mark.parametrize("name", ATTACKS)
def test_hostile_archive_is_refused_by_the_api(name: str, tmp_path: Path, root: Path,
                                               outside: Path, server: Server) -> None:
    """Each attack raises its error with one line naming the archive; nothing escapes, nothing
    stored is lost, and the name asked for is not set."""
    attack, url = _attack(server, outside, name)
    with cas.Store.open(root, downloader=fast(root)) as store:
        kept = _seed(store)
        with pytest.raises(getattr(cas, attack.error)) as raised:
            store.fetch(url, unpack=attack.unpack, name="victim")
        message = str(raised.value)
        assert "\n" not in message and (url in message or "unpack" in message), message
        _assert_contained(tmp_path, root)
        _assert_kept(store, kept)
        with pytest.raises(cas.NotFound):
            store.path("victim")


@pytest.mark.parametrize("name", ATTACKS)
def test_hostile_archive_is_refused_by_the_cli(name: str, tmp_path: Path, root: Path,
                                               outside: Path, server: Server) -> None:
    """`cas fetch --unpack` exits 4 (2 for what cas cannot decide) with one error line."""
    attack, url = _attack(server, outside, name)
    assert run_cas("put", "-", "--name", "kept", root=root, input=KEPT).returncode == 0
    done = run_cas("fetch", url, "--unpack", attack.unpack, "--name", "victim", root=root)
    assert done.returncode == EXIT[attack.error], done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: "), lines
    _assert_contained(tmp_path, root)
    assert run_cas("cat", "kept", root=root).stdout == KEPT
    assert run_cas("path", "victim", root=root).returncode == 3


def test_hostile_archive_in_a_manifest_fails_alone(tmp_path: Path, root: Path, outside: Path,
                                                   server: Server) -> None:
    """A sync whose manifest holds a zip slip stores the good fixture and reports the bad one."""
    attack, bad = _attack(server, outside, "zip-slip")
    archive = gzip.compress(b"good")
    good = server.add("/manifest/good.txt.gz", archive)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(
        f'[fixtures.good]\nurl = "{good}"\nunpack = "gz"\n'
        f'sha256 = "{hashlib.sha256(archive).hexdigest()}"\n\n'
        f'[fixtures.bad]\nurl = "{bad}"\nunpack = "{attack.unpack}"\n'
        f'sha256 = "{hashlib.sha256(attack.build()).hexdigest()}"\n'
    )
    done = run_cas("sync", str(manifest), root=root)
    assert done.returncode == 1 and "bad" in done.stderr.decode()
    assert run_cas("cat", "good", root=root).stdout == b"good"
    assert run_cas("path", "bad", root=root).returncode == 3
    _assert_contained(tmp_path, root)
    with cas.Store.open(root) as store, pytest.raises(cas.CasError, match="leaves the tree"):
        store.sync(manifest)
