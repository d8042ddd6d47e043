"""Fixtures for test harnesses: declare what a run needs, get local paths, held until the end.

``FixtureSession`` is the plain context manager for any runner (unittest, nox, a custom
script); the pytest plugin (cas/pytest_plugin.py) is a thin layer over it. Each fixture is
fetched if needed (one transfer however many processes ask at once) and leased until the
session ends, so cleanup cannot remove it while tests use it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from . import manifest
from .errors import NotFound
from .leases import Lease
from .store import Store


class FixtureUnavailable(NotFound):
    """A fixture is not in the store and may not be fetched (``auto_download`` is off)."""


class FixtureSession:
    """Paths of fixtures, leased for the life of the session.

    ``with FixtureSession.open(manifest="fixtures.toml") as fixtures:
    path = fixtures.path("models/tiny.gguf")``
    """

    def __init__(self, store: Store, manifest_path: str | os.PathLike[str] | None = None,
                 *, owns_store: bool = False) -> None:
        self.store = store
        self._owns_store = owns_store
        self._declared = (
            {fixture.name: fixture for fixture in manifest.load(manifest_path)}
            if manifest_path is not None else {}
        )
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, manifest: str | os.PathLike[str] | None = None, *,
             root: str | os.PathLike[str] | None = None, profile: str | None = None,
             **settings: Any) -> FixtureSession:
        """Open the store (``root``, ``profile`` and settings as for ``Store.open``) and a
        session over the fixtures of ``manifest``."""
        store = Store.open(root, profile=profile, **settings)
        try:
            return cls(store, manifest, owns_store=True)
        except BaseException:
            store.close()
            raise

    def path(self, name: str, *, url: str | None = None, blake3: str | None = None,
             sha256: str | None = None, size: int | None = None) -> Path:
        """The local path of fixture ``name``, fetched if needed and leased until close.

        Without ``url``, the fixture comes from the manifest, or from the store by name.
        Raises FixtureUnavailable when it is not stored and ``auto_download`` is off, and
        DownloadError or IntegrityError when fetching it fails.
        """
        with self._lock:
            if name in self._held:
                return self._held[name].path
            declared = self._declared.get(name)
            if url is None and declared is not None:
                url, blake3, sha256 = declared.url, declared.blake3, declared.sha256
                size = declared.size
            lease = self._lease(name, url, blake3, sha256, size)
            self._held[name] = lease
            return lease.path

    def _lease(self, name: str, url: str | None, blake3: str | None, sha256: str | None,
               size: int | None) -> Lease:
        if url is not None and self.store.settings.auto_download:
            # No network when the expected content is already stored.
            digest = self.store.fetch(url, name=name, blake3=blake3, sha256=sha256, size=size)
            return self.store.lease(digest)
        try:
            lease = self.store.lease(name)
        except NotFound as missing:
            if url is None:
                raise FixtureUnavailable(f"fixture {name!r} cannot be had: {missing}") from missing
            raise FixtureUnavailable(
                f"fixture {name!r} is not in the store and auto_download is off;"
                f" run `cas sync` or `cas fetch {url}` beforehand"
            ) from missing
        if blake3 is not None and lease.digest != blake3.lower():
            lease.release()
            raise FixtureUnavailable(
                f"fixture {name!r} in the store is {lease.digest}, not the {blake3} declared,"
                " and auto_download is off"
            )
        return lease

    def close(self) -> None:
        """Release every lease (and close the store if this session opened it)."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for lease in held:
            lease.release()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> FixtureSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
