"""quarantine/ is counted in stats and cleaned by gc after a documented age.

verify moves damaged and stray entries there for a person to look at; cleanup removes those that
have been there ``QUARANTINE_MAX_AGE`` (by the time they were moved there, their ctime), and
never follows a link planted among them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cas
import cas.ops.cleanup
from cas.storage.layout import Layout

from tests.conftest import run_cas

DAMAGED = b"these bytes are not what the name says"


def _quarantine_some(store: cas.Store, root: Path) -> int:
    """Put a blob, edit it in place, plant a stray folder, and verify; return the bytes that
    went to quarantine/."""
    digest = store.put(b"stored right, then edited in place!!!!")
    path = Layout(root).blob(digest)
    path.chmod(0o644)
    path.write_bytes(DAMAGED)
    stray = Layout(root).blobs / "not-a-shard"
    stray.mkdir()
    (stray / "inside").write_bytes(b"12345")
    store.verify()
    assert len(list(Layout(root).quarantine.iterdir())) == 2
    return len(DAMAGED) + 5


def test_stats_count_quarantined_files_and_bytes(store: cas.Store, root: Path) -> None:
    assert (store.stats().quarantine_files, store.stats().quarantine_bytes) == (0, 0)
    size = _quarantine_some(store, root)
    stats = store.stats()
    assert (stats.quarantine_files, stats.quarantine_bytes) == (2, size)
    assert stats.as_dict()["quarantine"] == {"files": 2, "bytes": size}
    assert "cas_quarantine_files 2" in stats.prometheus()
    assert f"cas_quarantine_bytes {size}" in stats.prometheus()
    store.close()
    shown = run_cas("stats", "--json", root=root)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["quarantine"] == {"files": 2, "bytes": size}
    text = run_cas("stats", root=root)
    assert "quarantine" in text.stdout.decode()


def test_gc_keeps_recent_quarantine_and_removes_old(
    store: cas.Store, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _quarantine_some(store, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep-me").write_bytes(b"not the store's")
    os.symlink(outside, Layout(root).quarantine / "planted-link")
    store.gc()
    assert len(list(Layout(root).quarantine.iterdir())) == 3  # younger than the age: kept
    monkeypatch.setattr(cas.ops.cleanup, "QUARANTINE_MAX_AGE", 0.0)
    store.gc()
    assert list(Layout(root).quarantine.iterdir()) == []
    assert (outside / "keep-me").read_bytes() == b"not the store's"  # never followed
    assert (store.stats().quarantine_files, store.stats().quarantine_bytes) == (0, 0)


def test_a_planted_quarantine_link_is_neither_counted_through_nor_followed(
    store: cas.Store, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep-me").write_bytes(b"not the store's")
    os.symlink(outside, Layout(root).quarantine)
    monkeypatch.setattr(cas.ops.cleanup, "QUARANTINE_MAX_AGE", 0.0)
    stats = store.stats()
    assert (stats.quarantine_files, stats.quarantine_bytes) == (0, 0)
    store.gc()
    assert (outside / "keep-me").read_bytes() == b"not the store's"


def test_the_age_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert "quarantine/" in text and "30 days" in text
    assert cas.ops.cleanup.QUARANTINE_MAX_AGE == 30 * 86400
