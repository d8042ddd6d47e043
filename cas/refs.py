"""What a ref is: a full BLAKE3 digest, a name, or a digest prefix; which names are valid.

Names are catalog keys, never paths (guarantee 7): their only constraints come from here.
A ref of 64 hex digits is a digest. Any other ref is first a name; when no such name exists
and the ref is 8 to 63 hex digits, it is a prefix of a stored blob's digest (any case), which
must match exactly one blob.
"""

from __future__ import annotations

from cas.errors import UsageError

MAX_NAME_LENGTH = 255
#: The fewest hex digits a digest prefix may have (32 bits: ambiguity stays rare).
MIN_PREFIX = 8
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

#: Upstream checksums accepted as expected hashes besides BLAKE3 (hashlib's names), with their
#: length in hex digits and how messages spell them. Each is verified while the content streams
#: in and kept as an alias of its BLAKE3 digest (schema.sql's ``aliases``).
CHECKSUMS = {"sha256": 64, "sha1": 40, "md5": 32}
CHECKSUM_LABELS = {"blake3": "BLAKE3", "sha256": "SHA-256", "sha1": "SHA-1", "md5": "MD5"}


def is_digest(ref: str) -> bool:
    """Whether ``ref`` has the form of a full hex BLAKE3-256 digest (any case)."""
    return len(ref) == 64 and _HEX_DIGITS.issuperset(ref)


def is_digest_prefix(ref: str) -> bool:
    """Whether ``ref`` may be a digest prefix: 8 to 63 hex digits (any case). It is one only
    when no name ``ref`` exists: a name wins."""
    return MIN_PREFIX <= len(ref) < 64 and _HEX_DIGITS.issuperset(ref)


def check_digest(value: str, what: str = "digest") -> str:
    """Return ``value`` as a lowercase digest, or raise UsageError."""
    if not isinstance(value, str) or not is_digest(value):
        raise UsageError(f"{what} {value!r} is not 64 hexadecimal digits")
    return value.lower()


def check_checksum(value: str, algorithm: str) -> str:
    """Return ``value`` as a lowercase ``algorithm`` checksum (a key of ``CHECKSUMS``, or
    ``blake3``), or raise UsageError naming the algorithm and the length it wants."""
    length = 64 if algorithm == "blake3" else CHECKSUMS[algorithm]
    if not isinstance(value, str) or len(value) != length or not _HEX_DIGITS.issuperset(value):
        raise UsageError(f"{algorithm} {value!r} is not {length} hexadecimal digits")
    return value.lower()


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid fixture name, else raise UsageError saying why."""
    if not isinstance(name, str):
        raise UsageError(f"a name must be a string, not {type(name).__name__}")
    if not name:
        raise UsageError("a name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"name {name[:40]!r}... is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
        )
    if not name.isprintable():
        raise UsageError(f"name {name!r} contains a control or non-printable character")
    if is_digest(name):
        raise UsageError(f"name {name!r} is 64 hex digits, which is reserved for digests")
    return name
