"""Trees across processes: several putting and showing one tree at once, and a builder killed
in the middle of a view."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cas
from cas.storage.folder import remove_tree
from cas.storage.layout import VIEW_PREFIX, Layout

from tests.ops.test_trees import contents, make_folder

pytestmark = pytest.mark.slow

_PUT_AND_SHOW = """
import os, sys, cas
with cas.Store.open(sys.argv[1]) as store:
    digest = store.put(sys.argv[2], name="shared/tree")
    shown = store.path("shared/tree")
    count = sum(len(files) for _, _, files in os.walk(shown))
    print(digest, shown, count)
"""


def test_processes_putting_and_showing_one_tree_agree(tmp_path: Path) -> None:
    """Four processes put the same folder and show it at once: one digest, one complete view
    for all, nothing left in tmp/, and verify finds nothing wrong."""
    files = {f"d{i % 7}/f{i}.txt": f"file {i % 50}".encode() for i in range(400)}
    source = make_folder(tmp_path / "src", files, {"d0/f0.txt"}, ("empty",))
    root = tmp_path / "store"
    cas.Store.open(root).close()
    children = [subprocess.Popen([sys.executable, "-c", _PUT_AND_SHOW, str(root), str(source)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(4)]
    answers = set()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
        answers.add(out.decode().strip())
    assert len(answers) == 1
    digest, shown, count = answers.pop().split()
    assert int(count) == 400
    assert contents(Path(shown)) == contents(source)
    assert os.listdir(Layout(root).views_of(digest)) == ["tree"]
    assert [name for name in os.listdir(Layout(root).tmp) if name != "locks"] == []
    with cas.Store.open(root) as store:
        assert not store.verify(full=True).findings


_SHOW = """
import sys, cas
with cas.Store.open(sys.argv[1]) as store:
    store.path("big")
"""


def test_a_builder_killed_mid_view_leaves_only_debris(tmp_path: Path) -> None:
    """SIGKILL while a view is laid out: no half view stands in views/ (it is built in tmp/
    and renamed whole); the leftovers are debris that gc removes; the view comes back whole."""
    root = tmp_path / "store"
    source = make_folder(tmp_path / "src", {f"p{i % 20}/f{i}": b"%d" % i for i in range(3000)})
    with cas.Store.open(root) as store:
        digest = store.put(source, name="big")
    view = Layout(root).view(digest, "big")
    tmp = Layout(root).tmp
    killed = False
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", _SHOW, str(root)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            if any(name.startswith(VIEW_PREFIX) for name in os.listdir(tmp)):
                child.send_signal(signal.SIGKILL)
                killed = True
                break
        child.wait()
        if killed and child.returncode == -signal.SIGKILL:
            break
        killed = False
        if view.exists():  # finished before the kill: try again
            fd = os.open(view.parent, os.O_RDONLY)
            remove_tree(view.name, fd)
            os.close(fd)
    assert killed, "the builder always finished before it could be killed"
    assert not view.exists() or len(contents(view)[0]) == 3000  # never half a view
    debris = [name for name in os.listdir(tmp) if name.startswith(VIEW_PREFIX)]
    assert debris
    with cas.Store.open(root) as store:
        assert store.stats().debris_files >= 1
        store.gc()
        assert not [name for name in os.listdir(tmp) if name.startswith(VIEW_PREFIX)]
        assert contents(store.path("big")) == contents(source)
        assert not store.verify().damaged
