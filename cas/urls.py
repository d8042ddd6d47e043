"""URLs as cas records and shows them: never with the credentials a caller wrote into them.

A URL may carry ``user:password@`` (or a token as the user, as GitHub's do). The download sends
them as HTTP Basic authentication (transfer/http.py); everything else (the catalog, log lines,
error messages, ``ls --json``, the remote tier) sees the URL without its userinfo, the form
``redact`` returns. A re-fetch from a recorded source therefore goes without credentials
(docs/architecture.md, "Credentials in URLs").
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# The userinfo of an absolute URL, for text that urlsplit cannot parse (a bad IPv6 literal):
# everything between "//" and the last "@" of the authority (which ends at / ? or #).
_USERINFO = r"(?<=//)[^/?#]*@"  # compiled and cached by re on first use, not at import


def split_credentials(url: str) -> tuple[str, str | None]:
    """(``url`` without its userinfo, the percent-decoded ``user:password`` or None).

    A URL without userinfo comes back unchanged. The userinfo ends at the authority's last
    ``@``, as urllib3 and curl read it; a password that holds ``/``, ``?`` or ``#`` must be
    percent-encoded, as RFC 3986 requires.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(_USERINFO, "", url, count=1), None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), f"{unquote(user)}:{unquote(password)}"


def redact(url: str) -> str:
    """``url`` without the credentials it may carry: the only form cas records or shows."""
    return split_credentials(url)[0]


def redact_optional(url: str | None) -> str | None:
    """``redact`` for a URL that may be absent (a name without a source)."""
    return None if url is None else redact(url)
