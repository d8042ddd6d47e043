"""Faults from outside (SPEC guarantees 2, 7, 8 and 9): a full disk, permission errors, a
damaged catalog, blobs edited, deleted or replaced by symlinks, read-only stores, a network
filesystem. Each is made for real (a small tmpfs, a read-only bind mount, permission bits that
apply to a child process without root's override) where this machine allows it; the full disk
also through one narrow seam, the write of a staging file, so that it is tested everywhere.

After each fault the store is as it was, and the error is one line that says what happened.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cas
import cas.storage.hashing
import cas.storage.opening
from cas.storage.layout import DOWNLOAD_PREFIX, LOCKS, PUT_PREFIX, Layout, lock_name, shard_of

from tests.conftest import run_cas
from tests.faces.test_bad_input import _unprivileged
from tests.httpserver import Server

KEPT = b"stored before the fault"
BIG = 4 << 20


def cas_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "cas", "--root", str(root)]


def one_error_line(result: subprocess.CompletedProcess[bytes], status: int, *mentions: str
                   ) -> str:
    """The single ``cas: error:`` line of a failed command, checked for status and words."""
    lines = result.stderr.decode().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("cas: error: ")
    for word in mentions:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def as_it_was(root: Path, digests: set[str] | None = None) -> None:
    """The kept blob reads back, nothing is staged, blobs are exactly ``digests``, and the
    catalog is sound."""
    done = run_cas("cat", "kept", root=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout == KEPT
    assert sorted(p.name for p in Layout(root).tmp.iterdir()) == [LOCKS]
    if digests is not None:
        assert {p.name for p in Layout(root).blobs.rglob("*") if p.is_file()} == digests
    db = sqlite3.connect(Layout(root).catalog)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


@pytest.fixture
def kept_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")
    return root


def kept_digest() -> str:
    return blake3.blake3(KEPT).hexdigest()


def blob_path(root: Path, digest: str) -> Path:
    return Layout(root).blob(digest)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


# -- a full disk ---------------------------------------------------------------------------------


def test_enospc_during_put_on_a_small_disk(small_disk: Path, tmp_path: Path) -> None:
    """A put larger than the disk fails in one line and leaves nothing staged."""
    root = small_disk / "store"
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG))
    result = run_cas("put", str(big), root=root)
    one_error_line(result, 1, "no space left", "nothing was changed")
    as_it_was(root, {kept_digest()})


def test_enospc_during_fetch_on_a_small_disk(small_disk: Path, server: Server) -> None:
    """A download larger than the disk fails in one line, keeping no partial file."""
    root = small_disk / "store"
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")
    url = server.add("/big.bin", os.urandom(BIG))
    result = run_cas("fetch", url, "--name", "big", root=root, env={"CAS_RETRIES": "0"})
    one_error_line(result, 1, "no space left")
    as_it_was(root, {kept_digest()})


def test_full_disk_refuses_writes_in_one_line_and_still_serves_reads(small_disk: Path) -> None:
    """With no byte free, a write is one line saying so, and reads still work."""
    root = small_disk / "store"
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")
    filler = small_disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    try:
        one_error_line(run_cas("tag", "other", "kept", root=root), 1, "no space left")
        assert run_cas("ls", root=root).returncode == 0
        done = run_cas("cat", "kept", root=root)
        assert done.returncode == 0 and done.stdout == KEPT
    finally:
        filler.unlink()
    as_it_was(root, {kept_digest()})
    assert [entry.name for entry in cas.Store.open(root).entries()] == ["kept"]


def test_enospc_injected_at_the_staging_write(kept_root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in the middle of writing a staging file (the seam: hashing.write_all) is one
    StoreError saying so; nothing is staged or stored."""
    real_write = cas.storage.hashing.write_all

    def half_then_full(fd: int, data: bytes | bytearray | memoryview) -> None:
        real_write(fd, memoryview(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cas.storage.hashing, "write_all", half_then_full)
    with cas.Store.open(kept_root) as store:
        with pytest.raises(cas.StoreError, match=r"no space left.*nothing was changed"):
            store.put(os.urandom(100_000), name="new")
        assert [entry.name for entry in store.entries()] == ["kept"]
    as_it_was(kept_root, {kept_digest()})


# -- permission errors (EACCES), as a user without root's override -------------------------------


def unprivileged(root: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*_unprivileged(), *cas_command(root), *args], capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


def in_shard(shard: str) -> bytes:
    """Some content whose blob lands in ``shard``."""
    counter = 0
    while shard_of(blake3.blake3(f"same shard {counter}".encode()).hexdigest()) != shard:
        counter += 1
    return f"same shard {counter}".encode()


def test_eacces_when_publishing_into_a_read_only_shard(kept_root: Path) -> None:
    """A put whose shard folder cannot be written fails in one line after staging, and its
    staging file goes."""
    shard = blob_path(kept_root, kept_digest()).parent
    data = in_shard(shard.name)
    shard.chmod(0o500)
    try:
        result = subprocess.run([*_unprivileged(), *cas_command(kept_root), "put", "-"],
                                input=data, capture_output=True, timeout=60)
        one_error_line(result, 1, "permission denied", "nothing was changed")
    finally:
        shard.chmod(0o700)
    as_it_was(kept_root, {kept_digest()})


def test_eacces_during_gc_changes_nothing(kept_root: Path) -> None:
    """A cleanup that could not unlink a blob's file refuses before any row goes."""
    shard = blob_path(kept_root, kept_digest()).parent
    shard.chmod(0o500)
    try:
        result = unprivileged(kept_root, "gc", "--max-age", "0s", env={"CAS_GRACE_PERIOD": "0"})
        one_error_line(result, 1, "not writable", "nothing was changed")
    finally:
        shard.chmod(0o700)
    as_it_was(kept_root, {kept_digest()})


def test_eacces_during_fetch_is_one_line(kept_root: Path, server: Server) -> None:
    """A download whose shard folder cannot be written fails in one line when publishing;
    its staging file goes."""
    shard = blob_path(kept_root, kept_digest()).parent
    url = server.add("/same-shard.bin", in_shard(shard.name))
    shard.chmod(0o500)
    try:
        one_error_line(unprivileged(kept_root, "fetch", url), 1, "permission denied")
    finally:
        shard.chmod(0o700)
    as_it_was(kept_root, {kept_digest()})


def test_fetch_into_a_store_without_a_writable_tmp_is_one_line(kept_root: Path,
                                                              server: Server) -> None:
    """A fetch into a store whose tmp/ cannot be written fails in one line."""
    url = server.add("/small.bin", b"small")
    Layout(kept_root).tmp.chmod(0o500)
    try:
        one_error_line(unprivileged(kept_root, "fetch", url), 1, "permission denied")
    finally:
        Layout(kept_root).tmp.chmod(0o700)
    as_it_was(kept_root, {kept_digest()})


# -- a catalog damaged from outside ---------------------------------------------------------------


@pytest.mark.parametrize("cut", ["half", "one page", "empty"])
def test_truncated_catalog_is_detected_with_what_to_do(kept_root: Path, cut: str) -> None:
    """A truncated catalog.db is reported in one line that says to move it aside and run
    `cas verify`; it is left as it is, and doing what the line says brings the blobs back."""
    catalog = Layout(kept_root).catalog
    size = {"half": catalog.stat().st_size // 2, "one page": 4096, "empty": 0}[cut]
    os.truncate(catalog, size)
    damaged = catalog.read_bytes()
    for command in (["ls"], ["cat", "kept"], ["put", "-"]):
        result = run_cas(*command, root=kept_root, input=b"new")
        one_error_line(result, 1, "not a usable SQLite catalog", "move it aside", "cas verify")
    assert catalog.read_bytes() == damaged
    catalog.rename(f"{Layout(kept_root).catalog}.damaged")
    assert run_cas("verify", root=kept_root).returncode == 0
    done = run_cas("cat", kept_digest(), root=kept_root)
    assert done.returncode == 0 and done.stdout == KEPT


def test_garbage_in_the_catalog_is_found_by_verify(kept_root: Path) -> None:
    """Pages overwritten in the middle of catalog.db are found by verify's integrity check."""
    with cas.Store.open(kept_root) as store:
        for index in range(300):
            store.put(f"filler {index}".encode(), name=f"filler/{index}")
    catalog = Layout(kept_root).catalog
    size = catalog.stat().st_size
    with open(catalog, "r+b") as file:
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xff" * 8192)
    result = run_cas("verify", root=kept_root)
    assert result.returncode in (1, 4), result.stderr
    assert "not a usable sqlite catalog" in (result.stdout + result.stderr).decode().lower()


# -- blobs damaged from outside ------------------------------------------------------------------


def test_blob_edited_in_place_is_quarantined_and_never_served_after(kept_root: Path) -> None:
    """An edited blob is found by verify (exit 4), moved to quarantine/ with its bytes, and
    reading it afterwards is an error, never the wrong bytes."""
    path = blob_path(kept_root, kept_digest())
    path.chmod(0o644)
    path.write_bytes(b"STORED before the fault")  # same size, different bytes
    result = run_cas("verify", root=kept_root)
    assert result.returncode == 4
    assert "corrupt" in result.stdout.decode()
    one_error_line(result, 4, "damage remains")
    assert [p.read_bytes() for p in Layout(kept_root).quarantine.iterdir()] == [
        b"STORED before the fault"]
    done = run_cas("cat", "kept", root=kept_root)
    assert done.returncode == 3 and done.stdout == b""
    assert run_cas("verify", root=kept_root).returncode == 4  # lost until put again
    assert run_cas("put", "-", root=kept_root, input=KEPT).returncode == 0
    assert run_cas("verify", root=kept_root).returncode == 0
    assert run_cas("cat", "kept", root=kept_root).stdout == KEPT


def test_blob_deleted_is_reported_by_reads_and_verify(kept_root: Path) -> None:
    """A deleted blob makes reads fail with exit 4 naming `cas verify`; verify reports it."""
    blob_path(kept_root, kept_digest()).unlink()
    one_error_line(run_cas("cat", "kept", root=kept_root), 4, "cas verify")
    one_error_line(run_cas("path", "kept", root=kept_root), 4, "cas verify")
    result = run_cas("verify", "--quick", root=kept_root)
    assert result.returncode == 4
    assert "missing" in result.stdout.decode() and "kept" in result.stdout.decode()


def test_symlink_planted_as_a_blob_is_never_followed(kept_root: Path, tmp_path: Path) -> None:
    """A blob replaced by a symlink to a file elsewhere (with the right bytes, even) is never
    read through; verify removes the link and leaves its target alone."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(KEPT)
    path = blob_path(kept_root, kept_digest())
    path.unlink()
    path.symlink_to(outside)
    for command in (["cat", "kept"], ["path", "kept"]):
        done = run_cas(*command, root=kept_root)
        assert done.returncode == 4 and KEPT not in done.stdout and str(outside) not in str(done)
    result = run_cas("verify", root=kept_root)
    assert result.returncode == 4
    assert "symlink" in result.stdout.decode() and "missing" in result.stdout.decode()
    assert not os.path.lexists(path)
    assert outside.read_bytes() == KEPT


def test_symlink_planted_as_a_shard_is_never_followed(kept_root: Path, tmp_path: Path) -> None:
    """A shard folder replaced by a symlink to a folder elsewhere is never read through, nor
    written into; verify removes the link."""
    shard = blob_path(kept_root, kept_digest()).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(shard, elsewhere)
    shutil.rmtree(shard)
    shard.symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    for command in (["cat", "kept"], ["path", "kept"]):
        assert run_cas(*command, root=kept_root).returncode == 4
    one_error_line(run_cas("put", "-", root=kept_root, input=KEPT), 1, "symbolic link")
    assert run_cas("verify", root=kept_root).returncode == 4
    assert not os.path.lexists(shard)
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    assert run_cas("put", "-", root=kept_root, input=KEPT).returncode == 0
    assert run_cas("cat", "kept", root=kept_root).stdout == KEPT


def test_symlinks_planted_in_tmp_are_never_followed(tmp_path: Path) -> None:
    """A symlink planted as the set-up lock is refused, not followed; verify removes symlinks
    planted in tmp/ and leaves their targets alone."""
    root = tmp_path / "store"
    target = tmp_path / "target"
    Layout(root).locks.mkdir(parents=True)
    Layout(root).setup_lock.symlink_to(target)
    one_error_line(run_cas("ls", root=root), 1, "symbolic link")
    assert not os.path.lexists(target)
    Layout(root).setup_lock.unlink()
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")
    target.write_bytes(b"not cas's")
    (Layout(root).tmp / f"{PUT_PREFIX}planted").symlink_to(target)
    (Layout(root).locks / lock_name(f"{DOWNLOAD_PREFIX}planted")).symlink_to(target)
    with cas.Store.open(root) as store:
        report = store.verify()
    assert report.counts["symlink"] == 2
    assert target.read_bytes() == b"not cas's"
    as_it_was(root, {kept_digest()})


# -- read-only stores ------------------------------------------------------------------------------


def test_read_only_bind_mount_serves_reads(kept_root: Path, tmp_path: Path) -> None:
    """A store on a read-only filesystem serves path, cat and ls; writes fail in one line."""
    view = tmp_path / "read-only"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(kept_root), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        assert run_cas("cat", "kept", root=view).stdout == KEPT
        path = run_cas("path", "kept", root=view).stdout.decode().strip()
        assert Path(path).read_bytes() == KEPT and path.startswith(str(view))
        assert "kept" in run_cas("ls", root=view).stdout.decode()
        with cas.Store.open(view) as store:
            assert store.read_only and store.read_bytes("kept") == KEPT
        one_error_line(run_cas("put", "-", root=view, input=b"new"), 1, "not writable")
        one_error_line(run_cas("tag", "x", "kept", root=view), 1, "not writable")
        one_error_line(run_cas("verify", root=view), 1, "not writable")
    finally:
        subprocess.run(["umount", "-l", str(view)], check=True)
    as_it_was(kept_root, {kept_digest()})


def test_store_without_write_permission_serves_reads(kept_root: Path) -> None:
    """A root whose folders and catalog are read-only to the user serves reads; writes fail in
    one line saying the store is not writable."""
    folders = [kept_root, *[p for p in kept_root.rglob("*") if p.is_dir()]]
    for folder in folders:
        folder.chmod(0o555)
    Layout(kept_root).catalog.chmod(0o444)
    try:
        done = unprivileged(kept_root, "cat", "kept")
        assert done.returncode == 0 and done.stdout == KEPT, done.stderr
        assert unprivileged(kept_root, "ls").returncode == 0
        assert unprivileged(kept_root, "path", "kept").returncode == 0
        one_error_line(unprivileged(kept_root, "rm", "kept"), 1, "not writable")
    finally:
        for folder in folders:
            folder.chmod(0o700)
        Layout(kept_root).catalog.chmod(0o644)
    as_it_was(kept_root, {kept_digest()})


# -- network filesystems (SPEC guarantee 9) -------------------------------------------------------


def fake_mounts(tmp_path: Path, root: Path, kind: str) -> Path:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {root} {kind} rw 0 0\n")
    return mounts


@pytest.mark.parametrize("kind", ["nfs", "nfs4", "cifs", "smb3"])
def test_network_filesystem_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A root on NFS or SMB is refused, saying why and how to override; the override works."""
    root = tmp_path / "store"
    monkeypatch.setattr(cas.storage.opening, "MOUNTS", fake_mounts(tmp_path, root, kind))
    with pytest.raises(cas.CatalogError) as refused:
        cas.Store.open(root)
    message = str(refused.value)
    assert kind in message and "CAS_ALLOW_NETWORK_FS=1" in message and "locking" in message
    assert not root.exists(), "nothing is created on a refused filesystem"
    monkeypatch.setenv("CAS_ALLOW_NETWORK_FS", "1")
    with cas.Store.open(root) as store:
        store.put(KEPT, name="kept")


def test_network_filesystem_refusal_on_the_command_line(tmp_path: Path) -> None:
    """`cas` on an NFS root: one line, exit 1; with CAS_ALLOW_NETWORK_FS=1 it works."""
    root = tmp_path / "store"
    script = ("import sys, pathlib, cas.storage.opening as o; o.MOUNTS = pathlib.Path(sys.argv[1]);"
              " from cas.cli import main; sys.argv = ['cas', *sys.argv[2:]]; main()")
    command = [sys.executable, "-c", script, str(fake_mounts(tmp_path, root, "nfs4")),
               "--root", str(root), "ls"]
    one_error_line(subprocess.run(command, capture_output=True, timeout=60), 1, "nfs4",
                   "CAS_ALLOW_NETWORK_FS")
    allowed = subprocess.run(command, capture_output=True, timeout=60,
                             env={**os.environ, "CAS_ALLOW_NETWORK_FS": "1"})
    assert allowed.returncode == 0, allowed.stderr


def test_filesystem_type_of_a_real_folder(tmp_path: Path) -> None:
    """The real mount table names the filesystem of an existing folder."""
    opening = cas.storage.opening
    assert opening.filesystem_type(tmp_path) not in (None, *opening.NETWORK_FILESYSTEMS)


# -- folder and file modes -------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_new_folders_are_private_and_blobs_read_only(tmp_path: Path, shared: bool) -> None:
    """Whatever the umask, new folders are 0700 (02770 when shared) and blobs 0444."""
    root = tmp_path / "store"
    old = os.umask(0)
    try:
        with cas.Store.open(root, shared=shared) as store:
            path = store.path(store.put(b"mode check"))
            (Layout(root).blobs / "stray").write_bytes(b"")  # verify moves it to quarantine/
            store.verify()
    finally:
        os.umask(old)
    folders = [root, Layout(root).blobs, Layout(root).tmp, Layout(root).locks, path.parent,
               Layout(root).quarantine]
    expected = 0o2770 if shared else 0o700
    assert {oct(f.stat().st_mode & 0o7777) for f in folders} == {oct(expected)}
    assert oct(path.stat().st_mode & 0o7777) == "0o444"
