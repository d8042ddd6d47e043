"""s3-pull: ``Store.pull`` of a 1 GiB blob from a local S3 server against boto3's ``download_file``.

The server is moto in server mode, in a process of its own (so that it does not share the
client's GIL), on 127.0.0.1. The blob is put into a store and pushed with ``Store.push``; then,
round by round and in alternating order, a fresh store pulls it (streamed into staging, hashed
as it arrives, fsynced, verified, published and recorded) and boto3 downloads the same object to
a plain file (written, renamed, neither hashed nor fsynced). Both use the same TransferConfig.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import boto3
from boto3.s3.transfer import TransferConfig
from harness import Context, GiB, MiB, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path
from suite_put_large import make_input, read_through

import cas
from cas.transfer.s3 import Remote, Transfer

SIZE = GiB
QUICK_SIZE = 64 * MiB
#: moto, a Python server, makes single rounds of either contender vary from 3.1 to 4.8 s: more
#: rounds keep the median steady.
ROUNDS = 9
BUCKET = "cas-bench"
PREFIX = "bench"
#: moto answers every ranged GET by reading the whole object and slicing it
#: (moto/s3/responses.py ``_handle_range_header`` on ``key.value``): with boto3's 8 MiB parts a
#: 1 GiB download costs moto 128 GiB of reads. Large parts keep the server out of the way; both
#: contenders use them.
PART_SIZE = 256 * MiB
QUICK_PART_SIZE = 16 * MiB
CONCURRENCY = 4
#: Parts of the upload (setup, not timed): a push buffers up to 10 parts in memory.
UPLOAD_PART_SIZE = 64 * MiB
#: Variables that point boto3 at the server; anything else AWS_ of the machine is ignored.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(python: str, log: Path) -> Iterator[str]:
    """A moto S3 server in a child process; yields its endpoint URL."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        child = subprocess.Popen(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        child.terminate()
        child.wait(timeout=30)


def run(ctx: Context) -> SuiteResult:
    """Push the blob once, then time pull and download_file of it round by round."""
    size = QUICK_SIZE if ctx.quick else SIZE
    part = QUICK_PART_SIZE if ctx.quick else PART_SIZE
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    rounds = ctx.rounds_or(ROUNDS)
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    source = ctx.scratch / f"input-{size}.bin"
    ctx.log(f"s3-pull: input of {label} at {source}")
    make_input(source, size)
    read_through(source)
    expected = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(source).hexdigest()

    saved = {key: os.environ.get(key) for key in [*AWS_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    try:
        with moto_server(ctx.python, ctx.scratch / "moto.log") as endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            return _measure(ctx, source, size, part, label, rounds, expected)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for leftover in ("pusher", "puller", "download.bin"):
            remove_path(ctx.scratch / leftover)


def _measure(
    ctx: Context, source: Path, size: int, part: int, label: str, rounds: int, expected: str
) -> SuiteResult:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    url = f"s3://{BUCKET}/{PREFIX}"
    transfer = Transfer(threshold=part, part_size=part, concurrency=CONCURRENCY)

    ctx.log("s3-pull: put and push of the blob (setup, not compared)")
    pusher = ctx.scratch / "pusher"
    remove_path(pusher)
    uploader = Remote(url, transfer=Transfer(
        threshold=UPLOAD_PART_SIZE, part_size=UPLOAD_PART_SIZE, concurrency=CONCURRENCY))
    with cas.Store.open(pusher, remote=url, remote_client=uploader) as store:
        digest = store.put(source, name="big")
        start = time.perf_counter()
        report = store.push(["big"])
        push_time = time.perf_counter() - start
        report.raise_for_failures()
    remove_path(pusher)
    if digest != expected:
        raise AssertionError(f"put stored {digest}, but the input hashes to {expected}")
    key = Remote(url).blob_key(digest)

    puller = ctx.scratch / "puller"
    target = ctx.scratch / "download.bin"
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                            max_concurrency=CONCURRENCY, preferred_transfer_client="classic")
    remote = Remote(url, transfer=transfer)
    remote.client.head_bucket(Bucket=BUCKET)  # the client is built before any timing

    # As in put-large, each contender deletes its own previous output right before it writes.
    def pull() -> float:
        remove_path(puller)
        with cas.Store.open(puller, remote=url, remote_client=remote) as store:
            start = time.perf_counter()
            done = store.pull([digest])
            elapsed = time.perf_counter() - start
        done.raise_for_failures()
        if done.done != {digest: digest}:
            raise AssertionError(f"the pull did not transfer the blob: {done.summary()}")
        return elapsed

    def download_file() -> float:
        remove_path(target)
        start = time.perf_counter()
        client.download_file(BUCKET, key, str(target), Config=config)
        return time.perf_counter() - start

    ctx.log(f"s3-pull: {rounds} rounds after a warm-up round")
    samples = interleave({"cas pull": pull, "boto3 download_file": download_file}, rounds,
                         ctx.log)  # fmt: skip
    got = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(target).hexdigest()
    if got != digest:
        raise AssertionError(f"download_file wrote {got}, not {digest}")
    remove_path(target)
    remove_path(puller)

    rates = {name: [size / MiB / seconds for seconds in times] for name, times in samples.items()}
    cas_rate, peer_rate = median(rates["cas pull"]), median(rates["boto3 download_file"])
    rows = [
        Row(
            f"pull of a {label} blob from a local S3 server, throughput",
            "MiB/s",
            cas_rate,
            "boto3 download_file",
            peer_rate,
            Target(">=", 0.9),
            note=(f"cas {median(samples['cas pull']):.2f} s, download_file "
                  f"{median(samples['boto3 download_file']):.2f} s (medians)"),
            cas_samples=tuple(rates["cas pull"]),
            peer_samples=tuple(rates["boto3 download_file"]),
        ),
        Row(
            f"push of the {label} blob (setup, one run)",
            "MiB/s",
            size / MiB / push_time,
            note=f"{push_time:.2f} s in {UPLOAD_PART_SIZE // MiB} MiB parts",
        ),
    ]
    notes = [
        f"Server: moto {_version('moto')} in server mode, in a child process on 127.0.0.1 "
        "(its own GIL); the object lives in the server's memory and temporary files.",
        f"Both contenders use one TransferConfig: {part // MiB} MiB parts, {CONCURRENCY} at a "
        "time, the classic (non-CRT) transfer client. Smaller parts would measure moto, which "
        "reads the whole object to answer each ranged GET.",
        "cas pull: a new store each round (opened before timing); timed from `Store.pull` to "
        "its return: the blob streams in order into a staging file under tmp/, hashed (BLAKE3) "
        "as it arrives, fsynced, verified, published and recorded in the catalog.",
        "boto3 download_file: the same object to a temporary file renamed into place; no hash, "
        "no fsync. Its output is hashed once after the rounds to check it.",
        "Throughput is the blob size over the wall time of one call; medians over rounds.",
    ]
    return SuiteResult(rows, notes)


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":  # pragma: no cover - run through benchmarks/run.py
    sys.exit("run it as: python benchmarks/run.py s3-pull")
