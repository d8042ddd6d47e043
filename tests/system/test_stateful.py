"""A stateful property test: the store against a simple model, under every sequence of
put, tag, lease, release, pin, unpin, read, age, gc and remove; and a second store on the same
root, which tags too and whose look-ups must see every change at once."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

import cas
from cas.ops.leases import Lease
from cas.storage import queries
from cas.storage.layout import Layout

GRACE = 3600.0
OLD = 7 * 86400.0  # how long ago an aged blob was last accessed

contents = st.binary(min_size=0, max_size=300)
names = st.sampled_from([f"n{i}" for i in range(6)] + ["a/b", "deep/er/name"])


pytestmark = pytest.mark.slow


class StoreMachine(RuleBasedStateMachine):
    """The model: blobs (digest -> bytes), names (name -> digest), pins, leases, aged blobs."""

    digests = Bundle("digests")

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="cas-stateful-"))
        self.root = self.folder / "store"
        self.store = cas.Store.open(self.root, grace_period=GRACE, max_cache_size=10**9)
        self.other = cas.Store.open(self.root, grace_period=GRACE, max_cache_size=10**9)
        self.db = sqlite3.connect(Layout(self.root).catalog, isolation_level=None)
        self.blobs: dict[str, bytes] = {}
        self.names: dict[str, str] = {}
        self.pinned: set[str] = set()
        self.leases: list[Lease] = []
        self.aged: dict[str, float] = {}  # digest -> last access we set, for aged blobs
        self.clock = 0.0

    def teardown(self) -> None:
        self.db.close()
        self.other.close()
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def _leased(self) -> set[str]:
        return {lease.digest for lease in self.leases}

    def _protected(self, digest: str) -> bool:
        pinned = any(self.names.get(name) == digest for name in self.pinned)
        return digest in self._leased() or pinned or digest not in self.aged

    def _drop(self, digest: str) -> None:
        """The model of removing a blob: its row, file and names go."""
        del self.blobs[digest]
        self.aged.pop(digest, None)
        for name in [n for n, d in self.names.items() if d == digest]:
            del self.names[name]
            self.pinned.discard(name)

    # -- rules ---------------------------------------------------------------------------------

    @rule(target=digests, data=contents, name=st.none() | names)
    def put(self, data: bytes, name: str | None) -> str:
        digest = self.store.put(data, name=name)
        assert digest == blake3.blake3(data).hexdigest()
        self.blobs[digest] = data
        self.aged.pop(digest, None)  # a put is an access
        if name is not None:
            self.names[name] = digest
        return digest

    @rule(target=digests, batch=st.dictionaries(names, contents, min_size=1, max_size=4))
    def put_many(self, batch: dict[str, bytes]) -> MultipleResults[str]:
        stored = self.store.put_many(batch)
        assert stored == [blake3.blake3(data).hexdigest() for data in batch.values()]
        for (name, data), digest in zip(batch.items(), stored, strict=True):
            self.blobs[digest] = data
            self.aged.pop(digest, None)
            self.names[name] = digest
        return multiple(*stored)

    @rule(name=names, digest=digests, elsewhere=st.booleans())
    def tag(self, name: str, digest: str, elsewhere: bool) -> None:
        store = self.other if elsewhere else self.store
        if digest in self.blobs:
            store.tag(name, digest)
            self.names[name] = digest
        else:
            try:
                store.tag(name, digest)
                raise AssertionError("tag of a removed blob succeeded")
            except cas.NotFound:
                pass

    @rule(digest=digests)
    def lease(self, digest: str) -> None:
        if digest in self.blobs:
            self.leases.append(self.store.lease(digest))
            self.aged.pop(digest, None)  # leasing reads the blob: it is accessed
        else:
            try:
                self.store.lease(digest)
                raise AssertionError("lease of a removed blob succeeded")
            except cas.NotFound:
                pass

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 100))
    def release(self, index: int) -> None:
        self.leases.pop(index % len(self.leases)).release()

    @precondition(lambda self: self.names)
    @rule(index=st.integers(0, 100), pin=st.booleans())
    def pin_or_unpin(self, index: int, pin: bool) -> None:
        name = sorted(self.names)[index % len(self.names)]
        if pin:
            self.store.pin(name)
            self.pinned.add(name)
        else:
            self.store.unpin(name)
            self.pinned.discard(name)

    @rule(digest=digests)
    def read(self, digest: str) -> None:
        if digest in self.blobs:
            assert self.store.read_bytes(digest) == self.blobs[digest]
            # A read of a blob last accessed long ago is recorded (batched) as an access.
            self.aged.pop(digest, None)

    @rule(digest=digests)
    def age(self, digest: str) -> None:
        """Let time pass for one blob: it becomes older than every aged blob so far."""
        if digest in self.blobs:
            self.store.flush()  # accesses recorded so far happened before this time passes
            self.clock += 1
            when = time.time() - OLD + self.clock
            self.db.execute("UPDATE blobs SET last_access = ? WHERE digest = ?", (when, digest))
            self.aged[digest] = when

    @rule(max_size=st.integers(0, 3000), by_age=st.booleans(), dry_run=st.booleans())
    def gc(self, max_size: int, by_age: bool, dry_run: bool) -> None:
        stored = sum(len(data) for data in self.blobs.values())
        plan = self.store.gc(max_size=max_size, max_age=OLD / 2 if by_age else None,
                             dry_run=dry_run)
        victims = [item.digest for item in plan.victims]
        assert len(set(victims)) == len(victims)
        for digest in victims:
            assert not self._protected(digest), "a leased, pinned or recent blob was chosen"
        # LRU: every victim was accessed no later than any aged, unprotected survivor.
        survivors = [d for d in self.aged if d not in victims and not self._protected(d)]
        if survivors and victims and not by_age:
            assert max(self.aged[d] for d in victims) <= min(self.aged[d] for d in survivors)
        # Size: either down to low water, or nothing evictable is left.
        if stored > max_size and not survivors:
            pass
        elif stored > max_size:
            assert plan.stored_after <= int(max_size * self.store.settings.low_water)
        if by_age:
            assert set(victims) >= {d for d in self.aged if not self._protected(d)}
        if not dry_run:
            for digest in victims:
                self._drop(digest)

    @rule(digest=digests, force=st.booleans(), by_name=st.booleans())
    def remove(self, digest: str, force: bool, by_name: bool) -> None:
        names_of = sorted(n for n, d in self.names.items() if d == digest)
        ref = names_of[0] if by_name and names_of else digest
        if digest not in self.blobs:
            try:
                self.store.remove(ref)
                raise AssertionError("remove of a missing blob succeeded")
            except cas.NotFound:
                return
        last_name = ref != digest and len(names_of) == 1
        blocked = digest in self._leased() and not force and (ref == digest or last_name)
        try:
            removed = self.store.remove(ref, force=force)
        except cas.InUse:
            assert blocked
            return
        assert not blocked
        if ref != digest:
            del self.names[ref]
            self.pinned.discard(ref)
            if not last_name:
                assert removed == []
                return
        assert removed == [digest]
        self._drop(digest)
        self.leases = [lease for lease in self.leases if lease.digest != digest]

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def rows_files_and_sizes_agree(self) -> None:
        files = {p.name: p for p in Layout(self.root).blobs.rglob("*") if p.is_file()}
        rows = dict(self.db.execute("SELECT digest, size FROM blobs"))
        assert set(files) == set(rows) == set(self.blobs), "rows, files and model differ"
        for digest, path in files.items():
            assert path.stat().st_size == rows[digest] == len(self.blobs[digest])
        stored = dict(self.db.execute("SELECT name, value FROM counters"))
        assert stored["stored_bytes"] == sum(rows.values())
        assert stored["stored_blobs"] == len(rows)

    @invariant()
    def look_ups_agree(self) -> None:
        """Both stores' look-ups (remembered while the catalog is unchanged) match the model.
        Through the catalog's lookup itself: a path() would note accesses, which gc sees."""
        every_name = {f"n{i}" for i in range(6)} | {"a/b", "deep/er/name"}
        for store in (self.store, self.other):
            for name in every_name:
                row = queries.stored_blob(store._catalog, name)
                assert (row and row[0]) == self.names.get(name), f"look-up of {name!r}"
            for digest, data in self.blobs.items():
                assert queries.stored_blob(store._catalog, digest)[1] == len(data)

    @invariant()
    def names_agree(self) -> None:
        listed = {entry.name: entry.digest for entry in self.store.entries() if entry.name}
        assert listed == self.names
        pinned = {name for (name,) in self.db.execute("SELECT name FROM names WHERE pinned")}
        assert pinned == self.pinned


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40,
                                          deadline=None)
TestStore = StoreMachine.TestCase
