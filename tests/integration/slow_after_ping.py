"""A relay to nats-server that holds back what a client sends after a PING, as a server
starved of CPU reads it: to show that a service's subscriptions are in effect when its
start returns, not merely flushed (sandboxer/bus/in_effect.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["slow_after_ping"]

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
