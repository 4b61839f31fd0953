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

It is an ``flock`` on ``<root>/.locks/<id>``: the kernel releases it with the
process, even after ``kill -9``, so a dead worker never holds a sandbox. The
teardown removes the file while it holds the lock; whoever was waiting on the
removed file sees that its inode is no longer the path's and locks afresh. A lock file
is removed only here, only while held, and only while the path still names it
(:meth:`HeldLock.remove`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sandboxer.errors import ExtensionError

__all__ = ["LOCK_DIR", "LOCK_WAIT", "HeldLock", "sandbox_lock"]

LOCK_DIR = ".locks"
"""Under a root: not a valid sandbox id, so the inventory never takes it for a sandbox."""
LOCK_WAIT = 60.0
"""Seconds to wait for another worker's step on the same sandbox. A step holds the lock
while it makes or unmakes processes and groups, while it copies the ``repo`` input and
while a snapshot copies the workspace out (bounded by the archive limits), the long parts;
setup instructions run after it is released."""
_POLL = 0.005


class HeldLock:
    """A sandbox's lock while :func:`sandbox_lock` holds it."""

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd = fd
        self._held = True

    def remove(self) -> None:
        """Remove the lock file now, still held: a waiter then finds a new file, not this one.
        For a step that learns only under the lock that its sandbox is gone. Idempotent, and
        never another holder's file: once this one is gone, the next caller makes a new file
        at the path and locks it while this lock is still held."""
        # Once released, the path may name another holder's file: removing it would let a
        # third caller lock a new file beside that holder.
        if not self._held:
            raise AssertionError(f"{self._path} is removed only while its lock is held")
        # The path still names the file held here only if no one removed it: then no step
        # can remove or replace it before the unlink (a step removes only the file it
        # holds, and a new file is made only where none is). The inode stays this file's
        # while the descriptor is open, so an equal one is never a newer file.
        if _still_the_file(self._fd, self._path):
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


@contextlib.asynccontextmanager
async def sandbox_lock(
    root: Path, sandbox_id: str, *, remove: bool = False, wait: float = LOCK_WAIT
) -> AsyncIterator[HeldLock]:
    """Hold ``sandbox_id``'s lock under ``root`` (an id already validated: it names a file).

    ``remove``: the caller unmakes the sandbox, so its lock file goes too once the step
    succeeds (the next caller makes a new one). ExtensionError, naming the file, when
    another worker holds it for longer than ``wait`` seconds."""
    path = root / LOCK_DIR / sandbox_id
    fd = await _acquire(path, sandbox_id, wait)
    held = HeldLock(path, fd)
    try:
        yield held
        if remove:
            held.remove()
    finally:
        held._held = False
        os.close(fd)  # releases the lock


async def _acquire(path: Path, sandbox_id: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        fd = _open(path)
        try:
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise ExtensionError(
                        f"local sandbox {sandbox_id}: another ext.local worker has held its "
                        f"lock ({path}) for over {wait:.0f}s; it may be copying a large repo "
                        "input or a snapshot's workspace. Run the command again once that "
                        "step is done",
                        sandbox_id=sandbox_id,
                        extension="ext.local",
                    )
                await asyncio.sleep(_POLL)
            if _still_the_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file a teardown removed meanwhile: lock the new one


def _open(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:  # the root's first lock: no directory yet
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, flags, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_the_file(fd: int, path: Path) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not one made after it was removed)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
