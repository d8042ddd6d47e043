"""cas: a content-addressed store for test fixtures and other large files.

Distributed as ``cas-fixtures``; imported as ``cas``. The public names load on first use
(PEP 562), so that ``import cas`` and the modules under it (the pytest plugin, the command
line's quick commands) pay only for what they touch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.errors import (
        CasError,
        CatalogError,
        ConfigError,
        DownloadError,
        IntegrityError,
        InUse,
        NotFound,
        StoreError,
        UsageError,
    )
    from cas.settings import Settings
    from cas.store import Entry, Store

__version__ = "0.1.0"
#: The name on the package index (``pip install cas-fixtures``): ``cas`` there is another project.
DISTRIBUTION = "cas-fixtures"

#: Where each public name lives.
_HOMES = {
    "CasError": "cas.errors",
    "CatalogError": "cas.errors",
    "ConfigError": "cas.errors",
    "DownloadError": "cas.errors",
    "IntegrityError": "cas.errors",
    "InUse": "cas.errors",
    "NotFound": "cas.errors",
    "StoreError": "cas.errors",
    "UsageError": "cas.errors",
    "Settings": "cas.settings",
    "Entry": "cas.store",
    "Store": "cas.store",
}

__all__ = [
    "CasError",
    "CatalogError",
    "ConfigError",
    "DownloadError",
    "Entry",
    "InUse",
    "IntegrityError",
    "NotFound",
    "Settings",
    "Store",
    "StoreError",
    "UsageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
