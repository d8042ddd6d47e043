"""cas: a content-addressed store for test fixtures and other large files."""

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
