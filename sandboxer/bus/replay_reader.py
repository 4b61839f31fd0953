"""A bulk reader of the event log for replay, speaking the NATS protocol directly.

Replay is one long, ordered read of the events stream. Through nats-py
every message becomes a ``Msg`` object, a queue hand-off and a parse of its
reply subject, which caps a rebuild near 40k events/s here. This reader
opens a plain TCP connection, subscribes an inbox, creates a push consumer
(ack none, flow control on) delivering to it, and parses ``HMSG`` frames
with bytes operations; the stream sequence and the pending count come from
the ``$JS.ACK`` reply subject. It answers flow-control requests and server
pings itself. It connects as the same identity as the nats-py client it is
given (a user and password, or a token, as the embedded server's generated
credentials are), and gives up (so callers fall back to ``read_events``) on
TLS, on other kinds of credentials, and when the server refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sandboxer import subjects
from sandboxer.errors import BusError, ReplayUnsupported

__all__ = ["replay_batches", "replay_events"]

READ_CHUNK = 1 << 20
CRLF = b"\r\n"
HEARTBEAT_SECONDS = 5.0
"""How often the server says it is there when it has nothing to deliver."""
STALL_SECONDS = 3 * HEARTBEAT_SECONDS
"""Silence after which the delivery is taken for stopped (its consumer gone)."""


def _ack_position(reply: bytes) -> tuple[int, int]:
    """(stream sequence, pending) from a ``$JS.ACK`` reply subject (old and new layouts)."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
    return int(tokens[7]), int(tokens[10])


async def replay_events(
    nc: Client,
    js: JetStreamContext,
    *,
    start_seq: int,
    stop_seq: int,
    filter_subject: str = subjects.EVENTS,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(seq, data)`` for every event from ``start_seq`` to ``stop_seq`` inclusive."""
    async for batch in replay_batches(
        nc, js, start_seq=start_seq, stop_seq=stop_seq, filter_subject=filter_subject
    ):
        for item in batch:
            yield item


async def replay_batches(
    nc: Client,
    js: JetStreamContext,
    *,
    start_seq: int,
    stop_seq: int,
    filter_subject: str = subjects.EVENTS,
    stream: str = subjects.EVENTS_STREAM,
) -> AsyncGenerator[list[tuple[int, bytes]], None]:
    """The events from ``start_seq`` to ``stop_seq`` inclusive, in log order, as lists of
    ``(seq, data)``: every event each read from the socket completed (thousands at a time in
    a replay), so a consumer pays one hand-off per read rather than one per event. It ends
    early where nothing more on ``filter_subject`` is stored (``stop_seq`` may lie beyond the
    last message)."""
    if stop_seq < start_seq:
        return
    url = nc.connected_url
    if url is None or url.scheme == "tls":
        raise ReplayUnsupported("a TLS connection")
    identity = _identity(nc)
    reader, writer = await asyncio.open_connection(url.hostname, url.port, limit=READ_CHUNK * 4)
    inbox = f"_INBOX.sandboxer-replay.{uuid.uuid4().hex}"
    consumer: str | None = None
    try:
        info = json.loads((await reader.readline())[5:])
        if info.get("tls_required"):
            raise ReplayUnsupported("the server requires TLS")
        if info.get("auth_required") and not identity:
            raise ReplayUnsupported("the server requires credentials of a kind it cannot send")
        options = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "protocol": 1,
            "name": "sandboxer-replay",
            **identity,
        }
        writer.write(
            b"CONNECT "
            + json.dumps(options).encode()
            + CRLF
            + f"SUB {inbox} 1\r\nPING\r\n".encode()
        )
        await writer.drain()
        while (line := await reader.readline()) != b"PONG\r\n":
            if not line or line.startswith(b"-ERR"):
                # nats-py's own connection was let in: fall back to it rather than fail
                raise ReplayUnsupported(f"the server refused it: {line.decode().strip()!r}")
        created = await js.add_consumer(
            stream,
            ConsumerConfig(
                deliver_subject=inbox,
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start_seq,
                filter_subject=filter_subject,
                flow_control=True,
                idle_heartbeat=HEARTBEAT_SECONDS,
                inactive_threshold=60.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        consumer = created.name
        if not created.num_pending:
            return  # nothing stored from start_seq on: no delivery would ever end the wait
        async for batch in _frames(reader, writer, stop_seq):
            yield batch
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, consumer)


def _identity(nc: Client) -> dict[str, str]:
    """The CONNECT fields that authenticate as ``nc`` does: its user and password (from its
    options, or its server URL) or its token; empty when it has none of those."""
    options = nc.options
    url = nc.connected_url
    user = options.get("user") or (url.username if url is not None else None)
    password = options.get("password") or (url.password if url is not None else None)
    if user and password:
        return {"user": str(user), "pass": str(password)}
    token = options.get("token")
    return {"auth_token": str(token)} if token else {}


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    """The next bytes the server sent; BusError when it stopped sending. When it has nothing
    to deliver it sends a heartbeat every :data:`HEARTBEAT_SECONDS`: silence for longer means
    the consumer is gone (deleted, or lost with the node that held it)."""
    try:
        async with asyncio.timeout(STALL_SECONDS):
            chunk = await reader.read(READ_CHUNK)
    except TimeoutError:
        raise BusError(f"the replay's delivery stopped: nothing for {STALL_SECONDS:g} s") from None
    if not chunk:
        raise BusError("the NATS connection closed during replay")
    return chunk


async def _frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop_seq: int
) -> AsyncIterator[list[tuple[int, bytes]]]:
    buf = b""
    while True:
        chunk = await _read_some(reader)
        buf = buf + chunk if buf else chunk
        pos = 0
        batch: list[tuple[int, bytes]] = []
        while True:
            eol = buf.find(CRLF, pos)
            if eol < 0:
                break
            if buf.startswith(b"HMSG ", pos) or buf.startswith(b"MSG ", pos):
                parts = buf[pos:eol].split(b" ")
                with_headers = parts[0] == b"HMSG"
                total = int(parts[-1])
                header_len = int(parts[-2]) if with_headers else 0
                reply = parts[3] if len(parts) == (6 if with_headers else 5) else b""
                end = eol + 2 + total
                if len(buf) < end + 2:
                    break  # the rest of this message has not arrived yet
                body = eol + 2
                pos = end + 2
                if total == header_len:  # a status message: flow control or heartbeat
                    _answer_status(buf[body:end], reply, writer)
                    continue
                seq, pending = _ack_position(reply)
                batch.append((seq, buf[body + header_len : end]))
                if seq >= stop_seq or pending == 0:
                    yield batch
                    return
            else:
                line = buf[pos:eol]
                pos = eol + 2
                if line == b"PING":
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    raise BusError(f"NATS error during replay: {line.decode().strip()}")
        if batch:
            yield batch
        buf = buf[pos:]


def _answer_status(headers: bytes, reply: bytes, writer: asyncio.StreamWriter) -> None:
    """Answer a flow-control request, or a heartbeat that reports a stalled consumer."""
    target = reply
    marker = b"Nats-Consumer-Stalled:"
    at = headers.find(marker)
    if at >= 0:
        target = headers[at + len(marker) : headers.find(CRLF, at)].strip()
    if target:
        writer.write(b"PUB " + target + b" 0\r\n\r\n")
