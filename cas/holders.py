"""Who holds a lease: a process, named by host, pid and start time.

A pid alone is fooled by reuse, so the process's start time is recorded too; and a process on
another host is never judged dead, only left to let its leases expire.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float


@cache
def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:
        return 0.0  # /proc unreadable: treat the process as alive, with an unknown start
    # Field 22 of stat (index 19 after the command name) is the start time in clock ticks.
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def this_process() -> Holder:
    """The current process as a lease holder."""
    pid = os.getpid()
    return Holder(socket.gethostname(), pid, start_time(pid) or 0.0)


def is_dead(holder: Holder) -> bool:
    """Whether ``holder`` is known to be gone: a process of this host that no longer runs."""
    if holder.host != socket.gethostname():
        return False
    if not os.path.exists("/proc/self/stat"):
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    started = start_time(holder.pid)
    if started is None:
        return True
    # Start times are in clock ticks; a different process with the same pid starts elsewhen.
    return bool(holder.started) and bool(started) and abs(started - holder.started) > 1.0


# -- staging files named by their writer (issue 6) ----------------------------------------------
# A staging file's name says which process writes it, so that cleanup removes a killed writer's
# files at once instead of after a day, and never a live writer's.

_TAG = re.compile(r"([0-9a-f]{8})\.(\d+)\.(\d+)-")


def _host_hash(host: str) -> str:
    return hashlib.blake2s(host.encode(), digest_size=4).hexdigest()


@cache
def _tag_of(pid: int) -> str:
    holder = this_process()
    return f"{_host_hash(holder.host)}.{holder.pid}.{int(holder.started)}-"


def staging_tag() -> str:
    """This process as the start of a file name: ``<host hash>.<pid>.<start time>-``."""
    return _tag_of(os.getpid())


def written_by_dead_process(name: str, prefix: str) -> bool:
    """Whether ``name`` (``prefix`` + a ``staging_tag``) was written by a process of this host
    that is gone. Unknown or foreign names are never judged dead."""
    match = _TAG.match(name, len(prefix)) if name.startswith(prefix) else None
    if match is None or match[1] != _host_hash(socket.gethostname()):
        return False
    return is_dead(Holder(socket.gethostname(), int(match[2]), float(match[3])))
