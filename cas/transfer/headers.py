"""The private headers of a request: credentials and extra headers, made when it is sent.

A URL's ``user:password@`` becomes HTTP Basic authentication; the extra headers (the ``headers``
setting, a manifest entry's, a fetch's) follow, with each ``${VAR}`` read from the environment
now, at request time, so a token rotated while a long sync runs is picked up by its next
request, and a header that names an unset variable fails in one line naming the variable.
An extra ``Authorization`` replaces the URL's credentials. These headers go to the URL's own
origin only: a redirect to another scheme, host or port is followed without them
(transfer/responses.py, ``for_origin_of``). No message here holds a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import urllib3

from cas.errors import UsageError
from cas.values import Headers, expand_header, header_variables


def private_headers(url: str, credentials: str | None, headers: Headers,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers that carry secrets for a request to ``url`` (given without credentials):
    Authorization from ``credentials``, then ``headers`` expanded from ``environ`` (default:
    the process environment, read now). Raises UsageError naming a header whose variable is
    not set or holds a line break."""
    env = os.environ if environ is None else environ
    made: dict[str, str] = {}
    if credentials is not None:
        made.update(urllib3.util.make_headers(basic_auth=credentials))
    for name, template in headers:
        try:
            value = expand_header(template, env)
        except KeyError as missing:
            raise UsageError(
                f"header {name} for {url}: environment variable {missing.args[0]} is not set"
            ) from None
        if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
            variables = ", ".join(header_variables(template))
            raise UsageError(f"header {name} for {url}: environment variable {variables} holds"
                             " a line break or control character")  # fmt: skip
        try:
            value.encode("latin-1")  # what http.client sends; its own error would show it
        except UnicodeEncodeError:
            raise UsageError(f"header {name} for {url}: its value holds characters outside"
                             " Latin-1, which HTTP headers cannot carry") from None
        for other in [key for key in made if key.lower() == name.lower()]:
            del made[other]
        made[name] = value
    return made
