"""The remote tier's layout and records: the keys under ``s3://bucket/prefix`` and the small
JSON objects kept there, checked field by field before they are used.

    <prefix>/blobs/ab/<digest>           the content, keyed by its BLAKE3 digest
    <prefix>/names/<quoted name>.json    a ``NameRecord``: digest, size, source URL, sha256,
                                         and a small blob's content (``INLINE_MAX``)
    <prefix>/names/#<sha256 of name>.json  the same, for a name whose quoted form is long
    <prefix>/sha256/<sha256>.json        an alias: the BLAKE3 digest of an upstream checksum

No client here: this module is pure, and light.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from cas.errors import CasError, UsageError
from cas.refs import check_digest, check_name
from cas.storage import hashing
from cas.transfer.request import check_url

#: Blobs up to this size travel inside their name's record too (base64), so that pulling a small
#: fixture by name costs one request, not two: on a client bound by its CPU, as boto3's is per
#: request, the second request halved the rate. The blob object stays the one that read-through,
#: digests and other names use. cas before this layout refuses records over 64 KiB.
INLINE_MAX = 256 * 1024
#: Largest metadata object read: a record with a small blob's content; anything bigger is not
#: ours.
RECORD_MAX = INLINE_MAX * 4 // 3 + 64 * 1024
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
    """What the remote knows of a name: its content and where that came from. ``content`` is
    the blob's bytes for a small blob (``INLINE_MAX``), unchecked until ``verified_content``."""

    name: str
    digest: str
    size: int
    url: str | None = None
    sha256: str | None = None
    content: bytes | None = field(default=None, repr=False)

    def to_json(self) -> bytes:
        value: dict[str, object] = {"name": self.name, "digest": self.digest, "size": self.size,
                                    "url": self.url, "sha256": self.sha256}  # fmt: skip
        if self.content is not None:
            value["content"] = base64.b64encode(self.content).decode("ascii")
        return json.dumps(value, sort_keys=True).encode()

    def verified_content(self) -> bytes | None:
        """``content`` when it is the blob's (its BLAKE3 is ``digest``), else None: a damaged
        copy is ignored, and the blob itself is read."""
        if self.content is None:
            return None
        digest = hashing.hasher()
        digest.update(self.content)
        return self.content if digest.hexdigest() == self.digest else None

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
            content = _content(value.get("content"), size)
            record = cls(
                name=check_name(value["name"]),
                digest=check_digest(value["digest"], "digest"),
                size=size,
                url=check_url(value["url"]) if value.get("url") is not None else None,
                sha256=(check_digest(value["sha256"], "sha256")
                        if value.get("sha256") is not None else None),
                content=content,
            )  # fmt: skip
        except KeyError as error:
            raise UsageError(f"remote record {where} is not valid: no {error}") from error
        except (ValueError, TypeError, UsageError) as error:
            raise UsageError(f"remote record {where} is not valid: {error}") from error
        return record


def _content(encoded: object, size: int) -> bytes | None:
    """The inline content of a record: base64 of exactly ``size`` bytes, or absent."""
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise ValueError("content is not base64 text")
    try:  # strict: only the alphabet and padding (b64decode's validate is a slow regex)
        content = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"content is not base64 ({error})") from error
    if len(content) != size:
        raise ValueError(f"content is {len(content)} bytes, not the size {size}")
    return content


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
