"""A slow subscription's dropped messages are logged as a few summaries, not one line each.

nats-py calls a connection's error callback once per message it drops from a subscription
whose pending limits are full; a burst must not become thousands of identical warnings.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from sandboxer.bus import connect as connect_module
from sandboxer.bus.connect import connect
from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.nats_server import NatsServerProcess

pytestmark = pytest.mark.integration

BURST = 3000


async def test_a_burst_of_drops_is_logged_as_its_first_and_a_summary(
    nats_server: NatsServerProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connect_module, "DROPS_SUMMARY_SECONDS", 0.5)
    slow = await connect([nats_server.url], name="slow", long_lived=True)
    fast = await connect([nats_server.url], name="fast", long_lived=True)
    gate = asyncio.Event()
    delivered = 0

    async def on_msg(_msg: object) -> None:
        nonlocal delivered
        await gate.wait()  # a consumer that falls behind
        delivered += 1

    try:
        await slow.subscribe("burst.a", cb=on_msg, pending_msgs_limit=10)
        await in_effect(slow)  # a flush may return before the server has the SUB
        caplog.set_level(logging.WARNING, logger="sandboxer.bus.connect")
        for n in range(BURST):
            await fast.publish("burst.a", str(n).encode())
        await fast.flush()
        await slow.flush()  # every message of the burst has reached the slow client
        gate.set()
        await asyncio.sleep(1.2)  # the summary's interval, twice over
    finally:
        await fast.close()
        await slow.close()

    lines = [r.getMessage() for r in caplog.records if r.name == "sandboxer.bus.connect"]
    assert 2 <= len(lines) <= 3, lines  # the first drop, then one summary (perhaps two)
    assert "dropped a message on burst.a" in lines[0]
    summed = sum(int(n) for line in lines[1:] for n in re.findall(r"dropped (\d+) more", line))
    assert all("on burst.a" in line for line in lines[1:]), lines
    assert delivered > 0
    assert 1 + summed == BURST - delivered, (lines, delivered)
