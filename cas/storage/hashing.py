"""Hashing: the store's one hash function, hashing open files, and copying while hashing.

BLAKE3-256 names every blob. Files already written are hashed through a memory map of the very
descriptor opened (``hash_fd``); content arriving from elsewhere is hashed while it is copied
into a staging file (``copy_hashing``), asking the kernel to write behind as it goes so that the
fsync before publishing waits for the tail only.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
from collections.abc import Callable
from typing import BinaryIO, cast

import blake3

#: Bytes read and hashed at a time while staging: bounded memory, large enough for speed.
CHUNK_SIZE = 1 << 20
#: Files at least this large are hashed through a memory map (no copy through user space) when
#: /proc is missing (see ``hash_fd``), and from ``PARALLEL_HASH_SIZE`` on with every core.
MMAP_MIN_SIZE = 64 * 1024
PARALLEL_HASH_SIZE = 64 << 20
#: A durable staging copy starts the writeback of every this many bytes as it goes. Left to the
#: kernel, nothing is written before the fsync (dirty_background_ratio is GiBs of memory), so a
#: 1 GiB pull from the remote tier spent 0.4 s, a tenth of its time, waiting in that fsync.
WRITE_BEHIND = 32 << 20
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (reflink) on btrfs, XFS, ...
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, no wait
_PROC_FD = os.path.isdir("/proc/self/fd")


def hasher(*, parallel: bool = False) -> blake3.blake3:
    """A new BLAKE3-256 hasher: the one hash function of the store (on every core if
    ``parallel``: worth it for inputs of many MiB)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO if parallel else 1)


def hash_fd(fd: int, size: int) -> str:
    """The BLAKE3 digest of the open file ``fd``, whose size is ``size``.

    Through ``/proc/self/fd``, blake3 maps and hashes the very file already opened (no path is
    resolved again, so no symlink can be swapped in) without holding the GIL at all: threads
    hashing many files then run in parallel (1.3x faster than Python's mmap here). Elsewhere
    Python maps the file itself; small files are read.
    """
    digest = hasher(parallel=size >= PARALLEL_HASH_SIZE)
    if size and _PROC_FD:
        digest.update_mmap(f"/proc/self/fd/{fd}")
    elif size >= MMAP_MIN_SIZE:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            digest.update(view)
    elif size:
        left = size
        while left and (chunk := os.pread(fd, left, size - left)):
            digest.update(chunk)
            left -= len(chunk)
    return str(digest.hexdigest())


def copy_hashing(source: BinaryIO, fd: int, *, write_behind: bool = False) -> tuple[str, int]:
    """Copy ``source`` to ``fd`` in chunks, returning the BLAKE3 digest and the size.

    With ``write_behind`` (the copy will be fsynced), the kernel is asked to start writing every
    ``WRITE_BEHIND`` bytes, so that the fsync waits for the tail only.
    """
    written = 0  # bytes handed to the kernel's writeback so far
    digest = hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    readinto = getattr(source, "readinto", None)
    while True:
        chunk: bytes | memoryview
        if readinto is not None:
            count = readinto(buffer)
            chunk = view[:count] if count else b""
        else:
            chunk = source.read(CHUNK_SIZE)
        if chunk is None:
            raise BlockingIOError(errno.EAGAIN, "a non-blocking source returned no data")
        if isinstance(chunk, str):
            raise TypeError("the source is a text stream; open it in binary mode")
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        write_all(fd, chunk)
        size += len(chunk)
        if write_behind and size - written >= WRITE_BEHIND:
            start_writeback(fd, written, size - written)
            written = size


def clone_hashing(source: BinaryIO, fd: int) -> tuple[str, int]:
    """Copy the file ``source`` to ``fd`` with the fastest safe copy the filesystem offers;
    return the copy's BLAKE3 digest and size.

    A reflink (FICLONE) shares extents copy-on-write, so later changes to the source cannot
    reach the copy, which is then hashed; elsewhere (ext4, tmpfs) the bytes are copied and
    hashed in one pass.
    """
    try:
        fcntl.ioctl(fd, _FICLONE, source.fileno())
    except OSError:
        return copy_hashing(source, fd)
    # Read in chunks, not mapped: a mapped 1 GiB file counts 1 GiB of resident set.
    hashing, size = hasher(), 0
    while chunk := os.pread(fd, CHUNK_SIZE, size):
        hashing.update(chunk)
        size += len(chunk)
    return hashing.hexdigest(), size


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``: every staging write goes through here."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` to ``fd`` at ``offset``: every staging write at an offset (ranges
    written in parallel) goes through here."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


@functools.cache
def _libc(name: str, *argtypes: str) -> Callable[..., int] | None:
    """The libc function ``name`` taking ctypes ``argtypes`` (Linux), or None where there is
    none: Python's os module has neither sync_file_range nor syncfs."""
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = [getattr(ctypes, argtype) for argtype in argtypes]
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of ``fd`` (a hint: the fsync still decides)."""
    function = _libc("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")
    if function is not None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd``; every filesystem where syncfs is missing."""
    function = _libc("syncfs", "c_int")
    if function is not None:
        if function(fd) == 0:
            return
        import ctypes

        code = ctypes.get_errno()
        if code != errno.ENOSYS:
            raise OSError(code, os.strerror(code))
    os.sync()
