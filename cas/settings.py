"""Settings: one frozen object, built once when a store opens and passed down.

Sources, in order; a later source wins (SPEC "Settings", docs/configuration.md):

    1. defaults                               the field defaults of ``Settings``
    2. ``<root>/config.toml``                 its top level, then its ``[profile.NAME]`` table
    3. the file of ``--config``/``CAS_CONFIG``  its top level, then its ``[profile.NAME]`` table
    4. ``CAS_<KEY>`` environment variables
    5. command-line flags and keyword arguments

Each file is read as its top level followed by its chosen profile, files in order: a profile
of ``config.toml`` is therefore overridden by the top level of the ``--config`` file, which is
what "later wins" says when the later source is a whole file. The profile (``--profile`` or
``CAS_PROFILE``) must be defined in at least one of the files. Every table of every file is
validated, chosen or not, so a typo in the ``prod`` profile shows on a developer's machine too.

Nothing else in cas reads the environment or configuration files. ``default_root`` (``CAS_HOME``)
is the one other reader of the environment, and lives here for that reason.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, TypeVar

from cas.errors import ConfigError, UsageError

log = logging.getLogger("cas")

T = TypeVar("T")

#: The prefix of the environment variables that set a setting (``CAS_MAX_CACHE_SIZE``).
ENV_PREFIX = "CAS_"
#: Variables with the prefix that choose things other than a setting.
ENV_HOME, ENV_CONFIG, ENV_PROFILE = "CAS_HOME", "CAS_CONFIG", "CAS_PROFILE"
#: The file read from every store's root.
ROOT_CONFIG = "config.toml"
#: The source of a value that nothing set.
DEFAULT = "default"
#: The ``given_as`` of the command line, whose --config and --profile errors name the flag.
COMMAND_LINE = "command line"

# -- values: sizes, durations and the other kinds, each parsed by one function -------------------

# Bare K/M/G/T are binary, as in Docker and GNU tools; KB/MB/GB/TB are decimal (SPEC "5GB").
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_QUANTITY = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_REMOTE = re.compile(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?")


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


def _quantity(
    value: object, what: str, units: Mapping[str, int], unit_names: str, maximum: float
) -> Decimal:
    """The number ``value`` stands for: a number, or a string of a number and a unit.

    Decimal arithmetic reads ``1e400`` or ``1e300d`` exactly and at once, so any spelling is
    either a value in [0, ``maximum``] or a UsageError, never an overflow.
    """
    if isinstance(value, bool):
        raise UsageError(f"a {what} must be a number or a string like {unit_names}, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"a {what} must be finite")
        # Clamped into a range that keeps the sign and any overflow, so a huge int is cheap.
        number, unit = Decimal(max(min(value, 2**64), -1)), ""
    elif isinstance(value, str) and (match := _QUANTITY.fullmatch(value)):
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


def _retries(value: object) -> int:
    """A whole number from 0 to ``MAX_RETRIES``, or a string of one."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value) if len(value.strip()) < 100 else MAX_RETRIES + 1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRIES:
        return value
    raise ValueError(f"must be a whole number from 0 to {MAX_RETRIES}")


def _fraction(value: object) -> float:
    """A number in (0, 1]."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("must be a number in (0, 1]") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError("must be a number in (0, 1]: more than 0, at most 1")
    return float(value)


def _timeout(value: object) -> float:
    return _wait(value, 0)


def _lease_ttl(value: object) -> float:
    return _wait(value, MIN_LEASE_TTL)


def _remote(value: object) -> str | None:
    """None (also written ``""`` or ``none``), or ``s3://bucket/prefix``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and _REMOTE.fullmatch(value.strip()):
        return value.strip().rstrip("/")
    raise ValueError("must be s3://bucket/prefix, or empty for none")


def format_value(value: object) -> str:
    """A setting's value as it would be written in config.toml (sizes and durations excepted)."""
    import json  # here: only showing settings needs it

    return json.dumps(value) if isinstance(value, bool | int | float | str) else "none"


# -- the settings object ---------------------------------------------------------------------------


def _setting(default: T, parse: Callable[[object], T], show: Callable[[Any], str]) -> T:
    """A field with the function that parses and validates it, and the one that spells it."""
    return field(default=default, metadata={"parse": parse, "show": show})


