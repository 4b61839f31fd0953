"""The embedded nats-server, started again when it dies under a running service.

``sandboxer up`` with no ``SANDBOXER_NATS_URL`` runs a nats-server of its own. Were that
process to die (killed, out of memory, a crash) and stay dead, every connection of the
service would go on reconnecting to its address: the service would look up and answer
nothing, and a server of someone else's that took the port next would have its commands
carried out by this service's workers. So it is started again at once, on the same port
with the same store and configuration: JetStream recovers the log from the disk, and the
connections come back on their own, as after any server restart.

A server that does not stay up (``RESTARTS`` exits within ``WINDOW`` seconds, a failed
start counting as one: its port taken meanwhile, its store unreadable, the server killed
again while it starts) stops the service with the reason: a service with no bus is better
ended than left to hang.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.errors import NatsServerError

__all__ = ["RESTARTS", "WINDOW", "keep_serving"]

log = logging.getLogger(__name__)

RESTARTS = 5
WINDOW = 60.0
"""Seconds within which ``RESTARTS`` exits of the server end the service."""


async def keep_serving(server: NatsServerProcess, give_up: Callable[[str], None]) -> None:
    """Start ``server`` again each time it exits, until cancelled (the service's stop, which
    then stops the server itself); ``give_up`` is called with the reason, once, when it will
    not stay up. A start that fails counts as one more exit and is tried again: a server
    killed while it starts is no different from one killed once it runs, and one that cannot
    start at all (its port taken, its store unreadable) spends the restarts in a moment.
    Any other failure here gives up too: a task that ended unseen would leave the service
    running without its bus."""
    try:
        await _restart_each_exit(server, give_up)
    except Exception as exc:
        _give_up(give_up, f"restarting the embedded nats-server failed: {exc!r}")


async def _restart_each_exit(server: NatsServerProcess, give_up: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    url = server.url  # now, while it runs: a start that failed early knows no port yet
    exits: collections.deque[float] = collections.deque(maxlen=RESTARTS)
    how = f"with code {await server.exited()}"
    while True:
        exits.append(loop.time())
        await server.kill()  # reaped, and its store's lock released for the next start
        if len(exits) == RESTARTS and exits[-1] - exits[0] < WINDOW:
            _give_up(
                give_up,
                f"the embedded nats-server exited {RESTARTS} times within {WINDOW:g} s "
                f"(last {how}); see {server.log_file}",
            )
            return
        log.error(
            "the embedded nats-server exited %s; starting it again on %s (its log: %s)",
            how,
            url,
            server.log_file,
        )
        try:
            await server.start()
        except NatsServerError as exc:
            how = f"while starting again: {exc}"
            continue
        log.warning("the embedded nats-server is back on %s (pid %d)", url, server.pid)
        how = f"with code {await server.exited()}"


def _give_up(give_up: Callable[[str], None], reason: str) -> None:
    log.error("%s; stopping the service", reason)
    give_up(reason)
