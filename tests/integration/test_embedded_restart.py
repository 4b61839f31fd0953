"""``sandboxer up``'s own nats-server, killed under it, is started again on the same port; one
that will not stay up ends the service with the reason (bus/embedded_restart.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from sandboxer.bus.embedded_restart import RESTARTS
from tests.integration.embedded_up import Up, up

__all__ = ["up"]  # the fixture, used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_killed_embedded_server_is_started_again_and_serves_on(up: Up) -> None:
    """kill -9 of the server: it runs again on the same URL, the log made before it died is
    there, a new create is carried out, and the service still stops cleanly."""
    url = json.loads((up.home / "service.json").read_text())["nats_url"]
    before = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    first = await up.next_nats(None)
    os.kill(first, signal.SIGKILL)
    await up.next_nats(first)
    after = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    # The projector's reader finds its consumer gone by its idle heartbeat (about 5 s), and
    # reads on from where it was: a list from a fresh process shows both then.
    async with asyncio.timeout(30):
        while True:
            listed = json.loads((await up.cli("list", "--json")).stdout)
            if {row["sandbox_id"] for row in listed} >= {before, after}:
                break
            await asyncio.sleep(0.2)
    for sandbox_id in (before, after):
        await up.cli("destroy", sandbox_id)
    assert json.loads((up.home / "service.json").read_text())["nats_url"] == url
    assert "starting it again on" in up.log()
    up.process.terminate()
    assert await asyncio.to_thread(up.process.wait, 30) == 0, up.log()


async def test_a_server_that_will_not_stay_up_stops_the_service_with_the_reason(up: Up) -> None:
    """Killed as often as it starts: after ``RESTARTS`` exits within the window the service
    stops, exits non-zero and says why, and leaves no server behind."""
    await up.cli("list")  # serving
    pid = None
    for _ in range(RESTARTS):
        pid = await up.next_nats(pid)
        os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(up.process.wait, 60) != 0
    # The last kill may land while that server starts: it counts all the same.
    assert f"exited {RESTARTS} times within 60 s (last " in up.log()
    assert "; sandboxer stopped" in up.log()
    assert "Traceback" not in up.log()
    assert up.nats_pid() is None
    assert not (up.home / "service.json").exists()
