"""archives: fetch and unpack of a 100 MiB tar.gz from a local HTTP server, against pooch.

A tree of 400 files of 256 KiB (random bytes, as images and other compressed data are) is
packed as a tar.gz of about 100 MiB and served by Python's threaded HTTP server on 127.0.0.1,
started by the suite. Contenders, interleaved round by round, each into a fresh folder:
``Store.fetch(url, sha256=…, unpack="tar.gz")`` into a new store (download, verify, unpack
safely within bounds, store every file as a blob and the tree's record) and
``pooch.retrieve(url, known_hash=…, processor=pooch.Untar())`` (download, hash, extract).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import tarfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness import Context, MiB, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path

import cas

FILES = 400
FILE_SIZE = 256 * 1024
QUICK_FILES = 40
ROUNDS = 5


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def make_archive(path: Path, files: int) -> None:
    """A tar.gz of ``files`` random files in a few folders (compression level 1: random
    bytes do not shrink, and the level only changes how long this takes)."""
    import gzip

    with gzip.open(path, "wb", compresslevel=1) as packed, \
            tarfile.open(fileobj=packed, mode="w") as archive:  # type: ignore[call-overload]
        for index in range(files):
            data = os.urandom(FILE_SIZE)
            info = tarfile.TarInfo(f"dataset/part-{index % 8}/file-{index:04}.bin")
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


def run(ctx: Context) -> SuiteResult:
    import pooch  # type: ignore[import-untyped]

    files = QUICK_FILES if ctx.quick else FILES
    rounds = ctx.rounds_or(ROUNDS)
    folder = ctx.scratch / "archives"
    remove_path(folder)
    (folder / "www").mkdir(parents=True)
    source = folder / "www" / "data.tar.gz"
    make_archive(source, files)
    size = source.stat().st_size
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    handler = functools.partial(_Quiet, directory=str(folder / "www"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data.tar.gz"
    out = folder / "out"
    store_root = folder / "store"
    try:

        def cas_fetch_unpack() -> float:
            with cas.Store.open(store_root) as store:
                for _ in range(3):  # what the last round stored: the tree, then its files
                    for entry in store.entries():
                        with contextlib.suppress(cas.NotFound):
                            store.remove(entry.name or entry.digest, force=True)
                assert not store.entries()
                start = time.perf_counter()
                store.fetch(url, sha256=sha256, unpack="tar.gz", name="dataset")
                elapsed = time.perf_counter() - start
            return elapsed

        def cas_fresh_store() -> float:
            remove_path(out)
            with cas.Store.open(out) as store:
                start = time.perf_counter()
                store.fetch(url, sha256=sha256, unpack="tar.gz", name="dataset")
                elapsed = time.perf_counter() - start
            return elapsed

        def pooch_untar() -> float:
            remove_path(out)
            out.mkdir()
            start = time.perf_counter()
            pooch.retrieve(url, known_hash=f"sha256:{sha256}", path=out, progressbar=False,
                           processor=pooch.Untar())
            return time.perf_counter() - start

        contenders = {"cas fetch --unpack": cas_fetch_unpack, "pooch Untar": pooch_untar,
                      "cas, new store": cas_fresh_store}
        ctx.log(f"archives: {rounds} rounds of a {size / MiB:.0f} MiB tar.gz, {files} files")
        samples = interleave(contenders, rounds, ctx.log)
    finally:
        server.shutdown()
        server.server_close()
        remove_path(folder)
    seconds = {name: median(values) for name, values in samples.items()}
    rows = [
        Row(f"fetch + unpack of a {size / MiB:.0f} MiB tar.gz ({files} files), wall time", "s",
            seconds["cas fetch --unpack"], peer="pooch.retrieve, processor=pooch.Untar()",
            peer_value=seconds["pooch Untar"], target=Target("<=", 1.0),
            cas_samples=tuple(samples["cas fetch --unpack"]),
            peer_samples=tuple(samples["pooch Untar"])),
        Row(f"the same into a new store (its first {files} blobs make its shard folders)", "s",
            seconds["cas, new store"], peer="pooch.retrieve, processor=pooch.Untar()",
            peer_value=seconds["pooch Untar"],
            cas_samples=tuple(samples["cas, new store"]),
            peer_samples=tuple(samples["pooch Untar"])),
    ]
    notes = [
        "Python's ThreadingHTTPServer on 127.0.0.1 serves the archive (no Range); the archive "
        "is in the page cache. pooch unpacks into a new folder each round; cas into a store in "
        "use, emptied before each round (untimed), so every byte is downloaded, unpacked and "
        "stored again, and, in the second row, into a new store, which first makes and syncs "
        "the shard folders `blobs/ab/` its blobs go to (up to 256, once in a store's life).",
        "cas verifies the archive's SHA-256 and BLAKE3, unpacks with its bounds and path "
        "checks, and stores each file as a blob (fsynced) and the tree's record; pooch checks "
        "the SHA-256 and calls tarfile's extractall.",
    ]
    return SuiteResult(rows, notes)
