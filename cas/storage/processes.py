"""Is a process alive? The one answer for leases, staging files and partial downloads.

A holder is a process, named by its *place*, its pid and its start time. The place says where
that pid means something: the host name, the boot id and the PID namespace. Two containers
with host networking share a host name, yet a pid of one names a different process (or none) in
the other; a pid from before a reboot names nothing now. So a holder is judged dead only when it
is provably of this place (same host name, boot and PID namespace, and a ``/proc`` of that
namespace to look in) and its pid now runs no process started when it did, or a zombie. Any
other holder is never judged dead: its leases expire and its staging files age out instead.

The start time guards against pid reuse. A zombie has exited: it holds nothing.

The on-disk records stay those of version 2 of the schema: a lease's ``host`` column holds the
place (``<host name>/<boot id>/<PID namespace>``), which an older cas compares with its bare
host name, finds different, and so leaves to expiry, which is safe.
"""

from __future__ import annotations

import os
import re
from functools import cache
from typing import NamedTuple

_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def forks() -> int:
    """How many times this process's lineage forked: the one way every part of cas tells that
    it runs in a forked child, which must not reuse its parent's connections, sockets, clients
    or leases. Comparing a number is cheaper than a getpid() on a hot path."""
    return _forks


class Holder(NamedTuple):
    """A process: where its pid is meaningful (``place()``), its pid, and when it started
    (a named tuple: cheaper to define than a dataclass, on the path of every command)."""

    place: str
    pid: int
    started: float


@cache
def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _read(path: str) -> str:
    """The text of a small /proc or /sys file, or "" where it does not exist (not Linux)."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return ""


def _namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" without /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@cache
def _place_of(pid: int) -> str:
    # Per pid: a child forked after unshare(CLONE_NEWPID) lives in another namespace.
    import socket

    boot = _read("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}/{boot}/{_namespace()}"


def place() -> str:
    """Where this process's pids mean something: ``<host name>/<boot id>/<PID namespace>``."""
    return _place_of(os.getpid())


@cache
def _proc_state(pid: int) -> bool | None:
    """For process ``pid`` (this one): True if ``/proc`` shows this PID namespace's processes,
    False if it shows another's (a new namespace without its own /proc mount), None without
    ``/proc``."""
    try:
        return os.readlink("/proc/self") == str(pid)
    except FileNotFoundError:
        return None
    except OSError:
        return False


def _stat_fields(name: str) -> list[str] | None:
    """The fields of ``/proc/<name>/stat`` after the command name; None if no such process."""
    try:
        with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None


def _start_of(fields: list[str]) -> float | None:
    if fields[0] in ("Z", "X"):  # exited (a zombie or dying): it holds nothing any more
        return None
    # Field 22 of stat (index 19 after the command name) is the start time in clock ticks.
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds), or None if there is no such process or it
    has exited (a zombie). 0.0 when /proc cannot be read: alive, with an unknown start."""
    try:
        fields = _stat_fields(str(pid))
    except OSError:
        return 0.0
    return None if fields is None else _start_of(fields)


def this_process() -> Holder:
    """The current process as a holder."""
    try:  # /proc/self: right even when /proc is another namespace's
        fields = _stat_fields("self")
    except OSError:
        fields = None
    started = _start_of(fields) if fields else None
    return Holder(place(), os.getpid(), started or 0.0)


def is_dead(holder: Holder) -> bool:
    """Whether ``holder`` is provably gone: a process of this place (host, boot and PID
    namespace) that no longer runs, or that exited and is a zombie. Any other is alive."""
    if holder.place != place():
        return False
    proc = _proc_state(os.getpid())
    if proc is False:  # pids in /proc are another namespace's: nothing can be proven
        return False
    if proc is None:  # no /proc (not Linux): the pid alone, with kill(0)
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


# -- staging files named by their writer ---------------------------------------------------------
# A staging file's name says which process writes it, so that cleanup removes a killed writer's
# files at once instead of after a day, and never a live writer's. Partial downloads are named
# so too (``dl-<key>-<tag><random>.part`` and its sidecar).

#: A pattern string, compiled and cached by re on first use (a scan of tmp/), not at import.
_TAG = r"(?:^|-)([0-9a-f]{16})\.(\d+)\.(\d+)-"


def _place_hash(where: str) -> str:
    import hashlib

    return hashlib.blake2s(where.encode(), digest_size=8).hexdigest()


@cache
def _tag_of(pid: int) -> str:
    holder = this_process()
    return f"{_place_hash(holder.place)}.{holder.pid}.{int(holder.started)}-"


def staging_tag() -> str:
    """This process as part of a file name: ``<place hash>.<pid>.<start time>-``."""
    return _tag_of(os.getpid())


def written_by_dead_process(name: str) -> bool:
    """Whether the file ``name``, which carries a ``staging_tag`` after its prefix (``put-``,
    ``dl-<key>-``), was written by a process that ``is_dead``. Names without a tag, or with
    the tag of another place (an older cas, another PID namespace, host or boot), never are."""
    match = re.search(_TAG, name)
    if match is None or match[1] != _place_hash(place()):
        return False
    return is_dead(Holder(place(), int(match[2]), float(match[3])))


def written_by_this_process(name: str) -> bool:
    """Whether the file ``name`` carries this process's ``staging_tag``."""
    match = re.search(_TAG, name)
    return match is not None and match.group(0).lstrip("-") == staging_tag()
