"""One sandbox's lock, across every ext.local worker process on this machine.

Any number of ext.local workers may share one root (docs/pools.md, "make chaos"'s
``conflicting`` scenario runs two), and a redelivered provision job can reach one
worker while another tears the same sandbox down. Without a lock their steps
interleave: a provision that makes a cgroup after the teardown removed the
sandbox's leaves it behind, one that records its holder after the teardown read
``state.json`` leaves the holder running; a pause that freezes the group between a
teardown's thaw and its kill leaves it frozen and unremovable; a teardown under a
snapshot's copy of the workspace leaves the copy partial. The steps that make, unmake,
freeze or thaw a sandbox's processes and groups, and a snapshot's copy, therefore hold
this lock, one caller at a time.

It is a one-byte range of one file per root, ``<root>/.sandbox-locks``, locked with an
open file description lock (``F_OFD_SETLK``) at an offset hashed from the sandbox's id.
The kernel releases it with the description, so with the process, even after ``kill -9``:
a dead worker never holds a sandbox. Each holder opens the file afresh, so two steps of
one process exclude each other as two processes do (a POSIX record lock would not: it is
the process's, and any close of the file drops all of them).

Why not a file per sandbox (``flock`` on ``<root>/.locks/<id>``, as until 2026-12-06):
making that file and removing it again with the sandbox are two changes of the root's
directory on disk, and a pool claim took two such locks (a sandbox's new one, and its
member's, removed): its step took 0.62 ms with them and 0.51 ms with this one
(docs/ext-local.md, "One step at a time"). The one file is made once and never removed,
so nothing is left behind and nothing has to tell a removed lock file from its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sandboxer.errors import ExtensionError

__all__ = ["LOCK_FILE", "LOCK_WAIT", "lock_offset", "sandbox_lock"]

LOCK_FILE = ".sandbox-locks"
"""Under a root: not a valid sandbox id, so the inventory never takes it for a sandbox."""
LOCK_WAIT = 60.0
"""Seconds to wait for another worker's step on the same sandbox. A step holds the lock
while it makes or unmakes processes and groups, while it copies the ``repo`` input and
while a snapshot copies the workspace out (bounded by the archive limits), the long parts;
setup instructions run after it is released."""
_POLL = 0.005
_FLOCK = struct.Struct("@hhqqi4x")
"""``struct flock`` of 64-bit Linux: type, whence, start, length, pid (0 for OFD locks)."""
_BUSY = (errno.EAGAIN, errno.EACCES)


def lock_offset(sandbox_id: str) -> int:
    """The byte of the lock file that stands for ``sandbox_id``: 62 bits of a hash, so two ids
    share one only by a 1 in 4e18 chance (and then merely wait for each other)."""
    digest = hashlib.blake2b(sandbox_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


@contextlib.asynccontextmanager
async def sandbox_lock(
    root: Path, sandbox_id: str, *, wait: float = LOCK_WAIT
) -> AsyncIterator[None]:
    """Hold ``sandbox_id``'s lock under ``root`` (an id already validated).

    ExtensionError, naming the root, when another worker holds it for longer than ``wait``
    seconds."""
    path = root / LOCK_FILE
    fd = _open(path)
    try:
        await _acquire(fd, path, sandbox_id, wait)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _acquire(fd: int, path: Path, sandbox_id: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    offset = lock_offset(sandbox_id)
    while not _try_lock(fd, offset):
        if time.monotonic() > deadline:
            raise ExtensionError(
                f"local sandbox {sandbox_id}: another ext.local worker has held its lock "
                f"(byte {offset} of {path}) for over {wait:.0f}s; it may be copying a large "
                "repo input or a snapshot's workspace. Run the command again once that step "
                "is done",
                sandbox_id=sandbox_id,
                extension="ext.local",
            )
        await asyncio.sleep(_POLL)


def _open(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:  # a root not made yet
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, flags, 0o600)


def _try_lock(fd: int, offset: int) -> bool:
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True
