"""cas's log: the standard library's logger named ``cas``, with ``logging`` imported only when
something is logged.

Importing ``logging`` costs milliseconds (it brings traceback, string and textwrap), and most
runs of a command log nothing: ``log`` stands for the logger and loads it on first use, and
``configure`` sets the logger up now if ``logging`` is loaded, else when cas first logs. Every
cas module logs through ``log``, so a deferred set-up is always applied before a record.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

NAME = "cas"

_lock = threading.Lock()
_pending: Callable[[logging.Logger], None] | None = None


class _Log:
    """The logger named ``cas``, looked up (and set up, when a set-up waits) on first use."""

    def __getattr__(self, attribute: str) -> Any:
        return getattr(_logger(), attribute)

    def __repr__(self) -> str:
        return f"<cas log {NAME!r}>"


def _logger() -> logging.Logger:
    global _pending
    import logging

    logger = logging.getLogger(NAME)
    if _pending is not None:
        with _lock:
            setup, _pending = _pending, None
            if setup is not None:
                setup(logger)
    return logger


#: The logger named ``cas``; ``logging`` loads when it is first used.
log: logging.Logger = _Log()  # type: ignore[assignment]


def configure(setup: Callable[[logging.Logger], None]) -> None:
    """Run ``setup`` on the ``cas`` logger: now when ``logging`` is loaded, else before cas
    first logs (a later ``configure`` replaces one still waiting)."""
    global _pending
    with _lock:
        _pending = setup
    if "logging" in sys.modules:
        _logger()
