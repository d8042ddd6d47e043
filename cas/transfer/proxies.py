"""Forward proxies from the environment: ``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``.

The standard library reads the variables (``urllib.request.getproxies_environment``: lower-case
forms win over upper-case) and decides the bypass (``proxy_bypass_environment``: a host, a domain
suffix, ``host:port``, or ``*``). Each request URL is decided on its own, so a redirect to
another host may leave or enter the proxy. A proxied request goes through a
``urllib3.ProxyManager`` with the downloader's whole-header pool classes: absolute-form GETs for
http, a CONNECT tunnel for https. Credentials in a proxy URL (``http://user:pass@proxy:3128``) go
only into a Proxy-Authorization header; every message names the proxy without them
(cas/urls.py). With no proxy variable set nothing here is built and the standard library is not
even imported: the direct path stays as it was.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import urllib3

from cas.errors import UsageError
from cas.urls import redact, split_credentials


def configured() -> dict[str, str] | None:
    """The proxy variables of the environment as the standard library reads them (keys
    ``http``, ``https``, ``no``, ...), or None when none is set (checked without importing
    urllib.request)."""
    if not any(name[-6:].lower() == "_proxy" for name in os.environ):
        return None
    import urllib.request

    return urllib.request.getproxies_environment() or None


class Proxies:
    """The proxy managers of one downloader, one per proxy URL, made on first use."""

    def __init__(self, environment: dict[str, str],
                 manager: urllib3.PoolManager) -> None:  # fmt: skip
        self._environment = environment
        self._template = manager  # the direct PoolManager: its pool classes and TLS settings
        self._managers: dict[str, urllib3.ProxyManager] = {}

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL (with its credentials) for ``url``, or None to go direct."""
        import urllib.request

        parts = urlsplit(url)
        proxy = self._environment.get(parts.scheme.lower())
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if not proxy or bypass(parts.netloc.rpartition("@")[2], self._environment):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"

    def route(self, url: str) -> tuple[urllib3.PoolManager, str]:
        """The manager to request ``url`` with, and how errors say it went ("" when direct,
        else " through proxy <its URL without credentials>")."""
        proxy = self.proxy_for(url)
        if proxy is None:
            return self._template, ""
        return self.manager(proxy), f" through proxy {redact(proxy)}"

    def manager(self, proxy: str) -> urllib3.ProxyManager:
        """The ProxyManager for ``proxy`` (as ``proxy_for`` returned it)."""
        found = self._managers.get(proxy)
        if found is None:
            address, credentials = split_credentials(proxy)
            if urlsplit(address).scheme.lower() not in ("http", "https"):
                raise UsageError(
                    f"proxy {address} (from the environment's *_PROXY variables): only http and"
                    " https proxies are supported"
                )
            auth = urllib3.util.make_headers(proxy_basic_auth=credentials) if credentials else {}
            template = self._template
            found = urllib3.ProxyManager(
                address, num_pools=16, proxy_headers=auth, **template.connection_pool_kw
            )
            found.pool_classes_by_scheme = template.pool_classes_by_scheme
            self._managers[proxy] = found
        return found

    def clear(self, direct: urllib3.PoolManager | None = None) -> None:
        """Close the pooled connections to every proxy (after a fork: forget them, and go
        direct with ``direct``, the child's own PoolManager)."""
        for manager in self._managers.values():
            manager.clear()
        self._managers.clear()
        if direct is not None:
            self._template = direct
