"""transfer: downloads from a throttled origin, where one connection is not enough.

nginx (Debian's package) is started by the suite on 127.0.0.1 with a configuration of its own in
the scratch folder (its own pid file, logs and temporary folders, so it runs without root too),
serving generated files with ``limit_rate`` per connection, as CDNs, S3 and model hubs cap each
TCP flow. Contenders, interleaved round by round, each writing a new file (cas a new store):

- one large file: ``Store.fetch`` with the expected BLAKE3, ``curl -o``, ``aria2c -x8 -s8 -k1M``
  (Debian's ``aria2``), and ``hf_transfer.download`` with 8 connections (PyPI ``hf-transfer``,
  what huggingface_hub uses for fast downloads);
- a manifest of fixtures of geometrically spread sizes: ``Store.sync`` (the manifest has each
  fixture's BLAKE3 and size), ``Store.sync`` of the same manifest without sizes and in ascending
  size order (the worst order for a sync that cannot see sizes), and ``aria2c -i LIST -j JOBS
  -x8 -s8 -k1M`` given the same URLs;
- the peak anonymous memory (RssAnon, sampled every 10 ms from /proc) of ``cas fetch`` and of
  ``cas sync`` as processes.

A missing aria2c or hf_transfer drops its rows with a note; a missing nginx skips the suite.
Settings (``run.py transfer --set KEY=VALUE``): ``size`` (512MiB), ``rate`` (nginx's
``limit_rate``, 40m), ``fixtures`` (20), ``smallest`` (1MiB), ``largest`` (500MiB), ``jobs``
(cas's default sync jobs, also aria2c's ``-j``), ``connections`` (8: aria2c's ``-x``/``-s`` and
hf_transfer's ``max_files``), ``chunk`` (hf_transfer's ``chunk_size``, 10MiB, as
huggingface_hub sets it). ``--rounds`` applies to both parts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import Context, MiB, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path
from suite_fetch import Nginx
from suite_put_large import make_input, read_through

import cas
from cas.values import SYNC_JOBS, parse_size

ROUNDS = 3  # a round is about 45 s of transfers at 40m per connection with one cas connection

def format_size(size: int) -> str:
    """``size`` for reading: ``512 MiB``, ``1.4 MiB``, ``256 KiB``."""
    if size >= MiB:
        return f"{size // MiB} MiB" if size % MiB == 0 else f"{size / MiB:.1f} MiB"
    return f"{size / 1024:.0f} KiB"


def geometric_sizes(count: int, smallest: int, largest: int) -> list[int]:
    """``count`` sizes from ``smallest`` to ``largest``, each the same factor above the last."""
    if count == 1:
        return [largest]
    factor = (largest / smallest) ** (1 / (count - 1))
    return [round(smallest * factor**index) for index in range(count)]


def sample_anon(command: Sequence[str]) -> tuple[float, int, int]:
    """Run ``command``; return its wall time, its peak RssAnon and its last VmHWM seen (bytes),
    read from /proc/PID/status every 10 ms (a shorter spike can be missed)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = hwm = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status", encoding="ascii") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            peak = max(peak, int(fields["RssAnon"].split()[0]) * 1024)
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass  # exiting, or a zombie already
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    _, err = child.communicate()
    if child.returncode:
        raise RuntimeError(f"{command[0]} failed ({child.returncode}): {err.decode()[-2000:]}")
    return seconds, peak, hwm


def _cas_command(ctx: Context) -> list[str]:
    script = Path(ctx.python).parent / "cas"
    return [str(script)] if script.is_file() else [ctx.python, "-m", "cas"]


def _manifest(path: Path, entries: Sequence[tuple[str, str, str, int]], sizes: bool) -> None:
    """A cas manifest of (name, url, blake3, size), with or without ``size`` keys."""
    path.write_text("".join(
        f'[fixtures."{name}"]\nurl = "{url}"\nblake3 = "{digest}"\n'
        + (f"size = {size}\n" if sizes else "")
        for name, url, digest, size in entries
    ))  # fmt: skip


