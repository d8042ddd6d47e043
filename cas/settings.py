"""Settings: one frozen object, built once when a store opens and passed down.

Nothing else in cas reads the environment or configuration files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from .errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``5GB``, ``5GiB`` or ``1024``."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like 5GiB")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _QUANTITY.fullmatch(value)):
        number, unit = float(match[1]), match[2].lower()
    else:
        raise ValueError("a size must be a non-negative number of bytes or like 5GB, 5GiB")
    if unit not in _SIZE_UNITS or number < 0:
        raise ValueError(f"unknown size unit {unit!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``90s``, ``12h`` or ``7d``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or a string like 90s, 12h, 7d")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _QUANTITY.fullmatch(value)):
        number, unit = float(match[1]), match[2].lower()
    else:
        raise ValueError("a duration must be non-negative seconds or like 90s, 12h, 7d")
    if unit not in _DURATION_UNITS or number < 0:
        raise ValueError(f"unknown duration unit {unit!r}; use s, m, h, d or w")
    return number * _DURATION_UNITS[unit]


def default_root() -> Path:
    """``$CAS_HOME``, else the platform's user cache folder for cas."""
    home = os.environ.get("CAS_HOME")
    return Path(home) if home else Path(platformdirs.user_cache_dir("cas"))


@dataclass(frozen=True)
class Settings:
    """Every setting of a store (see the table in the README)."""

    auto_download: bool = True
    max_cache_size: int = 10 * 2**30
    low_water: float = 0.8
    max_age: float = 30 * 86400.0
    cleanup_interval: float = 24 * 3600.0
    grace_period: float = 300.0
    download_timeout: float = 300.0
    retries: int = 5
    lease_ttl: float = 3600.0
    remote: str | None = None
    shared: bool = False

    @classmethod
    def keys(cls) -> list[str]:
        return [field.name for field in fields(cls)]


def load_settings(root: Path, overrides: dict[str, Any]) -> Settings:
    """The settings of the store at ``root``, with keyword overrides applied last."""
    unknown = sorted(set(overrides) - set(Settings.keys()))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} given as a keyword argument")
    return Settings(**overrides)
