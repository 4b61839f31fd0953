"""Request/reply serving (bus/responder.py) against a real nats-server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.responder import Responder

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
        await service.flush()
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