def run(ctx: Context) -> SuiteResult:
    if shutil.which("nginx") is None:
        return SuiteResult([], ["nginx is not installed (`apt-get install -y nginx`): skipped."])
    quick = ctx.quick
    size = parse_size(ctx.option("size", "16MiB" if quick else "512MiB"))
    rate = ctx.option("rate", "40m")
    count = int(ctx.option("fixtures", "6" if quick else "20"))
    smallest = parse_size(ctx.option("smallest", "256KiB" if quick else "1MiB"))
    largest = parse_size(ctx.option("largest", "8MiB" if quick else "500MiB"))
    jobs = int(ctx.option("jobs", str(SYNC_JOBS)))
    connections = int(ctx.option("connections", "8"))
    chunk = parse_size(ctx.option("chunk", "10MiB"))
    rounds = ctx.rounds_or(ROUNDS, quick_default=1)
    notes: list[str] = []
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        notes.append("aria2c is not installed (`apt-get install -y aria2`): its rows are skipped.")
    try:
        import hf_transfer  # type: ignore[import-not-found]
    except ImportError:
        hf_transfer = None
        notes.append("hf_transfer is not installed (`pip install hf-transfer`, in the bench "
                     "extra): its row is skipped.")

    folder = ctx.scratch / "transfer"
    remove_path(folder)
    folder.mkdir(parents=True)
    server = Nginx(folder, rate=rate, workers="auto")
    www = folder / "www"
    inputs = ctx.scratch / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    ctx.log(f"transfer: making {format_size(size)} and {count} fixtures "
            f"({format_size(smallest)} to {format_size(largest)})")
    source = inputs / f"large-{size}.bin"
    make_input(source, size)
    os.link(source, www / "large.bin")
    fixture_sizes = geometric_sizes(count, smallest, largest)
    fixtures: list[tuple[str, int]] = []
    for index, fixture_size in enumerate(fixture_sizes):
        name = f"f{index:02}-{fixture_size}.bin"
        make_input(inputs / name, fixture_size)
        os.link(inputs / name, www / name)
        fixtures.append((name, fixture_size))
    with cas.Store.open(folder / "hash-store") as store:  # expected digests, computed once
        blake3 = store.put(source)
        digests = [store.put(inputs / name) for name, _ in fixtures]
    remove_path(folder / "hash-store")
    for path in [source, *(inputs / name for name, _ in fixtures)]:
        read_through(path)
    out = folder / "out"
    cas_cli = _cas_command(ctx)

    def fresh() -> Path:
        remove_path(out)
        out.mkdir()
        return out

    def checked(path: Path, expected: int) -> None:
        if path.stat().st_size != expected:
            raise RuntimeError(f"{path} holds {path.stat().st_size} bytes, not {expected}")

    with server:
        url = server.url("large.bin")
        entries = [(name, server.url(name), digest, fixture_size)
                   for (name, fixture_size), digest in zip(fixtures, digests, strict=True)]
        sized = folder / "fixtures.toml"
        _manifest(sized, sorted(entries, key=lambda entry: entry[0]), sizes=True)
        unsized = folder / "fixtures-unsized.toml"
        _manifest(unsized, sorted(entries, key=lambda entry: entry[3]), sizes=False)
        listing = folder / "aria2.list"
        listing.write_text("".join(f"{u}\n  out={name}\n" for name, u, _, _ in entries))
        aria2_flags = [f"-x{connections}", f"-s{connections}", "-k1M", "-q",
                       "--allow-overwrite=true", "--auto-file-renaming=false"]

        def timed(action: Callable[[], object]) -> float:
            start = time.perf_counter()
            action()
            return time.perf_counter() - start

        def cas_fetch() -> float:
            with cas.Store.open(fresh() / "store") as store:
                got: list[str] = []
                seconds = timed(lambda: got.append(store.fetch(url, blake3=blake3)))
            assert got == [blake3]
            return seconds

        def curl() -> float:
            target = fresh() / "large.bin"
            seconds = timed(lambda: subprocess.run(["curl", "-sSf", "-o", str(target), url],
                                                   check=True))
            checked(target, size)
            return seconds

        def aria2_one() -> float:
            assert aria2c is not None
            folder_out = fresh()
            seconds = timed(lambda: subprocess.run(
                [aria2c, *aria2_flags, "-d", str(folder_out), "-o", "large.bin", url],
                check=True))  # fmt: skip
            checked(folder_out / "large.bin", size)
            return seconds

        def hf_one() -> float:
            target = fresh() / "large.bin"
            seconds = timed(lambda: hf_transfer.download(
                url, str(target), max_files=connections, chunk_size=chunk))  # fmt: skip
            checked(target, size)
            return seconds

        def cas_sync(manifest: Path) -> Callable[[], float]:
            def measure() -> float:
                with cas.Store.open(fresh() / "store") as store:
                    found: dict[str, str] = {}
                    seconds = timed(lambda: found.update(store.sync(manifest, jobs=jobs)))
                assert sorted(found.values()) == sorted(digests)
                return seconds
            return measure

        def aria2_list() -> float:
            assert aria2c is not None
            folder_out = fresh()
            seconds = timed(lambda: subprocess.run(
                [aria2c, *aria2_flags, f"-j{jobs}", "-d", str(folder_out), "-i", str(listing)],
                check=True))  # fmt: skip
            for name, fixture_size in fixtures:
                checked(folder_out / name, fixture_size)
            return seconds

        one_file: dict[str, Callable[[], float]] = {"cas fetch": cas_fetch, "curl -o": curl}
        if aria2c:
            one_file["aria2c"] = aria2_one
        if hf_transfer is not None:
            one_file["hf_transfer"] = hf_one
        ctx.log(f"transfer: {rounds} rounds of {format_size(size)} at {rate} per connection")
        single = interleave(one_file, rounds, ctx.log, warmup=False)

        many: dict[str, Callable[[], float]] = {
            "cas sync": cas_sync(sized), "cas sync, no sizes": cas_sync(unsized)}
        if aria2c:
            many["aria2c -i"] = aria2_list
        ctx.log(f"transfer: {rounds} rounds of a sync of {count} fixtures")
        batch = interleave(many, rounds, ctx.log, warmup=False)

        ctx.log("transfer: peak anonymous memory of `cas fetch` and `cas sync`")
        store_root = str(fresh() / "store")
        fetch_seconds, fetch_anon, fetch_hwm = sample_anon(
            [*cas_cli, "--root", store_root, "fetch", url, "--blake3", blake3])
        store_root = str(fresh() / "store")
        sync_seconds, sync_anon, sync_hwm = sample_anon(
            [*cas_cli, "--root", store_root, "sync", str(sized), "--jobs", str(jobs)])
        remove_path(out)
    remove_path(folder)

    def row(metric: str, samples: dict[str, list[float]], who: str, peer: str, label: str,
            bound: float | None, note: str = "") -> Row | None:
        if peer not in samples:
            return None
        return Row(metric, "s", median(samples[who]), peer=label,
                   peer_value=median(samples[peer]),
                   target=Target("<=", bound) if bound is not None else None,
                   cas_samples=tuple(samples[who]), peer_samples=tuple(samples[peer]),
                   subject=who, note=note)

    large = f"{format_size(size)} from an origin capped at {rate}/connection, wall time"
    total = format_size(sum(fixture_sizes))
    sync_metric = (f"sync of {count} fixtures, {format_size(smallest)} to {format_size(largest)}"
                   f" ({total}), capped at {rate}/connection, wall time")
    flags = f"-x{connections} -s{connections} -k1M"
    candidates = [
        row(large, single, "cas fetch", "aria2c", f"aria2c {flags}", 1.0),
        row(large, single, "cas fetch", "hf_transfer",
            f"hf_transfer.download, max_files={connections}, chunk_size={format_size(chunk)}",
            1.0),
        row(large, single, "cas fetch", "curl -o", "curl -o", None),
        row(sync_metric, batch, "cas sync", "aria2c -i", f"aria2c -i LIST -j{jobs} {flags}",
            1.2, note=f"cas sync with jobs={jobs}; the manifest gives each fixture's size"),
        row(sync_metric + ", manifest without sizes, smallest first", batch,
            "cas sync, no sizes", "aria2c -i", f"aria2c -i LIST -j{jobs} {flags}", None),
    ]
    rows = [candidate for candidate in candidates if candidate is not None]
    if "aria2c -i" not in batch:
        rows.append(Row(sync_metric, "s", median(batch["cas sync"]),
                        cas_samples=tuple(batch["cas sync"]), subject="cas sync"))
    rows += [
        Row(f"peak anonymous memory (RssAnon) of `cas fetch` of {format_size(size)}", "bytes",
            fetch_anon, target=Target("<", 100 * MiB, on="value"),
            note=f"{fetch_seconds:.1f} s as a process; VmHWM (file pages too) "
                 f"{fetch_hwm / MiB:.1f} MiB"),
        Row(f"peak anonymous memory (RssAnon) of `cas sync` of {count} fixtures", "bytes",
            sync_anon,
            note=f"{sync_seconds:.1f} s as a process; VmHWM {sync_hwm / MiB:.1f} MiB"),
    ]
    notes += [
        f"nginx from Debian on 127.0.0.1, `limit_rate {rate}` per connection, `sendfile on`, "
        "a worker per core; the inputs are in the page cache; every contender writes new files "
        "(cas a new store) each round, and its output is checked (cas: digests; the others: "
        "sizes).",
        "cas runs in this process (`Store.fetch` with the expected BLAKE3, `Store.sync`): it "
        "hashes while receiving and verifies before publishing; curl and aria2c are processes "
        "and verify nothing; hf_transfer runs in this process and verifies nothing.",
        f"The fixtures: {', '.join(format_size(s) for s in fixture_sizes)}.",
        "Memory: RssAnon (anonymous pages: heap, buffers; not the page cache of files written "
        "or mapped) of the `cas` process, sampled every 10 ms from /proc/PID/status.",
    ]
    return SuiteResult(rows, notes)
