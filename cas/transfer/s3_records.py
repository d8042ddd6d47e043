"""The remote tier's layout and records: the keys under ``s3://bucket/prefix`` and the small
JSON objects kept there, checked field by field before they are used.

    <prefix>/blobs/ab/<digest>           the content, keyed by its BLAKE3 digest
    <prefix>/names/<quoted name>.json    a ``NameRecord``: digest, size, source URL, sha256
    <prefix>/names/#<sha256 of name>.json  the same, for a name whose quoted form is long
    <prefix>/sha256/<sha256>.json        an alias: the BLAKE3 digest of an upstream checksum

No client here: this module is pure, and light.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from urllib.parse import quote, unquote

from cas.errors import CasError, UsageError
from cas.refs import check_digest, check_name
from cas.transfer.request import check_url

#: Largest metadata object read: records are a few hundred bytes; anything bigger is not ours.
RECORD_MAX = 64 * 1024
#: Longest quoted name used as a key as it is; longer names are keyed by their SHA-256 instead
#: (``#`` never appears in a quoted name). With ``.json`` the key's last segment stays under the
#: 255 bytes that SeaweedFS (and most file systems behind S3 gateways) allow a segment.
NAME_KEY_MAX = 240
#: The limit of the first layout, before long names were hashed: quoted names up to 512
#: characters were keys. Such records are still read, and listed once.
LEGACY_NAME_KEY_MAX = 512
BLOBS = "blobs"
NAMES = "names"
ALIASES = "sha256"
RECORD_SUFFIX = ".json"


def blob_parts(digest: str) -> tuple[str, str, str]:
    """The segments of a blob's key below the prefix: ``blobs/ab/<digest>``."""
    return BLOBS, digest[:2], digest


def name_leaf(name: str) -> str:
    """The last segment of a name's record key: the name URL-quoted (``/`` too), or hashed if
    long, so that no segment of the key reaches 255 bytes, whatever the name."""
    quoted = quote(name, safe="")
    if len(quoted) > NAME_KEY_MAX:
        quoted = "#" + hashlib.sha256(name.encode()).hexdigest()
    return quoted + RECORD_SUFFIX


def legacy_name_leaf(name: str) -> str | None:
    """Where the first layout kept the record of ``name``, when that differs from
    ``name_leaf``: quoted names of ``NAME_KEY_MAX`` to ``LEGACY_NAME_KEY_MAX`` characters."""
    quoted = quote(name, safe="")
    if NAME_KEY_MAX < len(quoted) <= LEGACY_NAME_KEY_MAX:
        return quoted + RECORD_SUFFIX
    return None


def alias_leaf(sha256: str) -> str:
    return sha256 + RECORD_SUFFIX


@dataclass(frozen=True)
class NameRecord:
    """What the remote knows of a name: its content and where that came from."""

    name: str
    digest: str
    size: int
    url: str | None = None
    sha256: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> NameRecord:
        """Parse and check a record read from the bucket; UsageError names what is wrong."""
        try:
            value = json.loads(data)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            size = value.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"size {size!r} is not a number of bytes")
            record = cls(
                name=check_name(value["name"]),
                digest=check_digest(value["digest"], "digest"),
                size=size,
                url=check_url(value["url"]) if value.get("url") is not None else None,
                sha256=(check_digest(value["sha256"], "sha256")
                        if value.get("sha256") is not None else None),
            )  # fmt: skip
        except KeyError as error:
            raise UsageError(f"remote record {where} is not valid: no {error}") from error
        except (ValueError, TypeError, UsageError) as error:
            raise UsageError(f"remote record {where} is not valid: {error}") from error
        return record


def alias_to_json(sha256: str, digest: str) -> bytes:
    """The alias record that maps an upstream SHA-256 to a BLAKE3 digest."""
    return json.dumps({"sha256": sha256, "blake3": digest}, sort_keys=True).encode()


def alias_from_json(data: bytes, sha256: str, where: str) -> str:
    """The BLAKE3 digest of the alias record of ``sha256``; UsageError when it is not one."""
    try:
        value = json.loads(data)
        if value.get("sha256") != sha256:
            raise ValueError(f"it is the record of {value.get('sha256')!r}")
        return check_digest(value.get("blake3"), "blake3")
    except (ValueError, TypeError, AttributeError, UsageError) as error:
        raise UsageError(f"remote record {where} is not valid: {error}") from error


@dataclass(frozen=True)
class Listed:
    """One record found by listing the remote's names: the name, or why it is none."""

    where: str  #: the record's s3:// URL
    name: str | None = None
    error: CasError | None = None


def name_of_leaf(leaf: str, where: str) -> str | None:
    """The name that a record's key ``leaf`` (below ``names/``) spells, or None for a key
    hashed from a long name (the record itself says which). UsageError for a key that is no
    name's; UnicodeDecodeError for a quoted form that is not UTF-8."""
    if not leaf.endswith(RECORD_SUFFIX) or "/" in leaf:
        raise UsageError(f"remote record {where} is not valid: not <name>.json")
    stem = leaf.removesuffix(RECORD_SUFFIX)
    if stem.startswith("#"):
        return None
    try:
        return check_name(unquote(stem, errors="strict"))
    except UsageError as error:
        raise UsageError(f"remote record {where} is not valid: {error}") from error
