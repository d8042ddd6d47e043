"""Values of settings and options: sizes, durations, intervals, booleans and the other kinds.

Each kind is parsed by one function and spelled by one, and ``parse_*`` reads back what
``format_*`` writes. A value out of range or of the wrong type is a UsageError (a ValueError),
so the same parser serves settings (where ``cas.settings`` turns it into a ConfigError naming
the source) and command-line options such as ``cas gc --max-age``.

A base module: it imports only ``cas.errors``, and stays cheap to import (``decimal`` and
``json`` load in the functions that use them, and a number already in range needs neither).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cas.errors import UsageError

if TYPE_CHECKING:
    from decimal import Decimal

# Bare K/M/G/T are binary, as in Docker and GNU tools; KB/MB/GB/TB are decimal (SPEC "5GB").
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Patterns compiled on first use (re caches them): a store opened with default values needs none.
_QUANTITY = r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_REMOTE = r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?"


#: The largest size: what SQLite's INTEGER holds (about 8 EiB).
MAX_SIZE = 2**63 - 1
#: The longest duration, ten million days: finite, so ``time.time() - max_age`` stays exact.
MAX_DURATION = 10**7 * 86400.0
#: The longest time a setting makes cas wait or sleep (``download_timeout``, ``lease_ttl``,
#: ``cleanup_interval``): 100 years, within what ``time.sleep``, ``threading.Event.wait`` and
#: socket timeouts accept (``threading.TIMEOUT_MAX`` is 292 years).
MAX_WAIT = 36_500 * 86400.0
#: The shortest interval between periodic cleanups (``cleanup_interval``, ``maintain --interval``):
#: shorter would clean in a tight loop.
MIN_INTERVAL = 1.0
#: The shortest ``lease_ttl``: leases are renewed every third of it, each renewal a write.
MIN_LEASE_TTL = 1.0
#: The most ``retries``: more would keep a failing download going for days.
MAX_RETRIES = 100
#: The most connections one download may open at once (``connections``).
MAX_CONNECTIONS = 64
#: Fixtures a sync downloads at once unless told otherwise (``--jobs``): small ones are bound by
#: round trips, so several run beside the large ones.
SYNC_JOBS = 8


def _quantity(
    value: object, what: str, units: Mapping[str, int], unit_names: str, maximum: float
) -> Decimal | int | float:
    """The number ``value`` stands for: a number, or a string of a number and a unit.

    Decimal arithmetic reads ``1e400`` or ``1e300d`` exactly and at once, so any spelling is
    either a value in [0, ``maximum``] or a UsageError, never an overflow.
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= maximum:
        return abs(value)  # in range already (the defaults, TOML numbers): exact; abs: -0.0 is 0
    # Imported here: only a string or an out-of-range number needs decimal, not opening a store.
    from decimal import Decimal, localcontext

    if isinstance(value, bool):
        raise UsageError(f"a {what} must be a number or a string like {unit_names}, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"a {what} must be finite")
        # Clamped into a range that keeps the sign and any overflow, so a huge int is cheap.
        number, unit = Decimal(max(min(value, 2**64), -1)), ""
    elif isinstance(value, str) and (match := re.fullmatch(_QUANTITY, value)):
        try:
            number, unit = Decimal(match[1]), match[2].lower()
        except ArithmeticError:  # an exponent beyond even Decimal's range
            raise UsageError(f"a {what} can be at most {_most(what, maximum)}") from None
        if unit not in units:
            raise UsageError(f"unknown {what} unit {match[2]!r}; use {unit_names}")
    else:
        raise UsageError(f"a {what} must be a number or a string like {unit_names}")
    if number < 0:
        raise UsageError(f"a {what} cannot be negative")
    if number > Decimal(maximum):  # checked before scaling, so the product stays small
        raise UsageError(f"a {what} can be at most {_most(what, maximum)}")
    with localcontext(prec=60):
        scaled = number.copy_abs() * units[unit]  # copy_abs: "-0" is 0
    if scaled > Decimal(maximum):
        raise UsageError(f"a {what} can be at most {_most(what, maximum)}")
    return scaled


def _most(what: str, maximum: float) -> str:
    return f"{int(maximum)} bytes" if what == "size" else f"{format_duration(maximum)}"


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``5GB``, ``5GiB`` or ``1024``.

    Raises UsageError (a ValueError) for a negative size, one above ``MAX_SIZE``, an unknown
    unit or another type.
    """
    units = "5GB, 5GiB, 512MiB or a number of bytes"
    return int(_quantity(value, "size", _SIZE_UNITS, units, MAX_SIZE))


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``90s``, ``12h`` or ``7d`` (also ``m``, ``w``).

    Raises UsageError (a ValueError) for a negative duration, one above ``MAX_DURATION``
    (ten million days), an unknown unit or another type.
    """
    units = "90s, 5m, 12h, 7d, 2w or seconds"
    return float(_quantity(value, "duration", _DURATION_UNITS, units, MAX_DURATION))


def parse_interval(value: object) -> float:
    """A time between periodic cleanups: at least ``MIN_INTERVAL`` (1 s), at most ``MAX_WAIT``.

    Raises UsageError. The one check of ``cleanup_interval``, ``cas maintain --interval`` and
    ``Store.maintenance(interval)``.
    """
    return _wait(value, MIN_INTERVAL)


def _wait(value: object, minimum: float) -> float:
    """A duration cas waits or sleeps for: at least ``minimum`` (0: more than zero), at most
    ``MAX_WAIT``."""
    seconds = parse_duration(value)
    if seconds > MAX_WAIT:
        raise UsageError(f"must be at most {format_duration(MAX_WAIT)} (100 years)")
    if seconds < minimum or seconds <= 0:
        raise UsageError(f"must be at least {format_duration(minimum)}" if minimum
                         else "must be longer than zero")
    return seconds


def format_size(size: int) -> str:
    """``size`` bytes in the largest unit that divides it exactly (``10GiB``, ``5GB``, ``1000``).

    ``parse_size`` reads it back to the same number.
    """
    for unit in ("TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "KB"):
        factor = _SIZE_UNITS[unit.lower()]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it exactly (``30d``, ``90s``, ``0.5s``).

    ``parse_duration`` reads it back to the same number.
    """
    if seconds == int(seconds):
        whole = int(seconds)
        for unit in ("d", "h", "m"):
            if whole and whole % _DURATION_UNITS[unit] == 0:
                return f"{whole // _DURATION_UNITS[unit]}{unit}"
        return f"{whole}s"
    return f"{seconds!r}s"


def parse_bool(value: object) -> bool:
    """A boolean, or one of the strings true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false")


def parse_retries(value: object) -> int:
    """A whole number from 0 to ``MAX_RETRIES``, or a string of one."""
    return _whole(value, 0, MAX_RETRIES)


def _whole(value: object, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``, or a string of one."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value) if len(value.strip()) < 100 else high + 1
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise ValueError(f"must be a whole number from {low} to {high}")


def parse_connections(value: object) -> int:
    """Connections one download may use at once: a whole number from 1 to ``MAX_CONNECTIONS``."""
    return _whole(value, 1, MAX_CONNECTIONS)


def parse_fraction(value: object) -> float:
    """A number in (0, 1]."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("must be a number in (0, 1]") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError("must be a number in (0, 1]: more than 0, at most 1")
    return float(value)


def parse_timeout(value: object) -> float:
    """A time to wait for the network: more than zero, at most ``MAX_WAIT``."""
    return _wait(value, 0)


def parse_lease_ttl(value: object) -> float:
    """A lease's time to live: at least ``MIN_LEASE_TTL`` (1 s), at most ``MAX_WAIT``."""
    return _wait(value, MIN_LEASE_TTL)


def parse_remote(value: object) -> str | None:
    """None (also written ``""`` or ``none``), or ``s3://bucket/prefix``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and re.fullmatch(_REMOTE, value.strip()):
        return value.strip().rstrip("/")
    raise ValueError("must be s3://bucket/prefix, or empty for none")


def format_value(value: object) -> str:
    """A setting's value as it would be written in config.toml (sizes and durations excepted)."""
    import json  # here: only ``cas config`` spells values

    return json.dumps(value) if isinstance(value, bool | int | float | str) else "none"


# -- request headers -------------------------------------------------------------------------------

#: A header name: an HTTP token (RFC 9110).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: In a header value: ``${NAME}`` (an environment variable), or ``$${`` (a literal ``${``).
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Headers cas sends itself (framing, encoding, ranges, validators, the proxy's credentials):
#: an extra header may not replace them.
RESERVED_HEADERS = frozenset({
    "accept-encoding", "connection", "content-length", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "keep-alive", "proxy-authorization",
    "range", "te", "trailer", "transfer-encoding", "upgrade",
})  # fmt: skip

#: Extra request headers: (name, value) pairs, values possibly holding ``${VAR}`` tokens.
Headers = tuple[tuple[str, str], ...]


def parse_headers(value: object) -> Headers:
    """Extra request headers from a table (``{"Authorization": "Bearer ${TOKEN}"}``), a JSON
    object, ``Name: value`` lines (a string, or a list of them), or (name, value) pairs.

    Names are HTTP tokens, not one of ``RESERVED_HEADERS``, each given once (in any case);
    values are strings without control characters, in which ``${VAR}`` is an environment
    variable read when the request is made (``$${`` is a literal ``${``; any other ``$`` is
    itself). A message names the
    header, never its value: values hold tokens.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import json  # here: only a JSON object of headers needs it

            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError("is not a valid JSON object of headers") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object of headers") from None
        else:
            value = [line for line in text.splitlines() if line.strip()]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        pairs = [_header_pair(index, item) for index, item in enumerate(value, 1)]
    else:
        raise ValueError("must be a table of header names and values")
    seen: set[str] = set()
    for index, (name, text) in enumerate(pairs, 1):
        _check_header(index, name, text)
        if name.lower() in seen:
            raise ValueError(f"header {name} is given twice")
        seen.add(name.lower())
    return tuple((str(name), str(text)) for name, text in pairs)


def _header_pair(index: int, item: object) -> tuple[object, object]:
    # A line that is not "Name: value" is not shown: it may be a token with a typo.
    if isinstance(item, str):
        name, colon, text = item.partition(":")
        if not colon:
            raise ValueError(f"header {index} is not 'Name: value' (it has no colon)") from None
        return name.strip(), text.strip()
    if isinstance(item, list | tuple) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(f"header {index} is not 'Name: value'")


def _check_header(index: int, name: object, text: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        # Shown only if short and plain: "Authorization Bearer x" is no name, and no message.
        plain = isinstance(name, str) and len(name) <= 30 and not any(c.isspace() for c in name)
        shown = repr(name) if plain else f"header {index}"
        raise ValueError(f"{shown} is not a valid header name (letters, digits and -)")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"header {name} is set by cas itself and cannot be given")
    if not isinstance(text, str):
        raise ValueError(f"header {name}: its value must be a string")
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in text):
        raise ValueError(f"header {name}: its value holds a line break or control character")
    if "${" in _TOKEN.sub("", text):
        raise ValueError(f"header {name}: '${{' must start ${{NAME}} (a literal one is $${{)")


def header_variables(text: str) -> list[str]:
    """The environment variables a header value names (``${VAR}``), in order."""
    return [match[1] for match in _TOKEN.finditer(text) if match[1]]


def expand_header(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with each ``${VAR}`` replaced by ``environ[VAR]`` and ``$${`` by ``${``; raises
    KeyError naming the first variable that is not set."""
    return _TOKEN.sub(lambda match: environ[match[1]] if match[1] else "${", text)


def format_headers(headers: Headers) -> str:
    """The names of the headers, never their values: ``Authorization, X-Team (values hidden)``."""
    if not headers:
        return "none"
    return ", ".join(name for name, _ in headers) + " (values hidden)"
