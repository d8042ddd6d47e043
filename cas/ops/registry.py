"""Pooch registries made into manifests (``cas manifest from-pooch``).

A pooch registry file has one fixture a line, ``name hash [url]``, read exactly as pooch's own
``Pooch.load_registry`` reads it (pooch 1.9): each line is stripped; one starting with ``#`` is
a comment; the rest is split by ``shlex.split`` (so names and URLs may be quoted, and a ``#``
later on the line is not a comment) into 0, 2 or 3 words, anything else is an error. The hash
is lower-cased; ``alg:value`` names its algorithm (the part before the first colon, the value
after the last), a bare value is SHA-256. A later line for the same name replaces its hash but
keeps an earlier URL unless it gives one. A name without a URL is fetched from the base URL
joined as ``pooch.create`` does: ``base_url.rstrip("/") + "/" + name``, with the characters
that requests would percent-encode encoded here, so the manifest holds the URL pooch requests.

cas accepts the algorithms it verifies (``refs.CHECKSUMS``: sha256, sha1, md5) and http(s)
URLs; any other line is a one-line UsageError naming ``file:line``, and nothing is written.
"""

from __future__ import annotations

import os
import shlex
from typing import Any
from urllib.parse import quote

from cas.errors import NotFound, UsageError
from cas.ops.manifest import Fixture, check_fixture
from cas.refs import CHECKSUMS, check_checksum
from cas.transfer.request import check_url
from cas.urls import redact

#: What requests leaves unquoted in a URL (``requests.utils.requote_uri``): a name is quoted
#: with these safe, so the URL in the manifest is the one pooch's download would request.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def read_registry(path: str | os.PathLike[str], base_url: str | None = None) -> list[Fixture]:
    """The fixtures of the pooch registry file at ``path``, in the file's order, each with
    its URL (its own, else ``base_url`` joined with its name) and its expected hash.

    Raises NotFound for a missing file, UsageError naming ``file:line`` for a bad line.
    """
    where = os.fspath(path)
    if base_url is not None:
        try:
            check_url(redact(base_url))
        except UsageError as error:
            raise UsageError(f"base URL: {error}") from error
    try:
        with open(path, encoding="utf-8") as file:
            lines = list(file)
    except FileNotFoundError as error:
        raise NotFound(f"registry {where} does not exist") from error
    except IsADirectoryError as error:
        raise UsageError(f"registry {where} is a folder, not a file") from error
    except UnicodeDecodeError as error:
        raise UsageError(f"registry {where} is not UTF-8 text") from error
    hashes: dict[str, tuple[str, str, int]] = {}  # name -> algorithm, value, line
    urls: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        here = f"{where}:{number}"
        words = _words(here, line)
        if not words:
            continue
        name, checksum = words[0], words[1].lower()
        hashes[name] = (*_checksum(here, checksum), number)
        if len(words) == 3:
            urls[name] = words[2]
    fixtures = []
    for name, (algorithm, value, number) in hashes.items():
        here = f"{where}:{number}"
        url = urls[name] if name in urls else _joined(here, base_url, name)
        try:
            expected: dict[str, Any] = {algorithm: value}
            fixture = check_fixture(Fixture(name, url, **expected))
        except UsageError as error:
            raise UsageError(f"{here}: {error}") from error
        fixtures.append(fixture)
    return fixtures


def _words(here: str, line: str) -> list[str]:
    """The words of one registry line as pooch splits them ([] for a blank or comment)."""
    line = line.strip()
    if line.startswith("#"):
        return []
    try:
        words = shlex.split(line)
    except ValueError as error:  # an unclosed quote, a trailing backslash
        raise UsageError(f"{here}: cannot split the line: {error}") from error
    if len(words) not in (0, 2, 3):
        raise UsageError(
            f"{here}: expected 'name hash [url]' (2 or 3 words), got {len(words)}: {line!r}"
        )
    return words


def _checksum(here: str, checksum: str) -> tuple[str, str]:
    """(algorithm, value) of a registry hash, as pooch's ``hash_algorithm`` reads it."""
    algorithm = checksum.split(":")[0] if ":" in checksum else "sha256"
    value = checksum.split(":")[-1]
    if algorithm not in CHECKSUMS:
        raise UsageError(
            f"{here}: hash algorithm {algorithm!r} is not one cas verifies"
            f" ({', '.join(CHECKSUMS)})"
        )
    try:
        return algorithm, check_checksum(value, algorithm)
    except UsageError as error:
        raise UsageError(f"{here}: {error}") from error


def _joined(here: str, base_url: str | None, name: str) -> str:
    if base_url is None:
        raise UsageError(f"{here}: {name!r} has no URL of its own; give a base URL")
    return _requote(base_url.rstrip("/") + "/" + name)


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _requote(uri: str) -> str:
    """``uri`` as requests sends it (``requests.utils.requote_uri``, which pooch's download
    goes through): escapes of unreserved characters decoded, the rest quoted; a malformed
    ``%`` escape makes every ``%`` literal (``%25``). Written here so that cas needs no
    requests."""
    parts = uri.split("%")
    for index in range(1, len(parts)):
        pair = parts[index][:2]
        if len(pair) == 2 and pair.isalnum():
            try:
                char = chr(int(pair, 16))
            except ValueError:
                return quote(uri, safe=_URL_SAFE.replace("%", ""))
            parts[index] = (char + parts[index][2:] if char in _UNRESERVED
                            else "%" + parts[index])  # fmt: skip
        else:
            parts[index] = "%" + parts[index]
    return quote("".join(parts), safe=_URL_SAFE)


def manifest_text(fixtures: list[Fixture], header: str = "") -> str:
    """A manifest (TOML) declaring ``fixtures``; ``header`` becomes leading comment lines.

    Written by hand rather than with a TOML library: the shape is fixed (one table a fixture,
    string and integer values) and only strings need care, which ``_string`` gives.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for fixture in fixtures:
        lines += ["", f"[fixtures.{_string(fixture.name)}]", f"url = {_string(fixture.url)}"]
        for key in ("blake3", "sha256", "sha1", "md5"):
            value = getattr(fixture, key)
            if value is not None:
                lines.append(f"{key} = {_string(value)}")
        if fixture.size is not None:
            lines.append(f"size = {fixture.size}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped
    (TOML allows none of them raw in a basic string, and a tab only as ``\\t``)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def manifest_from_pooch(registry: str | os.PathLike[str], base_url: str | None = None) -> str:
    """The manifest (TOML text) declaring every fixture of a pooch registry file: URL (its
    own, else ``base_url`` joined with the name, as ``pooch.create`` joins them) and expected
    hash (``md5:``, ``sha1:``, ``sha256:`` or bare for SHA-256). ``cas sync`` accepts it as is.

    Raises NotFound for a missing registry, UsageError naming ``file:line`` for a bad line.
    """
    fixtures = read_registry(registry, base_url)
    source = os.path.basename(os.fspath(registry))
    header = f"Fixtures of the pooch registry {source}, made by `cas manifest from-pooch`"
    header += f"\n(base URL {redact(base_url)})." if base_url is not None else "."
    return manifest_text(fixtures, header)
