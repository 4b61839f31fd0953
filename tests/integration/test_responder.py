"""Request/reply serving (bus/responder.py) against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
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


PING = b"PING\r\n"


@contextlib.asynccontextmanager
async def slow_after_ping(server_url: str) -> AsyncIterator[str]:
    """A URL to ``server_url`` through a relay that pauses after passing on a PING, as a
    server starved of CPU reads what follows the PING a while after it has answered it."""
    host, _, port = server_url.rpartition("/")[2].rpartition(":")

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pause: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                *pinged, rest = data.split(PING)
                for part in [*(before + PING for before in pinged), rest]:
                    writer.write(part)
                    await writer.drain()
                    if pause and part.endswith(PING):
                        await asyncio.sleep(0.5)
        writer.close()

    relays: list[asyncio.Task[Any]] = []
    ends: list[asyncio.StreamWriter] = []

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        relays.append(this)
        server_r, server_w = await asyncio.open_connection(host, int(port))
        ends.extend((client_w, server_w))
        await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))

    listener = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield f"nats://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    finally:
        listener.close()
        for end in ends:  # each pump then reads the end of its stream
            end.close()
        await asyncio.gather(*relays, return_exceptions=True)
        await listener.wait_closed()


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
