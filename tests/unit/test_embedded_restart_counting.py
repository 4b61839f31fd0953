"""How ``keep_serving`` counts a server's exits: a failed start is one more, and is retried.

The real server killed under a real ``sandboxer up`` is
``tests/integration/test_embedded_restart.py``; which of its kills lands while the server is
still starting is up to the machine's timing. Here a scripted stand-in for the server's
process decides it, so each order is run every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import cast

import pytest

from sandboxer.bus import embedded_restart
from sandboxer.bus.embedded_restart import RESTARTS, keep_serving
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.errors import NatsServerError


class ScriptedServer:
    """Exits with -9 each time it runs; its starts fail as ``starts`` says (True: it runs).
    As the real one, it knows no port after a start that failed early."""

    pid = 4242
    log_file = Path("nats-server.log")

    def __init__(self, starts: list[bool]) -> None:
        self.starts = starts
        self.started = 0
        self.failed = False

    @property
    def url(self) -> str:
        if self.failed:
            raise NatsServerError("nats-server 'sandboxer-embedded' has not started")
        return "nats://127.0.0.1:4222"

    async def exited(self) -> int:
        await asyncio.sleep(0)
        return -9

    async def kill(self) -> None:
        return None

    async def start(self) -> ScriptedServer:
        runs = self.starts[self.started] if self.started < len(self.starts) else True
        self.started += 1
        self.failed = not runs
        if not runs:
            raise NatsServerError("nats-server exited with code -9 before it was ready")
        return self


async def serve(server: ScriptedServer) -> list[str]:
    reasons: list[str] = []
    await keep_serving(cast(NatsServerProcess, server), reasons.append)
    return reasons


async def test_a_start_that_fails_is_tried_again_and_counts_as_an_exit() -> None:
    """Killed while starting, then running: started again each time; the service gives up
    only when ``RESTARTS`` exits, failed starts among them, came within the window."""
    server = ScriptedServer([False, True, False, True])
    reasons = await serve(server)
    assert server.started == RESTARTS - 1  # every exit but the last was followed by a start
    assert len(reasons) == 1
    assert f"exited {RESTARTS} times within" in reasons[0]
    assert "(last with code -9)" in reasons[0]


async def test_a_server_that_cannot_start_at_all_spends_the_restarts_and_says_why() -> None:
    server = ScriptedServer([False] * 10)
    reasons = await serve(server)
    assert server.started == RESTARTS - 1
    assert (
        "(last while starting again: nats-server exited with code -9 before it was ready)"
        in (reasons[0])
    )


async def test_exits_spread_past_the_window_never_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each exit more than the window after the one ``RESTARTS`` before it: served on."""
    monkeypatch.setattr(embedded_restart, "WINDOW", 0.0)
    server = ScriptedServer([])
    task = asyncio.create_task(serve(server))
    while server.started < 3 * RESTARTS and not task.done():
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_fault_of_its_own_gives_up_with_the_reason_rather_than_end_unseen() -> None:
    class Failing(ScriptedServer):
        async def kill(self) -> None:
            raise RuntimeError("reaping failed")

    reasons = await serve(Failing([]))
    assert reasons == ["restarting the embedded nats-server failed: RuntimeError('reaping failed')"]
