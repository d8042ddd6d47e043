"""What every command module of the command line shares: the store, output, and how it ends.

``Context`` holds what the global options decided and opens the store on first use
(``pass_context`` hands it to a command); ``CasGroup`` turns every error (a CasError, click's
usage errors, Ctrl-C, a closed pipe) into a single ``cas: error:`` line and the exit status SPEC
promises; ``say`` writes the summaries that ``-q`` leaves out; ``bars`` decides whether progress
bars are drawn; ``log_to_stderr`` points cas's log there at the level -v, -vv or -q asks for.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from cas.errors import CasError
from cas.logs import configure

if TYPE_CHECKING:
    import logging

    from cas import Store


class Context:
    """What the global options decided; opens the store on first use."""

    def __init__(self, root: str | None, config_file: str | None, profile: str | None,
                 offline: bool) -> None:
        self.root = root
        self.config_file = config_file
        self.profile = profile
        #: The settings the flags give (``--offline``), above every other source.
        self.overrides: dict[str, Any] = {"offline": True} if offline else {}
        self._store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            from cas import Store
            from cas.settings import COMMAND_LINE

            self._store = Store.open(self.root, config_file=self.config_file,
                                     profile=self.profile, given_as=COMMAND_LINE,
                                     **self.overrides)
            click.get_current_context().call_on_close(self._store.close)
            resume_collector()
        return self._store


pass_context = click.make_pass_decorator(Context)


class CasGroup(click.Group):
    """A click group whose every error is one ``cas: error:`` line and a stable exit status."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            status = super().main(
                args, prog_name or "cas", complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.Abort:
            fail("interrupted", 130)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except CasError as error:
            fail(str(error), error.exit_status)
        except BrokenPipeError:
            sys.stderr.close()  # a closed pipe (`cas cat | head`) is not an error
            sys.exit(0)
        if not standalone_mode:
            return status
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a closed pipe and Ctrl-C are handled here, before click turns
        them into status 1 and an extra blank line."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `cas cat x | head`: the reader has what it wanted. Point stdout at /dev/null so
            # the flush at exit cannot fail again, and exit 0 like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:
            fail("interrupted", 130)


def quiet() -> bool:
    return bool(click.get_current_context().find_root().params.get("quiet"))


def bars() -> bool:
    """Whether to show progress bars: on a terminal, unless -q."""
    return sys.stderr.isatty() and not quiet()


def say(message: str) -> None:
    """A summary line on stderr, which -q leaves out (only errors and results remain)."""
    if not quiet():
        click.echo(message, err=True)


def echo_lines(lines: Sequence[str]) -> None:
    for line in lines:
        click.echo(line)


def fail(message: str, status: int) -> None:
    click.echo(f"cas: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


def log_to_stderr(verbose: int, quiet: bool) -> None:
    """Send cas's log to stderr as ``cas: message`` lines: warnings, -v info, -vv debug, and
    with -q errors only. A run that logs nothing never imports ``logging`` (cas/logs.py)."""
    stream = sys.stderr

    def setup(log: logging.Logger) -> None:
        import logging

        level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[
            min(verbose, 2)
        ]
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("cas: %(message)s"))
        log.handlers[:] = [handler]
        log.setLevel(level)
        log.propagate = False

    configure(setup)


#: Whether ``pause_collector`` paused the cyclic garbage collector (for ``resume_collector``).
_paused = False


def pause_collector() -> None:
    """Pause the cyclic garbage collector while a command starts. Start-up (imports, opening
    the store) makes tens of thousands of objects that live until exit, which the collector
    would otherwise traverse again and again: about a twentieth of a whole ``cas path``."""
    global _paused
    _paused = True
    gc.disable()


def resume_collector() -> None:
    """Resume the collector if ``pause_collector`` paused it, with what start-up made frozen
    out of its way (``gc.freeze``): it lives until exit and is never traversed again."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
