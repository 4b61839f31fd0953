"""The embedded nats-server, started again once the disk it filled has room again.

nats-server 2.15.1 stops storing on a stream whose write met ENOSPC: it logs ``Critical write
error ... no space left on device`` and from then on answers no publish to that stream, and
freeing the space does not bring the stream back. A restart does: the stream loads what it
acknowledged and takes writes again (docs/reliability.md, "What nats-server 2.15.1 does on a
full disk"). With a server of its own, that restart is an operator's. With the embedded one of
``sandboxer up`` it is the service's: :func:`restart_when_room` watches the server's log for
that error, and its store's file system for a full disk (the line may never reach the log,
which lives on the same disk). Once the file system has room again, it stops the server
(SIGTERM), which :mod:`~sandboxer.bus.embedded_restart` then starts again on the same port
and store. Meanwhile nothing is lost: a client's publish is refused as unavailable, and a
worker's append is retried and its message handed back (docs/reliability.md).

"Room" is a tenth of the file system, or :data:`ROOM` bytes when that is less: a restart into a
disk still all but full would fill it again at once, and each restart counts towards the ones
after which the service gives up (``embedded_restart.RESTARTS``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from sandboxer.bus import nats_log
from sandboxer.bus.nats_server import NatsServerProcess

__all__ = ["CHECK_EVERY", "FULL", "ROOM", "WEDGED_MARK", "restart_when_room"]

log = logging.getLogger(__name__)

WEDGED_MARK = "Critical write error"
"""What nats-server logs when a stream's write met a full disk (and the stream stops)."""
FULL_MARK = "no space left on device"
ROOM = 64 * 1024 * 1024
"""Bytes free that count as room again, on a file system of 640 MiB or more."""
FULL = 1024 * 1024
"""Bytes free below which the store's file system counts as full."""
CHECK_EVERY = 1.0
"""Seconds between two looks at the log (and, once wedged, at the free space)."""


def _roomy(free: int, total: int, room: int) -> bool:
    """Whether a tenth of the file system, or ``room`` bytes, is free."""
    return free >= min(room, total // 10)


def _full(free: int) -> str | None:
    """Why the file system counts as full, if it does: less than :data:`FULL` free. The
    server's own line may never reach its log, which lives on the same disk."""
    return None if free >= FULL else f"{free} bytes free on its store's file system"


def _wedged_in(lines: list[str]) -> str | None:
    """The first line of ``lines`` saying a stream stopped on a full disk, if any."""
    return next((line for line in lines if WEDGED_MARK in line and FULL_MARK in line), None)


async def restart_when_room(
    server: NatsServerProcess, *, every: float = CHECK_EVERY, room: int = ROOM
) -> None:
    """Stop ``server`` each time it has logged that a stream stopped on a full disk and its
    store has room again (its keeper, bus/embedded_restart.py, starts it again), until
    cancelled. The log is read from where it ends now. A failure here is logged and ends
    the watch: the service goes on serving, and a full disk wants an operator again."""
    try:
        await _watch(server, every, room)
    except Exception:
        log.exception("watching the embedded nats-server for a full disk failed; no longer")


async def _watch(server: NatsServerProcess, every: float, room: int) -> None:
    try:
        offset = server.log_file.stat().st_size
    except OSError:
        offset = 0
    due: str | None = None  # why a restart is due, once the disk has room
    while True:
        await asyncio.sleep(every)
        lines, offset = await asyncio.to_thread(nats_log.read_from, server.log_file, offset)
        usage = await asyncio.to_thread(shutil.disk_usage, server.store_dir)
        due = due or _wedged_in(lines) or _full(usage.free)
        if due is None or not server.running or not _roomy(usage.free, usage.total, room):
            continue
        log.warning(
            "the embedded nats-server stopped storing when its disk filled (%s); the disk "
            "has room again: restarting it",
            due.strip(),
        )
        # Its keeper reaps it, releases its store and starts it again: one owner of each step.
        server.terminate()
        await server.exited()
        due = None
