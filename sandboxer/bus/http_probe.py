"""A minimal HTTP GET for nats-server's monitor (``/healthz``), without an HTTP library.

The monitor answers plain HTTP/1.0 on loopback; one request a poll is all
start-up needs, so a dependency is not worth it.
"""

from __future__ import annotations

import asyncio
import contextlib

from sandboxer.errors import NatsServerError

__all__ = ["http_status"]


async def http_status(host: str, port: int, path: str) -> tuple[int, bytes]:
    """Status code and body of ``GET path``.

    Raises :class:`OSError` when nothing listens and :class:`NatsServerError`
    when what answers does not speak HTTP.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[1].isdigit():
        raise NatsServerError(f"{host}:{port}{path} is not an HTTP answer: {head[:100]!r}")
    return int(status[1]), body
