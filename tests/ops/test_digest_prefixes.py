"""Digest prefixes as refs, through the Python API.

A unique prefix of 8 to 63 hex digits (any case) names its blob wherever a digest does; an
existing name spelled like a prefix wins; a prefix matching nothing is NotFound, one matching
several a UsageError whose one line names them; fewer than 8 hex digits are only ever a name.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.refs import MIN_PREFIX, is_digest_prefix
from cas.storage import queries as q
from cas.storage.layout import Layout

#: Two 8-byte contents whose BLAKE3 digests share their first 8 hex digits (found once by
#: counting up from 0 until two collided: a birthday search over about 65,000 contents).
TWINS = ((36962).to_bytes(8, "big"), (64647).to_bytes(8, "big"))
SHARED = "372f330d"


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_the_twins_share_exactly_eight_digits() -> None:
    first, second = (b3(twin) for twin in TWINS)
    assert first[:8] == second[:8] == SHARED
    assert first[8] != second[8]


def test_a_unique_prefix_works_wherever_a_digest_does(store: cas.Store) -> None:
    digest = store.put(b"tables\n")
    other = store.put(b"something else\n")
    for prefix in (digest[:8], digest[:12], digest[:12].upper(), digest[:63]):
        assert store.path(prefix) == store.path(digest)
        assert store.read_bytes(prefix) == b"tables\n"
        with store.open_blob(prefix) as blob:
            assert blob.read() == b"tables\n"
        with store.lease(prefix) as path:
            assert path == store.path(digest)

    assert store.tag("tables", digest[:12].upper()) == digest
    assert store.read_bytes("tables") == b"tables\n"
    store.pin(digest[:10])
    assert [entry.pinned for entry in store.entries() if entry.name == "tables"] == [True]
    store.unpin(digest[:10])
    assert [entry.pinned for entry in store.entries() if entry.name == "tables"] == [False]

    assert store.remove(digest[:12]) == [digest]  # the blob and every name of it, as a digest
    assert [entry.digest for entry in store.entries()] == [other]
    with pytest.raises(cas.NotFound, match="no blob whose digest begins with"):
        store.path(digest[:12])


def test_an_ambiguous_prefix_is_a_usage_error_naming_the_candidates(store: cas.Store) -> None:
    first, second = (store.put(twin) for twin in TWINS)
    store.tag("twin", first)
    calls = [store.path, store.read_bytes, store.open_blob, store.lease, store.pin, store.unpin,
             store.remove, lambda ref: store.tag("again", ref)]  # fmt: skip
    for prefix in (SHARED, SHARED.upper()):
        for call in calls:
            with pytest.raises(cas.UsageError) as raised:
                call(prefix)
            message = str(raised.value)
            assert "\n" not in message
            assert f"digest prefix {SHARED} is ambiguous: 2 blobs match" in message
            assert first in message and second in message
    assert len(store.entries()) == 2  # nothing was removed or tagged
    assert store.read_bytes(first[:9]) == TWINS[0]  # one digit more tells them apart
    assert store.read_bytes(second[:9]) == TWINS[1]


def test_a_name_spelled_like_a_prefix_wins(store: cas.Store) -> None:
    digest = store.put(b"by digest\n")
    named = store.put(b"by name\n", name=digest[:8])
    assert store.read_bytes(digest[:8]) == b"by name\n"
    assert store.read_bytes(digest[:9]) == b"by digest\n"
    if digest[:8].upper() != digest[:8]:  # names are case-sensitive, prefixes are not
        assert store.read_bytes(digest[:8].upper()) == b"by digest\n"
    assert store.remove(digest[:8]) == [named]  # the name and its blob, not the other blob
    assert store.read_bytes(digest[:8]) == b"by digest\n"  # now a prefix


def test_a_prefix_matching_nothing_is_not_found(store: cas.Store) -> None:
    digest = store.put(b"alone\n")
    absent = ("0" if digest[0] != "0" else "1") + digest[1:12]
    with pytest.raises(cas.NotFound, match=f"no name '{absent}' and no blob whose digest"):
        store.path(absent)
    with pytest.raises(cas.NotFound):
        store.remove(absent)


def test_fewer_than_eight_digits_are_only_a_name(store: cas.Store) -> None:
    digest = store.put(b"short\n")
    assert not is_digest_prefix(digest[: MIN_PREFIX - 1]) and is_digest_prefix(digest[:MIN_PREFIX])
    with pytest.raises(cas.NotFound, match=f"^no name '{digest[:7]}' in the store$"):
        store.path(digest[:7])
    store.tag(digest[:7], digest)  # a name like any other
    assert store.path(digest[:7]).samefile(store.path(digest))  # its view, the same file
    with pytest.raises(cas.UsageError, match="reserved for digests"):
        store.tag(digest.upper(), digest)  # 64 hex digits stay a digest, never a name


@given(
    contents=st.lists(st.binary(max_size=64), min_size=1, max_size=20, unique=True),
    pick=st.integers(0, 19),
    length=st.integers(MIN_PREFIX, 64),
    upper=st.booleans(),
)
def test_every_prefix_of_a_stored_digest_names_what_it_matches(
    store: cas.Store, contents: list[bytes], pick: int, length: int, upper: bool
) -> None:
    """Whatever is stored, a prefix of a stored digest names its blob when no other stored
    digest shares it, and is ambiguous otherwise."""
    digests = store.put_many(contents)
    stored = {entry.digest for entry in store.entries()}
    digest = digests[pick % len(digests)]
    prefix = digest[:length].upper() if upper else digest[:length]
    matching = [other for other in stored if other.startswith(digest[:length])]
    if len(matching) == 1:
        assert store.path(prefix) == store.path(digest)
    else:
        with pytest.raises(cas.UsageError, match="ambiguous"):
            store.path(prefix)


# -- the query ----------------------------------------------------------------------------------


def blobs_table(digests: list[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                 " created REAL NOT NULL, last_access REAL NOT NULL) WITHOUT ROWID")  # fmt: skip
    conn.executemany("INSERT INTO blobs VALUES (?, 1, 0, 0)", [(d,) for d in digests])
    return conn


def test_the_query_names_five_candidates_then_counts_the_rest() -> None:
    sharing = [f"ffffffff{n:056x}" for n in range(12)]
    conn = blobs_table([*sharing, "f" * 7 + "e" + "0" * 56, "f" * 64, "0" * 64])
    matches = q.blobs_with_prefix(conn, "ffffffff")
    assert matches == q.PrefixMatches(13, sharing[: q.PREFIX_CANDIDATES])
    assert q.blobs_with_prefix(conn, "f" * 63) == q.PrefixMatches(1, ["f" * 64])  # no carry
    assert q.blobs_with_prefix(conn, "0" * 63) == q.PrefixMatches(1, ["0" * 64])
    assert q.blobs_with_prefix(conn, "12345678") == q.PrefixMatches(0, [])


def test_many_candidates_are_named_five_then_counted(root: Path) -> None:
    with cas.Store.open(root) as store:
        store.put(b"x")
    conn = sqlite3.connect(Layout(root).catalog)
    with conn:
        conn.executemany(
            "INSERT INTO blobs (digest, size, created, last_access) VALUES (?, 0, 0, 0)",
            [(f"abcdef01{n:056x}",) for n in range(8)],
        )
    conn.close()
    with cas.Store.open(root) as store, pytest.raises(cas.UsageError) as raised:
        store.path("ABCDEF01")
    assert str(raised.value) == (
        "digest prefix abcdef01 is ambiguous: 8 blobs match ("
        + ", ".join(f"abcdef01{n:056x}" for n in range(5))
        + " and 3 more); give more digits"
    )


def test_the_query_is_a_range_of_the_primary_key(root: Path) -> None:
    """No scan: the prefix is a range search of the blobs' primary key."""
    with cas.Store.open(root) as store:
        store.put(b"x")
    conn = sqlite3.connect(Layout(root).catalog)
    sql = q._BLOBS_BY_PREFIX
    plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("abcdef01", "abcdef01g", 5)).fetchall()
    conn.close()
    details = [row[-1] for row in plan if "blobs" in row[-1]]
    assert details and all("USING PRIMARY KEY (digest>? AND digest<?)" in d for d in details)
