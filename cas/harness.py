"""Fixtures for test harnesses: declare what a run needs, get local paths, held until the end.

``FixtureSession`` is the plain context manager for any runner (unittest, nox, a custom
script); the pytest plugin (cas/pytest_plugin.py) is a thin layer over it. Each fixture is
fetched if needed (one transfer however many processes ask at once) and leased until the
session ends, so cleanup cannot remove it while tests use it.

Every expected digest and size of a fixture is checked against the content it is served from,
with ``auto_download`` off or offline too: a stored blob whose content matches the entry
satisfies it (``cas fetch URL`` beforehand is enough), whatever the name points at does not
unless it matches. The hint for an unavailable fixture is a command that makes it available.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas.errors import NotFound, offline_message
from cas.ops import manifest
from cas.ops.fetch import expectation
from cas.store import Store
from cas.urls import redact

if TYPE_CHECKING:
    from cas import Lease
    from cas.ops.fetch import Expected

#: What a fixture is expected to be: BLAKE3 digest, SHA-256 and size, each optional.
#: What a fixture is expected to be: blake3, sha256, size, sha1, md5 (``fetch.expectation``).
Wanted = tuple[str | None, str | None, int | None, str | None, str | None]


class FixtureUnavailable(NotFound):
    """A fixture is not in the store and may not be fetched (``auto_download`` is off, or cas
    is offline)."""


class FixtureSession:
    """Paths of fixtures, leased for the life of the session.

    ``with FixtureSession.open(manifest="fixtures.toml") as fixtures:
    path = fixtures.path("models/tiny.gguf")``
    """

    def __init__(self, store: Store, manifest_path: str | os.PathLike[str] | None = None,
                 *, owns_store: bool = False) -> None:
        self.store = store
        self._owns_store = owns_store
        self._manifest = os.path.abspath(manifest_path) if manifest_path is not None else None
        #: The settings profile this session's store was opened with, for the hint.
        self.profile: str | None = None
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
            session = cls(store, manifest, owns_store=True)
        except BaseException:
            store.close()
            raise
        session.profile = profile
        return session

    def path(self, name: str, *, url: str | None = None, blake3: str | None = None,
             sha256: str | None = None, sha1: str | None = None, md5: str | None = None,
             size: int | None = None) -> Path:
        """The local path of fixture ``name``, fetched if needed and leased until close.

        Without ``url``, the fixture comes from the manifest, or from the store by name.
        Raises FixtureUnavailable when it is not stored and ``auto_download`` is off or cas is
        offline, and
        DownloadError or IntegrityError when fetching it fails.
        """
        with self._lock:
            if name in self._held:
                return self._held[name].path
            declared = self._declared.get(name) if url is None else None
            unpack = None
            if declared is not None:
                url, blake3, sha256 = declared.url, declared.blake3, declared.sha256
                sha1, md5 = declared.sha1, declared.md5
                size, unpack = declared.size, declared.unpack
            headers = declared.headers if declared is not None else ()
            lease = self._lease(name, url, (blake3, sha256, size, sha1, md5),
                                declared is not None, headers, unpack)  # fmt: skip
            self._held[name] = lease
            return lease.path

    def _lease(self, name: str, url: str | None, wanted: Wanted, declared: bool,
               headers: Sequence[tuple[str, str]] = (), unpack: str | None = None) -> Lease:
        expected = expectation(*wanted)  # UsageError for a malformed digest or size
        # The expected values of an unpacked fixture are its archive's: the name decides.
        described = "" if unpack else _described(expected)
        settings = self.store.settings
        if url is not None and settings.auto_download and not settings.offline:
            # No network when the expected content is already stored.
            digest = self.store.fetch(url, name=name, size=expected.size, blake3=expected.blake3,
                                      sha256=expected.sha256, sha1=expected.sha1,
                                      md5=expected.md5, headers=dict(headers),
                                      unpack=unpack)  # fmt: skip
            return self.store.lease(digest, name=name)
        if not described:  # nothing to check the content against: the name decides
            try:
                return self.store.lease(name)
            except NotFound as missing:
                if url is None:
                    raise FixtureUnavailable(
                        f"fixture {name!r} cannot be had: {missing}"
                    ) from missing
        # Served only from content that matches every expected digest and size (no network).
        found = self.store.stored(url, name=name, size=expected.size, blake3=expected.blake3,
                                  sha256=expected.sha256, sha1=expected.sha1,
                                  md5=expected.md5)  # fmt: skip
        if found is not None:
            try:
                return self.store.lease(found, name=name)
            except NotFound:
                pass  # removed by cleanup since: as unavailable as if never stored
        if url is None:
            raise FixtureUnavailable(
                f"fixture {name!r} with the expected {described} is not in the store"
            )
        if settings.offline:
            raise FixtureUnavailable(
                offline_message(f"fixture {name!r} is not in the store")
                + f"; run `{self._hint(url, declared)}` beforehand, with the network"
            )
        raise FixtureUnavailable(
            f"fixture {name!r} is not in the store and auto_download is off;"
            f" run `{self._hint(url, declared)}` beforehand"
        )

    def _hint(self, url: str, declared: bool) -> str:
        """A command that makes the fixture available to this session's store."""
        words = ["cas", "--root", str(self.store.root)]
        words += ["--profile", self.profile] if self.profile else []
        if declared and self._manifest is not None:
            words += ["sync", self._manifest]
        else:
            words += ["fetch", redact(url)]
        return shlex.join(words)

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


def _described(expected: Expected) -> str:
    """The expected digests and size, for a message."""
    parts = [f"blake3 {expected.blake3}"] if expected.blake3 else []
    parts += [f"{key} {value}" for key, value in expected.upstream().items()]
    parts += [f"size {expected.size}"] if expected.size is not None else []
    return ", ".join(parts)
