"""cas: a content-addressed store for test fixtures and other large files.

Distributed as ``cas-fixtures``; imported as ``cas``. The public names load on first use
(PEP 562), so that ``import cas`` and the modules under it (the pytest plugin, the command
line's quick commands) pay only for what they touch. Every public name is documented in
docs/api.md, whose list the tests compare with ``__all__``.
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
        RemoteError,
        StoreError,
        UsageError,
    )
    from cas.harness import FixtureSession, FixtureUnavailable
    from cas.ops.eviction import Item as GcItem
    from cas.ops.eviction import Plan as GcPlan
    from cas.ops.leases import Lease
    from cas.ops.manifest import SyncReport
    from cas.ops.registry import manifest_from_pooch
    from cas.ops.tier import TransferReport
    from cas.ops.verify import Finding, VerifyReport
    from cas.settings import Settings
    from cas.storage.counters import Counter
    from cas.storage.metrics import Stats, Usage, human_size
    from cas.store import Entry, Store

__version__ = "0.1.0"
#: The name on the package index (``pip install cas-fixtures``): ``cas`` there is another project.
DISTRIBUTION = "cas-fixtures"

#: Where each public name lives: a module, or ``module:attribute`` when the public name is not
#: the attribute's own.
_HOMES = {
    "CasError": "cas.errors",
    "CatalogError": "cas.errors",
    "ConfigError": "cas.errors",
    "DownloadError": "cas.errors",
    "IntegrityError": "cas.errors",
    "InUse": "cas.errors",
    "NotFound": "cas.errors",
    "RemoteError": "cas.errors",
    "StoreError": "cas.errors",
    "UsageError": "cas.errors",
    "Settings": "cas.settings",
    "Entry": "cas.store",
    "Store": "cas.store",
    "Lease": "cas.ops.leases",
    "GcPlan": "cas.ops.eviction:Plan",
    "GcItem": "cas.ops.eviction:Item",
    "VerifyReport": "cas.ops.verify",
    "Finding": "cas.ops.verify",
    "TransferReport": "cas.ops.tier",
    "SyncReport": "cas.ops.manifest",
    "manifest_from_pooch": "cas.ops.registry",
    "Stats": "cas.storage.metrics",
    "Usage": "cas.storage.metrics",
    "Counter": "cas.storage.counters",
    "human_size": "cas.storage.metrics",
    "FixtureSession": "cas.harness",
    "FixtureUnavailable": "cas.harness",
}

__all__ = [
    "CasError",
    "CatalogError",
    "ConfigError",
    "Counter",
    "DownloadError",
    "Entry",
    "Finding",
    "FixtureSession",
    "FixtureUnavailable",
    "GcItem",
    "GcPlan",
    "InUse",
    "IntegrityError",
    "Lease",
    "NotFound",
    "RemoteError",
    "Settings",
    "Stats",
    "Store",
    "StoreError",
    "SyncReport",
    "TransferReport",
    "Usage",
    "UsageError",
    "VerifyReport",
    "__version__",
    "human_size",
    "manifest_from_pooch",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    module, _, attribute = home.partition(":")
    value = getattr(import_module(module), attribute or name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
