"""Request/reply serving (bus/responder.py) against a real nats-server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.responder import Responder
from tests.integration.slow_after_ping import slow_after_ping

pytestmark = pytest.mark.integration


async def test_an_answer_larger_than_the_bus_carries_is_an_error_not_silence(
    nats_server: NatsServerProcess,
) -> None:
    """A list of a thousand large rows passed the server's max payload: the answer was never
    sent, and the client, waiting in vain, reported the service as not running."""
    service = await connect([nats_server.url], name="service", long_lived=False)
    client = await connect([nats_server.url], name="client", long_lived=False)
    try:

        async def big(request: dict[str, Any]) -> dict[str, Any]:
            return {"rows": ["x" * 1100] * int(request["rows"])}

        responder = Responder(service)
        await responder.serve({"sandboxer.query.test.big": big})
        small = await client.request("sandboxer.query.test.big", b'{"rows": 10}', timeout=5)
        assert json.loads(small.data)["ok"] is True
        large = await client.request("sandboxer.query.test.big", b'{"rows": 2000}', timeout=5)
        answer = json.loads(large.data)
        assert answer["ok"] is False
        assert "more than the bus carries" in answer["error"]
        await responder.stop()
    finally:
        await client.close()
        await service.close()


async def test_a_request_right_after_serve_returns_is_answered(
    nats_server: NatsServerProcess,
) -> None:
    """nats-py's flush sends its PING ahead of a SUB still queued: a server slow to read
    the SUB answered the PING first, and a request from another connection right after
    the service started met "no responders" (once in a test run, under load)."""
    async with slow_after_ping(nats_server.url) as relayed:
        service = await connect([relayed], name="service", long_lived=False)
        client = await connect([nats_server.url], name="client", long_lived=False)
        try:

            async def hello(_request: dict[str, Any]) -> dict[str, Any]:
                return {"hello": "world"}

            responder = Responder(service)
            await responder.serve({"sandboxer.query.test.hello": hello})
            answer = await client.request("sandboxer.query.test.hello", b"{}", timeout=5)
            assert json.loads(answer.data) == {"ok": True, "hello": "world"}
            await responder.stop()
        finally:
            await client.close()
            await service.close()
