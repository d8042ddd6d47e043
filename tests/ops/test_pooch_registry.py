"""`cas manifest from-pooch`: pooch registry files made into manifests.

The registry is read as pooch itself reads it: a property test writes registry files in
pooch's format and compares what ``cas.manifest_from_pooch`` makes of them with what pooch's
``Pooch.load_registry`` and ``get_url`` make (the URL as requests would send it). A registry
made by ``pooch.make_registry`` goes round: manifest, ``cas sync`` against a real HTTP server
on 127.0.0.1, every fixture verified, and pooch's own ``fetch`` of the same registry gets the
same bytes. A bad line is one error naming ``file:line``, through the API and the CLI.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.ops import manifest as manifests
from cas.refs import is_digest

from tests.conftest import run_cas
from tests.httpserver import Server, serve

pooch = pytest.importorskip("pooch", reason="the registry tests compare with pooch itself")
requests_utils = pytest.importorskip("requests.utils")

LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve()


def _valid_name(name: str) -> bool:
    return (0 < len(name) <= 255 and name.isprintable() and not is_digest(name)
            and bool(name.strip()))  # fmt: skip


names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1, max_size=30,
).filter(_valid_name)


@st.composite
def checksums(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(["md5", "sha1", "sha256", None]))
    length = LENGTHS[algorithm or "sha256"]
    value = draw(st.text(alphabet="0123456789abcdefABCDEF", min_size=length, max_size=length))
    if algorithm is None:
        return value
    prefix = draw(st.sampled_from([algorithm, algorithm.upper()]))
    return f"{prefix}:{value}"


@st.composite
def registries(draw: st.DrawFn) -> list[str]:
    """Lines of a registry in pooch's format: entries (names quoted as shlex quotes them,
    some with a URL, some names repeated), comments and blank lines, stray spaces."""
    pool = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["entry", "entry", "entry", "comment", "blank"]))
        if kind == "comment":
            lines.append(draw(st.sampled_from(["#", "  # note", "#a b c d"])))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", "   ", "\t"])))
        else:
            words = [shlex.quote(draw(st.sampled_from(pool))), draw(checksums())]
            if draw(st.booleans()):
                path = draw(st.text(alphabet="abc/_.-", min_size=1, max_size=10))
                words.append(shlex.quote(f"https://mirror.example.org/{path}"))
            gap = draw(st.sampled_from([" ", "  ", "\t"]))
            lines.append(draw(st.sampled_from(["", " "])) + gap.join(words))
    return lines


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=registries(), base=st.sampled_from(["https://data.example.org/v1",
                                                 "https://data.example.org/v1/", "http://h"]))
def test_a_registry_reads_as_pooch_reads_it(tmp_path_factory: pytest.TempPathFactory,
                                            lines: list[str], base: str) -> None:
    """Names, hashes (algorithm and value) and URLs, in order, are pooch's; the manifest is
    valid TOML that cas's manifest loader accepts with the same fixtures."""
    folder = tmp_path_factory.mktemp("registry")
    registry = folder / "registry.txt"
    registry.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pup = pooch.create(path=folder / "cache", base_url=base, registry=None)
    pup.load_registry(registry)
    text = cas.manifest_from_pooch(registry, base_url=base)
    table = tomllib.loads(text).get("fixtures", {})
    assert list(table) == list(pup.registry)
    for name, known in pup.registry.items():
        algorithm = pooch.hashes.hash_algorithm(known)
        assert table[name] == {"url": requests_utils.requote_uri(pup.get_url(name)),
                               algorithm: known.split(":")[-1]}
    (folder / "m.toml").write_text(text, encoding="utf-8")
    loaded = manifests.load(folder / "m.toml")
    assert [fixture.name for fixture in loaded] == list(pup.registry)


def _files(folder: Path) -> dict[str, bytes]:
    files = {"a.csv": b"id,value\n1,42\n", "nested/deeper/b.bin": os.urandom(70_000),
             "nested/c.txt": b"", "d-e_f.g.json": b'{"k": 1}'}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return files


def _registry_by_pooch(tmp_path: Path, server: Server) -> tuple[Path, dict[str, bytes], str]:
    """A registry written by pooch.make_registry for a folder served under /data/, plus an
    md5 entry, a sha1 entry with a URL of its own, a comment and a blank line."""
    data = tmp_path / "data"
    files = _files(data)
    registry = tmp_path / "registry.txt"
    pooch.make_registry(str(data), str(registry), recursive=True)
    for relative, body in files.items():
        server.add(f"/{tmp_path.name}/data/{relative}", body)
    extra, mirrored = b"extra\n", b"mirrored\n"
    files["extra.txt"] = extra
    server.add(f"/{tmp_path.name}/data/extra.txt", extra)
    files["elsewhere.txt"] = mirrored
    mirror = server.add(f"/{tmp_path.name}/mirror/e.txt", mirrored)
    with registry.open("a", encoding="utf-8") as out:
        out.write("\n# added by hand\n")
        out.write(f"extra.txt MD5:{hashlib.md5(extra).hexdigest().upper()}\n")
        out.write(f"elsewhere.txt sha1:{hashlib.sha1(mirrored).hexdigest()} {mirror}\n")
    return registry, files, server.url(f"/{tmp_path.name}/data/")


