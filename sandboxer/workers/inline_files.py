"""Files that ride on a files request's own messages instead of the workspaces bucket.

An API key's identity may not touch the bucket (reading it would show every
project's objects, writing it could replace another project's object: see
docs/security.md#keys-on-the-bus), so its copies carry the bytes themselves:

- in (``put`` with ``inline``): the worker opens an input inbox, as an exec with
  stdin does, and names it in a ``input`` message; the client sends the archive
  there in acknowledged chunks, then its end;
- out (``get`` with ``inline``): the worker sends the result in ``data`` messages,
  each to be acknowledged on a subject of its own (under ``sandboxer.stdin.``,
  where a key may publish); at most :data:`WINDOW` chunks are unacknowledged, so a
  slow client slows the worker instead of overflowing. ``done`` carries the SHA-256
  the client checks what it wrote against.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from sandboxer.errors import SandboxerError, WorkspaceRefused
from sandboxer.workers.stdin_inbox import StdinInbox

__all__ = ["ACK_TIMEOUT", "CHUNK", "WINDOW", "receive_inline", "send_inline"]

CHUNK = 64 * 1024
WINDOW = 16
"""Chunks in flight before the worker waits for the client's acknowledgements (1 MiB)."""
ACK_TIMEOUT = 60.0

Send = Callable[[str, dict[str, Any] | None], Awaitable[None]]


async def receive_inline(
    nc: Client, send: Send, archive: Path, max_bytes: int, *, key_id: str | None = None
) -> None:
    """Write what the client sends to ``archive`` (at most ``max_bytes``); a key identity's
    chunks are answered in its own inbox only."""
    inbox = StdinInbox(nc, key_id=key_id)
    await inbox.open()
    try:
        await send("input", {"stdin": inbox.subject})
        received = 0
        with archive.open("wb") as out:
            async for chunk in inbox.chunks():
                received += len(chunk)
                if received > max_bytes:
                    raise WorkspaceRefused(
                        f"the upload is larger than {max_bytes // (1024 * 1024)} MiB, the most a "
                        "copy moves (SANDBOXER_UPLOAD_MAX_MB)"
                    )
                await asyncio.to_thread(out.write, chunk)
    finally:
        await inbox.close()


async def send_inline(nc: Client, reply: str, path: Path, header: str) -> None:
    """Send ``path`` to ``reply`` in acknowledged ``data`` chunks."""
    credit = asyncio.Semaphore(WINDOW)
    acks = f"sandboxer.stdin.{secrets.token_hex(16)}"

    async def on_ack(_msg: Msg) -> None:
        credit.release()

    sub = await nc.subscribe(acks, cb=on_ack)
    try:
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                try:
                    async with asyncio.timeout(ACK_TIMEOUT):
                        await credit.acquire()
                except TimeoutError:
                    raise SandboxerError(
                        f"the client stopped taking the download for {ACK_TIMEOUT:.0f} s"
                    ) from None
                await nc.publish(reply, chunk, reply=acks, headers={header: "data"})
    finally:
        await sub.unsubscribe()
