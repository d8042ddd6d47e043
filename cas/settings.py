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
is the one other reader of the environment, and lives here for that reason. What a value means
(sizes, durations, ranges) is ``cas.values``; this module says which settings exist and where
their values come from.

Cheap to import, because every command opens a store: ``tomllib`` loads only when a file is
read, ``platformdirs`` only when no root is given, ``json`` and ``difflib`` only for messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from cas.errors import ConfigError
from cas.logs import log
from cas.values import (
    format_duration,
    format_headers,
    format_size,
    format_value,
    parse_bool,
    parse_connections,
    parse_duration,
    parse_fraction,
    parse_headers,
    parse_interval,
    parse_lease_ttl,
    parse_remote,
    parse_retries,
    parse_size,
    parse_timeout,
)

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

# -- the settings object ---------------------------------------------------------------------------


def _setting(default: T, parse: Callable[[object], T], show: Callable[[Any], str], *,
             secret: bool = False) -> T:
    """A field with the function that parses and validates it, and the one that spells it.
    A ``secret`` one (request headers) is never shown: not in a repr, an error or ``cas
    config``, which spell its names only."""
    return field(default=default, repr=not secret,
                 metadata={"parse": parse, "show": show, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every setting of a store, parsed and validated (table in docs/configuration.md).

    Constructing one validates and normalises each value, so ``Settings(max_cache_size="5GB")``
    holds 5000000000 and ``Settings(low_water=2)`` raises ConfigError.
    """

    auto_download: bool = _setting(True, parse_bool, format_value)
    max_cache_size: int = _setting(10 * 2**30, parse_size, format_size)
    low_water: float = _setting(0.8, parse_fraction, format_value)
    max_age: float = _setting(30 * 86400.0, parse_duration, format_duration)
    cleanup_interval: float = _setting(24 * 3600.0, parse_interval, format_duration)
    grace_period: float = _setting(300.0, parse_duration, format_duration)
    download_timeout: float = _setting(300.0, parse_timeout, format_duration)
    retries: int = _setting(5, parse_retries, format_value)
    connections: int = _setting(8, parse_connections, format_value)
    parallel_min_size: int = _setting(32 * 2**20, parse_size, format_size)
    lease_ttl: float = _setting(3600.0, parse_lease_ttl, format_duration)
    remote: str | None = _setting(None, parse_remote, format_value)
    remote_push: bool = _setting(True, parse_bool, format_value)
    shared: bool = _setting(False, parse_bool, format_value)
    offline: bool = _setting(False, parse_bool, format_value)
    durable: bool = _setting(True, parse_bool, format_value)
    allow_network_fs: bool = _setting(False, parse_bool, format_value)
    headers: tuple[tuple[str, str], ...] = _setting((), parse_headers, format_headers, secret=True)

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

    def public(self, key: str) -> object:
        """The value of ``key`` for ``cas config --json``: a secret one as its header names."""
        value = getattr(self, key)
        return [name for name, _ in value] if _FIELDS[key].metadata["secret"] else value

    @property
    def low_water_bytes(self) -> int:
        """The size that size-based cleanup frees down to."""
        return int(self.max_cache_size * self.low_water)


_FIELDS = {spec.name: spec for spec in fields(Settings)}
#: The names of every setting, in table order.
KEYS: tuple[str, ...] = tuple(_FIELDS)


def _show(value: object) -> str:
    """A raw value for an error message, as TOML would write it; a table as its keys only (a
    misspelt ``headers`` table must not show its tokens)."""
    import json  # here: only an error message needs it

    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = …" for key in value) + "}"
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
        shown = "(value hidden)" if _FIELDS[key].metadata["secret"] else _show(value)
        raise ConfigError(f"{where}: {key} = {shown}: {error}") from None


def _unknown(key: str, value: object, where: str) -> ConfigError:
    import difflib  # here: only a misspelt key needs it

    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(KEYS)}"
    # A misspelt secret (``header = "Authorization: …"``) must not be shown either.
    shown = "(value hidden)" if close and _FIELDS[close[0]].metadata["secret"] else _show(value)
    return ConfigError(f"{where}: unknown setting {key} = {shown}{hint}")


# -- where values come from ------------------------------------------------------------------------


def default_root() -> Path:
    """``$CAS_HOME``, else the platform's user cache folder for cas."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    import platformdirs  # here: a store given its root never needs it

    return Path(platformdirs.user_cache_dir("cas"))


def resolve_root(root: str | os.PathLike[str] | None, given_as: str = "--root") -> tuple[Path, str]:
    """The absolute store root and where it came from (``given_as``, CAS_HOME, or default)."""
    if root is not None:
        return Path(root).expanduser().absolute(), given_as
    source = f"environment variable {ENV_HOME}" if os.environ.get(ENV_HOME) else DEFAULT
    return default_root().expanduser().absolute(), source


class Config(NamedTuple):
    """The effective settings with where each came from, for ``cas config`` (a named tuple:
    cheaper to define than a dataclass, on the path of every command)."""

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
    import tomllib  # here: most stores have no config file to read

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
