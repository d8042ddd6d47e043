"""``cas lease``'s command: run to its end, with the signals sent to cas passed on to it.

The exit status is a shell's: the command's own, 128+N when signal N ended it, 127 when it does
not exist and 126 when it cannot be run.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from cas.errors import CasError


class CommandFailed(CasError):
    """The command of `cas lease` could not be started; statuses as a shell's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.exit_status = status


class Forwarder:
    """Runs one command and passes on to it the SIGTERM, SIGINT and SIGHUP sent to cas.

    Inside the ``with`` block those signals are blocked and taken with sigwaitinfo, so cas
    always lives to wait for its command and release its leases. A signal from a process
    (``kill``) is forwarded; one from the terminal (Ctrl-C, a hang-up) is not, since the
    terminal signals the whole foreground process group, the command included.
    """

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = environment  # the command's

    def __enter__(self) -> Forwarder:
        self._watched = self.SIGNALS | {signal.SIGCHLD}
        self._before = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        return self

    def __exit__(self, *_: object) -> None:
        # Take what is still pending, or unblocking would deliver it now: a SIGTERM would end
        # cas after the leases were released, but before it could report the status.
        while signal.sigtimedwait(self._watched, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self._before)

    def run(self, command: Sequence[str]) -> int:
        """Run ``command`` to its end; its exit status, or 128+N when signal N ended it.

        A signal that came before the command could start ends the run at once, without it.
        Raises CommandFailed with status 127 when the command does not exist, 126 when it
        cannot be executed.
        """
        for pending in sorted(signal.sigpending() & self.SIGNALS):
            return 128 + int(pending)
        try:
            pid = os.posix_spawnp(command[0], list(command), self._environment,
                                 setsigmask=self._before)
        except FileNotFoundError as error:
            raise CommandFailed(f"{command[0]}: command not found", 127) from error
        except OSError as error:
            raise CommandFailed(f"cannot run {command[0]}: {error.strerror}", 126) from error
        while True:
            info = signal.sigwaitinfo(self._watched)
            if info.si_signo != signal.SIGCHLD:
                if info.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL: sent by a process
                    os.kill(pid, info.si_signo)
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code: int = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code
