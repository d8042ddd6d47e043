"""Digest prefixes as refs, through the command line: the 12 hex digits `cas ls` prints work
as REF wherever a digest does; an ambiguous prefix is one line naming the candidates."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cas, run_cas_process
from tests.ops.test_digest_prefixes import SHARED, TWINS, b3


def put(root: Path, tmp_path: Path, content: bytes, *args: str) -> str:
    source = tmp_path / "source"
    source.write_bytes(content)
    result = run_cas("put", str(source), *args, root=root)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split()[0]


def test_the_digests_ls_prints_work_as_refs(root: Path, tmp_path: Path) -> None:
    digest = put(root, tmp_path, b"rows\n")
    other = put(root, tmp_path, b"other rows\n")
    listed = run_cas("ls", root=root).stdout.decode().split()
    short = digest[:12]
    assert short in listed

    path = run_cas("path", short, root=root)
    assert path.returncode == 0, path.stderr
    assert path.stdout == run_cas("path", digest, root=root).stdout
    assert run_cas("cat", short.upper(), root=root).stdout == b"rows\n"
    assert run_cas("tag", "rows", short, root=root).returncode == 0
    assert run_cas("cat", "rows", root=root).stdout == b"rows\n"
    assert run_cas("pin", short, root=root).returncode == 0
    entries = json.loads(run_cas("ls", "--json", root=root).stdout)
    assert [entry["pinned"] for entry in entries if entry["name"] == "rows"] == [True]
    assert run_cas("unpin", short, root=root).returncode == 0
    entries = json.loads(run_cas("ls", "--json", root=root).stdout)
    assert [entry["pinned"] for entry in entries if entry["name"] == "rows"] == [False]

    leased = run_cas_process("lease", short, "--", "true", root=root)
    assert leased.returncode == 0, leased.stderr

    removed = run_cas("rm", short, root=root)
    assert removed.returncode == 0, removed.stderr
    assert [entry["digest"] for entry in json.loads(run_cas("ls", "--json", root=root).stdout)] \
        == [other]
    gone = run_cas("path", short, root=root)
    assert gone.returncode == 3
    assert gone.stderr.decode() == (
        f"cas: error: no name '{short}' and no blob whose digest begins with {short} in the store\n"
    )


def test_an_ambiguous_prefix_is_one_line_naming_the_candidates(root: Path, tmp_path: Path) -> None:
    first, second = (put(root, tmp_path, twin) for twin in TWINS)
    assert (first, second) == (b3(TWINS[0]), b3(TWINS[1]))
    expected = (
        f"cas: error: digest prefix {SHARED} is ambiguous: 2 blobs match"
        f" ({', '.join(sorted([first, second]))}); give more digits\n"
    )
    for args in (["path"], ["cat"], ["tag", "name"], ["pin"], ["unpin"], ["rm"]):
        result = run_cas(*args, SHARED.upper(), root=root)
        assert result.returncode == 2, args
        assert result.stdout == b""
        assert result.stderr.decode() == expected, args
    leased = run_cas_process("lease", SHARED, "--", "true", root=root)
    assert leased.returncode == 2
    assert leased.stderr.decode() == expected
    assert run_cas("cat", first[:9], root=root).stdout == TWINS[0]


def test_a_name_wins_and_short_prefixes_stay_names(root: Path, tmp_path: Path) -> None:
    digest = put(root, tmp_path, b"by digest\n")
    put(root, tmp_path, b"by name\n", "--name", digest[:8])
    assert run_cas("cat", digest[:8], root=root).stdout == b"by name\n"
    assert run_cas("cat", digest[:10], root=root).stdout == b"by digest\n"
    short = run_cas("cat", digest[:7], root=root)
    assert short.returncode == 3
    assert short.stderr.decode() == f"cas: error: no name '{digest[:7]}' in the store\n"
