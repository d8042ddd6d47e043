"""The child side of the crash harness (tests/system/test_crash.py).

Run as ``python -m tests.system.crash_child ROOT BASE_URL FOCUS PHASE_FILE``: it imports cas and
uses each operation once in a scratch store (a warm zygote), says ``ready``, then for each ``go
SEED`` line on stdin forks a worker, prints ``pid N``, waits for it and prints ``exit N STATUS``.
The worker opens the store and does random work there until it is killed (the harness sends
SIGKILL after a random delay). Before each operation it writes the operation's name into
PHASE_FILE, so the harness can tell what it interrupted.
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from pathlib import Path

import blake3

import cas
import cas.ops.fetch  # the zygote pays for every import once, before it forks its workers
import cas.ops.verify
import cas.store
from cas.errors import InUse, NotFound

#: Resources the test's HTTP server serves at /r<k>: their bodies are ``resource(k)``.
RESOURCES = 24
#: Cleanup keeps the store around this size, so the harness's checks stay fast.
LIMIT = 384 * 1024

WEIGHTS = {
    # focus -> operation weights (each focus does a little of everything); operations differ
    # in length (a throttled download takes ~30 ms, a gc ~2), so the weights balance time.
    "put": {"put": 30, "fetch": 1, "gc": 3, "remove": 2, "lease": 1, "verify": 1},
    "fetch": {"put": 4, "fetch": 30, "gc": 3, "remove": 2, "lease": 1, "verify": 1},
    "gc": {"put": 12, "fetch": 1, "gc": 40, "remove": 2, "lease": 1, "verify": 1},
}
PHASES = ("open", "put", "fetch", "gc", "remove", "lease", "verify", "idle")


def resource(k: int) -> bytes:
    """The body served at /r<k>: 16 to 160 KiB, the same in harness and child."""
    rng = random.Random(f"resource-{k}")
    return rng.randbytes(rng.randint(16, 160) * 1024)


def put_name(digest: str, n: int) -> str:
    """Names of puts carry the start of their digest, so the harness can check them."""
    return f"p/{digest[:16]}/{n}"


def _work(root: str, base_url: str, focus: str, phase: int, seed: int) -> None:
    rng = random.Random(seed)
    os.pwrite(phase, b"open    ", 0)
    store = cas.Store.open(root, max_cache_size=LIMIT, grace_period=0, cleanup_interval=1,
                           lease_ttl=60, retries=1)
    shared = [random.Random(f"shared-{i}").randbytes(1000 * (i + 1)) for i in range(8)]
    scratch = Path(root).parent / f"src-{os.getpid()}"
    ops = list(WEIGHTS[focus])
    weights = list(WEIGHTS[focus].values())
    for n in range(10**9):
        op = rng.choices(ops, weights)[0]
        os.pwrite(phase, op.ljust(8).encode(), 0)
        try:
            if op == "put":
                data = rng.choice(shared) if rng.random() < 0.2 else rng.randbytes(
                    rng.randint(0, 96 * 1024))
                digest = blake3.blake3(data).hexdigest()
                name = put_name(digest, n) if rng.random() < 0.6 else None
                how = rng.random()
                if how < 0.3:
                    store.put(data, name=name)
                elif how < 0.6:
                    scratch.write_bytes(data)
                    store.put(scratch, name=name)
                elif how < 0.8:
                    scratch.write_bytes(data)
                    with scratch.open("rb") as stream:
                        store.put(stream, name=name)
                else:  # a batch: one transaction, one syncfs
                    batch = [data] + [rng.randbytes(rng.randint(0, 8 * 1024))
                                      for _ in range(rng.randint(1, 7))]
                    store.put_many({
                        put_name(blake3.blake3(item).hexdigest(), n * 10 + index): item
                        for index, item in enumerate(batch)
                    })
            elif op == "fetch":
                k = rng.randrange(RESOURCES)
                expect = blake3.blake3(resource(k)).hexdigest() if rng.random() < 0.3 else None
                # Throttled paths (/r) when fetch is the focus, so kills land in transfers.
                path = "r" if focus == "fetch" else "u"
                store.fetch(f"{base_url}/{path}{k}", name=f"f/{k}", blake3=expect)
            elif op == "gc":
                store.gc(max_size=rng.choice([LIMIT, LIMIT // 4, 0]))
            elif op == "remove":
                entries = store.entries()
                if entries:
                    entry = rng.choice(entries)
                    store.remove(entry.name or entry.digest)
            elif op == "lease":
                entries = [entry for entry in store.entries() if entry.present]
                if entries:
                    with store.lease(rng.choice(entries).digest) as path:
                        path.read_bytes()
            elif op == "verify":
                store.verify(full=rng.random() < 0.5)
        except (InUse, NotFound):
            pass  # a leased blob, or what a background cleanup just removed
        os.pwrite(phase, b"idle    ", 0)


def warm_up(scratch: Path, base_url: str) -> None:
    """Use every operation once in a throwaway store, so that what cas imports on first use is
    imported here in the zygote, not after each fork, where it would eat the kill delay."""
    with cas.Store.open(scratch, retries=1) as store:
        store.put(b"warm-up", name="warm-up")
        store.fetch(f"{base_url}/u0", name="warm-up/fetch")
        with store.lease("warm-up") as path:
            path.read_bytes()
        store.gc(max_size=0)
        store.verify()
        store.remove("warm-up")


def main() -> None:
    root, base_url, focus, phase_file = sys.argv[1:5]
    phase = os.open(phase_file, os.O_RDWR | os.O_CREAT, 0o600)
    warm_up(Path(root).parent / "warm-up", base_url)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["quit"]:
            return
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                _work(root, base_url, focus, phase, int(words[1]))
            except BaseException:
                traceback.print_exc()
                status = 1
            os._exit(status)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    main()
