"""Hypothesis strategies for cas inputs, in one place."""

from __future__ import annotations

from hypothesis import strategies as st

from cas.storage.hashing import CHUNK_SIZE

#: Sizes where chunked copying can go wrong: empty, and around each chunk boundary.
BOUNDARY_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 7]

small_contents = st.binary(max_size=4096)


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes: mostly small, sometimes of a size around a chunk boundary."""
    size = draw(st.one_of(st.integers(0, 5000), st.sampled_from(BOUNDARY_SIZES)))
    seed = draw(st.binary(min_size=1, max_size=64))
    return (seed * (size // len(seed) + 1))[:size]


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=60,
).filter(str.isprintable)


# -- settings (tests/test_settings.py) ------------------------------------------------------------

#: Sizes in bytes, from none to beyond a petabyte, biased towards round powers.
byte_sizes = st.one_of(
    st.integers(0, 2**60),
    st.builds(lambda n, p: n * 2**p, st.integers(0, 4096), st.sampled_from([10, 20, 30, 40])),
    st.builds(lambda n, p: n * 10**p, st.integers(0, 4096), st.sampled_from([3, 6, 9, 12])),
)
#: Durations in seconds: whole ones (often whole minutes, hours, days) and fractional ones.
durations = st.one_of(
    st.integers(0, 10**9).map(float),
    st.builds(lambda n, u: float(n * u), st.integers(0, 10**5), st.sampled_from([60, 3600, 86400])),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
)