@dataclass(frozen=True)
class Settings:
    """Every setting of a store, parsed and validated (table in docs/configuration.md).

    Constructing one validates and normalises each value, so ``Settings(max_cache_size="5GB")``
    holds 5000000000 and ``Settings(low_water=2)`` raises ConfigError.
    """

    auto_download: bool = _setting(True, parse_bool, format_value)
    max_cache_size: int = _setting(10 * 2**30, parse_size, format_size)
    low_water: float = _setting(0.8, _fraction, format_value)
    max_age: float = _setting(30 * 86400.0, parse_duration, format_duration)
    cleanup_interval: float = _setting(24 * 3600.0, parse_interval, format_duration)
    grace_period: float = _setting(300.0, parse_duration, format_duration)
    download_timeout: float = _setting(300.0, _timeout, format_duration)
    retries: int = _setting(5, _retries, format_value)
    lease_ttl: float = _setting(3600.0, _lease_ttl, format_duration)
    remote: str | None = _setting(None, _remote, format_value)
    remote_push: bool = _setting(True, parse_bool, format_value)
    shared: bool = _setting(False, parse_bool, format_value)
    durable: bool = _setting(True, parse_bool, format_value)
    allow_network_fs: bool = _setting(False, parse_bool, format_value)

    def __post_init__(self) -> None:
        for key in self.keys():
            value = getattr(self, key)
            object.__setattr__(self, key, _parse(key, value, f"Settings({key}=...)"))

    @classmethod
    def keys(cls) -> list[str]:
        """The names of every setting, in table order."""
        return [spec.name for spec in fields(cls)]

    def show(self, key: str) -> str:
        """The value of ``key`` spelled as in config.toml: ``10GiB``, ``30d``, ``true``."""
        show: Callable[[Any], str] = _FIELDS[key].metadata["show"]
        return show(getattr(self, key))

    @property
    def low_water_bytes(self) -> int:
        """The size that size-based cleanup frees down to."""
        return int(self.max_cache_size * self.low_water)


_FIELDS = {spec.name: spec for spec in fields(Settings)}
#: The names of every setting, in table order.
KEYS: tuple[str, ...] = tuple(_FIELDS)


def _show(value: object) -> str:
    """A raw value for an error message, as TOML would write it."""
    import json  # here: only error messages need it

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _parse(key: str, value: object, where: str) -> Any:
    """The parsed value of ``key``, or a ConfigError naming where it came from, key and value."""
    parse: Callable[[object], object] = _FIELDS[key].metadata["parse"]
    try:
        return parse(value)
    except ValueError as error:
        raise ConfigError(f"{where}: {key} = {_show(value)}: {error}") from None


def _unknown(key: str, value: object, where: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(KEYS)}"
    return ConfigError(f"{where}: unknown setting {key} = {_show(value)}{hint}")


# -- where values come from ------------------------------------------------------------------------


