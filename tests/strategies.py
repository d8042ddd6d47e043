"""Hypothesis strategies for cas inputs, in one place."""

from __future__ import annotations

from hypothesis import strategies as st

from cas.blobs import CHUNK_SIZE

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