def test_a_pooch_registry_round_trips_through_sync(tmp_path: Path, root: Path,
                                                   server: Server) -> None:
    """API: manifest_from_pooch -> Store.sync fetches and verifies every file; pooch's own
    fetch of the same registry and base URL gets the same bytes."""
    registry, files, base = _registry_by_pooch(tmp_path, server)
    manifest = tmp_path / "fixtures.toml"
    manifest.write_text(cas.manifest_from_pooch(registry, base_url=base), encoding="utf-8")
    with cas.Store.open(root) as store:
        digests = store.sync(manifest)
        assert digests == {name: blake3.blake3(body).hexdigest() for name, body in files.items()}
        for name, body in files.items():
            assert store.read_bytes(name) == body
    pup = pooch.create(path=tmp_path / "pooch-cache", base_url=base, registry=None)
    pup.load_registry(registry)
    for name, body in files.items():
        assert Path(pup.fetch(name)).read_bytes() == body


def test_cli_from_pooch_then_sync(tmp_path: Path, root: Path, server: Server) -> None:
    """CLI: `cas manifest from-pooch REGISTRY --base-url URL -o FILE` writes a manifest that
    tomllib reads and `cas sync` fetches whole; without -o it goes to stdout, the same."""
    registry, files, base = _registry_by_pooch(tmp_path, server)
    manifest = tmp_path / "fixtures.toml"
    written = run_cas("manifest", "from-pooch", str(registry), "--base-url", base,
                      "-o", str(manifest))
    assert written.returncode == 0, written.stderr
    assert written.stdout == b""
    with manifest.open("rb") as file:
        assert set(tomllib.load(file)["fixtures"]) == set(files)
    printed = run_cas("manifest", "from-pooch", str(registry), "--base-url", base)
    assert printed.stdout.decode() == manifest.read_text(encoding="utf-8")
    synced = run_cas("sync", str(manifest), root=root)
    assert synced.returncode == 0, synced.stderr
    for name, body in files.items():
        assert Path(run_cas("path", name, root=root).stdout.decode().strip()).read_bytes() == body


SHA = "0" * 64


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.txt", "expected 'name hash [url]' (2 or 3 words), got 1"),
        (f"a.txt {SHA} http://x/a extra", "got 4"),
        (f"a.txt {SHA} # a comment after an entry", "got 8"),
        ("'a.txt " + SHA, "cannot split the line: No closing quotation"),
        ("a.txt sha512:" + "0" * 128, "hash algorithm 'sha512' is not one cas verifies"),
        ("a.txt xxh128:" + "0" * 32, "hash algorithm 'xxh128'"),
        ("a.txt md5:" + "0" * 31, "md5 '" + "0" * 31 + "' is not 32 hexadecimal digits"),
        ("a.txt sha1:" + "z" * 40, "is not 40 hexadecimal digits"),
        ("a.txt " + "0" * 40, "sha256 '" + "0" * 40 + "' is not 64"),
        (f"{'a' * 64} {SHA}", "reserved for digests"),
        (f"a.txt {SHA} ftp://x/a.txt", "is not an http or https URL"),
        (f"a.txt {SHA} ''", "'' is not an http or https URL"),
    ],
)
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path: Path, line: str,
                                                      message: str) -> None:
    """API and CLI: a bad registry line is a UsageError (exit 2) naming file:line and the
    problem, in one line, and no manifest is written."""
    registry = tmp_path / "registry.txt"
    registry.write_text(f"# first\nok.txt {SHA}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(cas.UsageError) as caught:
        cas.manifest_from_pooch(registry, base_url="https://example.org/")
    assert str(caught.value).startswith(f"{registry}:4: ") and message in str(caught.value)
    output = tmp_path / "m.toml"
    result = run_cas("manifest", "from-pooch", str(registry), "--base-url",
                     "https://example.org/", "-o", str(output))
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cas: error: {registry}:4: ")
    assert message in lines[0]
    assert not output.exists() and list(tmp_path.iterdir()) == [registry]


def test_registry_problems_of_the_whole_file(tmp_path: Path) -> None:
    """A missing registry is NotFound (exit 3); a name with no URL and no base URL, and a base
    URL that is not http(s) (pooch's doi:), are one-line usage errors (exit 2)."""
    with pytest.raises(cas.NotFound):
        cas.manifest_from_pooch(tmp_path / "nope.txt", base_url="https://example.org/")
    assert run_cas("manifest", "from-pooch", str(tmp_path / "nope.txt")).returncode == 3
    registry = tmp_path / "registry.txt"
    registry.write_text(f"a.txt {SHA}\n", encoding="utf-8")
    with pytest.raises(cas.UsageError, match=r"registry.txt:1: 'a.txt' has no URL of its own"):
        cas.manifest_from_pooch(registry)
    result = run_cas("manifest", "from-pooch", str(registry), "--base-url", "doi:10.5281/z.1")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("cas: error: base URL: 'doi:10.5281/z.1' is not")


def test_a_registry_of_only_comments_is_an_empty_manifest(tmp_path: Path) -> None:
    """Comments and blank lines alone make a manifest with no fixtures, which loads."""
    registry = tmp_path / "registry.txt"
    registry.write_text("# nothing yet\n\n   \n", encoding="utf-8")
    text = cas.manifest_from_pooch(registry, base_url="https://example.org/")
    (tmp_path / "m.toml").write_text(text, encoding="utf-8")
    assert manifests.load(tmp_path / "m.toml") == []
