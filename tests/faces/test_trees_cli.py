"""Trees and named views through the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_cas
from tests.ops.test_trees import contents, make_folder


def test_put_dir_then_path_ls_and_cat(root: Path, tmp_path: Path) -> None:
    """`cas put DIR --name N` stores a tree; `cas path N` prints its folder; `cas ls` shows
    one entry marked as a tree; `cas cat N` is a one-line usage error."""
    source = make_folder(tmp_path / "model", {"config.json": b"{}", "w/0.bin": b"\0" * 64},
                         {"config.json"})
    put = run_cas("put", str(source), "--name", "hf/tiny-model", root=root)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.decode().split()[0]
    shown = run_cas("path", "hf/tiny-model", root=root)
    folder = Path(shown.stdout.decode().strip())
    assert folder.name == "tiny-model" and folder.parent.name == digest
    assert contents(folder) == contents(source)
    listed = run_cas("ls", root=root)
    (line,) = listed.stdout.decode().splitlines()
    assert line.endswith("hf/tiny-model/  (tree, 2 files)") and line.startswith(digest[:12])
    documents = json.loads(run_cas("ls", "--json", root=root).stdout)
    assert [(d["name"], d["kind"], d["files"], d["size"]) for d in documents] == [
        ("hf/tiny-model", "tree", 2, 66)]
    cat = run_cas("cat", "hf/tiny-model", root=root)
    assert cat.returncode == 2 and cat.stderr.decode().count("\n") == 1
    assert "is a tree" in cat.stderr.decode()
    stats = json.loads(run_cas("stats", "--json", root=root).stdout)
    assert stats["trees"] == 1 and stats["views"]["count"] == 1
    assert stats["views"]["copied_bytes"] == 2  # the executable config.json is a copy


def test_put_dir_refuses_a_link_in_one_line(root: Path, tmp_path: Path) -> None:
    source = make_folder(tmp_path / "src", {"a.txt": b"a"})
    os.symlink("/etc/passwd", source / "passwd")
    put = run_cas("put", str(source), "--name", "t", root=root)
    assert put.returncode == 2
    error = put.stderr.decode()
    assert error.count("\n") == 1 and "'passwd' is a symbolic link" in error
    assert run_cas("ls", root=root).stdout == b""


def test_verify_on_the_cli_reports_a_broken_tree(root: Path, tmp_path: Path) -> None:
    """A tree missing a member is damage: `cas verify` exits 4 naming the tree."""
    source = make_folder(tmp_path / "src", {"a": b"aaa", "b": b"bbb"})
    run_cas("put", str(source), "--name", "t", root=root)
    member = run_cas("put", str(source / "a"), root=root).stdout.decode().split()[0]
    assert run_cas("rm", member, root=root).returncode != 0  # held by the tree
    assert run_cas("rm", "--force", member, root=root).returncode == 0
    verify = run_cas("verify", root=root)
    assert verify.returncode == 4
    assert "tree" in verify.stdout.decode() + verify.stderr.decode()