def default_root() -> Path:
    """``$CAS_HOME``, else the platform's user cache folder for cas."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    import platformdirs  # here: its import costs more than the rest of `cas path`

    return Path(platformdirs.user_cache_dir("cas"))


def resolve_root(root: str | os.PathLike[str] | None, given_as: str = "--root") -> tuple[Path, str]:
    """The absolute store root and where it came from (``given_as``, CAS_HOME, or default)."""
    if root is not None:
        return Path(root).expanduser().absolute(), given_as
    source = f"environment variable {ENV_HOME}" if os.environ.get(ENV_HOME) else DEFAULT
    return default_root().expanduser().absolute(), source


@dataclass(frozen=True)
class Config:
    """The effective settings with where each came from, for ``cas config``."""

    settings: Settings
    #: For each key: "default", a file (with " [profile.NAME]" when from its profile),
    #: "environment variable CAS_KEY", or the label of flags/keyword arguments.
    sources: Mapping[str, str]
    #: The configuration files read, in order.
    files: tuple[Path, ...]
    profile: str | None
    profile_source: str | None


def load_settings(
    root: Path,
    overrides: Mapping[str, Any],
    *,
    config_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
) -> Settings:
    """The settings of the store at ``root``, with keyword ``overrides`` applied last.

    Raises ConfigError naming the file or variable, the key and the value of a bad setting.
    """
    return load_config(root, overrides, config_file=config_file, profile=profile).settings


def load_config(
    root: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    given_as: str = "keyword argument",
) -> Config:
    """Read every source in order (module docstring) into a ``Config``.

    ``config_file`` and ``profile`` take the place of CAS_CONFIG and CAS_PROFILE; ``given_as``
    labels them and ``overrides`` in sources and errors ("keyword argument", "command line").
    ``environ`` defaults to ``os.environ``. Raises ConfigError.
    """
    env = os.environ if environ is None else environ
    chosen, profile_source = _choice(profile, env, ENV_PROFILE, given_as)
    extra, extra_source = _choice(config_file, env, ENV_CONFIG, given_as)

    files = [path for path in [root / ROOT_CONFIG] if path.is_file()]
    if extra is not None:
        path = Path(extra).expanduser().absolute()
        if not path.is_file():
            why = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(
                f"config file {path} (from {_flag(extra_source, '--config')}) {why}"
            )
        files.append(path)

    values: dict[str, Any] = {}
    sources = dict.fromkeys(KEYS, DEFAULT)

    def take(key: str, value: object, where: str, *, apply: bool = True) -> None:
        if key not in _FIELDS:
            raise _unknown(key, value, where)
        parsed = _parse(key, value, where)
        if apply:
            values[key], sources[key] = parsed, where

    found = False
    for path in files:
        top, profiles = _read_file(path)
        for key, value in top.items():
            take(key, value, str(path))
        for name, table in profiles.items():
            found = found or name == chosen
            for key, value in table.items():  # every profile is validated, chosen or not
                take(key, value, f"{path} [profile.{name}]", apply=name == chosen)
        log.debug("settings: read %s", path)
    if chosen is not None and not found:
        read = ", ".join(str(path) for path in files) or "no configuration file exists"
        raise ConfigError(
            f"profile {chosen!r} (from {_flag(profile_source, '--profile')}) is not defined;"
            f" read: {read}"
        )

    for key in KEYS:
        variable = ENV_PREFIX + key.upper()
        if variable in env:
            take(key, env[variable], f"environment variable {variable}")
    _warn_unknown_variables(env)

    for key, value in (overrides or {}).items():
        take(key, value, given_as)

    return Config(Settings(**values), sources, tuple(files), chosen, profile_source)


def _flag(source: str | None, flag: str) -> str | None:
    """An error names the flag of the command line: "(from --profile)", not "(from command
    line)"; other sources keep their label."""
    return flag if source == COMMAND_LINE else source


def child_environment() -> Mapping[str, str]:
    """The environment of a command cas runs (``cas lease``): this process's, unchanged.

    Here because this module is the one reader of the environment.
    """
    return os.environ


def _choice(
    given: str | os.PathLike[str] | None, env: Mapping[str, str], variable: str, given_as: str
) -> tuple[str | None, str | None]:
    """An argument if given, else a non-empty environment variable, with where it came from."""
    if given is not None:
        return os.fspath(given), given_as
    if env.get(variable):
        return env[variable], f"environment variable {variable}"
    return None, None


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A config file's top-level settings and its profiles, or ConfigError naming the file."""
    import tomllib

    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); TOML is UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    profiles = document.pop("profile", {})
    if not isinstance(profiles, dict) or not all(isinstance(t, dict) for t in profiles.values()):
        raise ConfigError(
            f"{path}: profile = {_show(profiles)}: profiles are tables like [profile.ci]"
        )
    return document, profiles


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Warn of CAS_ variables that set nothing, such as a misspelt CAS_MAX_CACHESIZE.

    A warning, not an error: the environment is shared with other programs, and the prefix is
    not ours alone.
    """
    known = {ENV_PREFIX + key.upper() for key in KEYS} | {ENV_HOME, ENV_CONFIG, ENV_PROFILE}
    for variable in sorted(env):
        if variable.startswith(ENV_PREFIX) and variable not in known:
            log.warning("environment variable %s is not a cas setting; ignored", variable)
