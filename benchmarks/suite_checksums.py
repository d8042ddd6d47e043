"""checksums: what expecting an MD5, SHA-1 or SHA-256 costs a fetch, against pooch doing the same.

One file served by nginx on 127.0.0.1 (suite_fetch.Nginx). Contenders, interleaved round by
round, each into a fresh store or folder: ``Store.fetch`` expecting the BLAKE3 only (the
floor: BLAKE3 is always computed), expecting only the MD5, expecting SHA-256, SHA-1 and MD5 at
once (all computed in the one hashing pass, beside BLAKE3), and ``pooch.retrieve`` with the
same MD5 as ``known_hash`` (pooch hashes the file after downloading it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from harness import Context, MiB, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path
from suite_fetch import Nginx
from suite_put_large import make_input, read_through

import cas

SIZE = 256 * MiB
QUICK_SIZE = 16 * MiB
ROUNDS = 5


def _checksums(path: Path) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256")}
    with open(path, "rb") as source:
        while chunk := source.read(8 * MiB):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def run(ctx: Context) -> SuiteResult:
    if shutil.which("nginx") is None:
        return SuiteResult([], ["nginx is not installed (`apt-get install -y nginx`): skipped."])
    size = QUICK_SIZE if ctx.quick else SIZE
    rounds = ctx.rounds_or(ROUNDS)
    folder = ctx.scratch / "checksums"
    remove_path(folder)
    folder.mkdir(parents=True)
    source = ctx.scratch / f"input-{size}.bin"
    make_input(source, size)
    server = Nginx(folder)
    os.link(source, folder / "www" / "data.bin")
    with cas.Store.open(folder / "hash-store") as store:
        blake3 = store.put(source)
    remove_path(folder / "hash-store")
    sums = _checksums(source)
    read_through(source)
    out = folder / "out"

    with server:
        url = server.url("data.bin")

        def fetch(**expected: str) -> float:
            remove_path(out)
            with cas.Store.open(out) as store:
                start = time.perf_counter()
                assert store.fetch(url, **expected) == blake3
                return time.perf_counter() - start

        def pooch_retrieve() -> float:
            import pooch  # type: ignore[import-untyped]

            remove_path(out)
            out.mkdir()
            start = time.perf_counter()
            pooch.retrieve(url, known_hash=f"md5:{sums['md5']}", path=out, progressbar=False)
            return time.perf_counter() - start

        contenders = {
            "blake3": lambda: fetch(blake3=blake3),
            "md5": lambda: fetch(md5=sums["md5"]),
            "all": lambda: fetch(sha256=sums["sha256"], sha1=sums["sha1"], md5=sums["md5"]),
            "pooch md5": pooch_retrieve,
        }
        ctx.log(f"checksums: {rounds} rounds of {size // MiB} MiB over loopback")
        samples = interleave(contenders, rounds, ctx.log)
        remove_path(out)

    seconds = {name: median(values) for name, values in samples.items()}
    label = f"{size // MiB} MiB"
    rows = [
        Row(f"fetch of {label} expecting an MD5, wall time", "s", seconds["md5"],
            peer="pooch.retrieve, known MD5", peer_value=seconds["pooch md5"],
            target=Target("<=", 1.0), cas_samples=tuple(samples["md5"]),
            peer_samples=tuple(samples["pooch md5"]),
            note=f"cas {size / MiB / seconds['md5']:,.0f} MiB/s"),
        Row(f"fetch of {label} expecting an MD5, wall time", "s", seconds["md5"],
            peer="cas fetch expecting the BLAKE3 only", peer_value=seconds["blake3"],
            cas_samples=tuple(samples["md5"]), peer_samples=tuple(samples["blake3"])),
        Row(f"fetch of {label} expecting SHA-256, SHA-1 and MD5, wall time", "s",
            seconds["all"], peer="cas fetch expecting the BLAKE3 only",
            peer_value=seconds["blake3"], cas_samples=tuple(samples["all"]),
            peer_samples=tuple(samples["blake3"]),
            note=f"cas {size / MiB / seconds['all']:,.0f} MiB/s"),
    ]
    notes = [
        "nginx from Debian, `sendfile on`, one worker, on 127.0.0.1; each contender fetches "
        "into a new store (pooch into a new folder) each round; the input is in the page cache.",
        "cas computes every expected checksum in the pass that computes BLAKE3, in one thread "
        "beside the one receiving, so their costs add up there; pooch downloads, then reads "
        "the file again to hash it.",
    ]
    return SuiteResult(rows, notes)
