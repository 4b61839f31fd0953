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

An upload in holds a worker's task and a scratch file while it arrives. The input inbox
stops one whose chunks stop coming (``STDIN_IDLE``), but a client trickling a byte just
before each idle spell would never be stopped by that: the whole upload must also arrive
within its deadline (:func:`inline_deadline`, ``SANDBOXER_INLINE_UPLOAD_DEADLINE``), past
which it is refused (``workspace_refused``, saying so) and its scratch removed.
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

__all__ = [
    "ACK_TIMEOUT",
    "CHUNK",
    "INLINE_MIN_DEADLINE",
    "INLINE_MIN_RATE",
    "WINDOW",
    "inline_deadline",
    "receive_inline",
    "send_inline",
]

CHUNK = 64 * 1024
WINDOW = 16
"""Chunks in flight before the worker waits for the client's acknowledgements (1 MiB)."""
ACK_TIMEOUT = 60.0
INLINE_MIN_RATE = 512 * 1024
"""Bytes per second an inline upload must average, about 4 Mbit/s: a slow uplink, not a
trickle. The deadline is the largest upload (``SANDBOXER_UPLOAD_MAX_MB``) at this rate, so
whoever may upload that much at a reasonable pace is never refused, and a raised limit
raises the deadline with it (1 GiB, the default: about 34 minutes)."""
INLINE_MIN_DEADLINE = 600.0
"""Seconds an inline upload always gets, however low the upload limit: a small limit must not
turn a few seconds of a slow or busy network into a refusal."""

Send = Callable[[str, dict[str, Any] | None], Awaitable[None]]


def inline_deadline(max_bytes: int) -> float:
    """Seconds an inline upload of at most ``max_bytes`` may take to arrive whole."""
    return max(INLINE_MIN_DEADLINE, max_bytes / INLINE_MIN_RATE)


async def receive_inline(
    nc: Client,
    send: Send,
    archive: Path,
    max_bytes: int,
    *,
    key_id: str | None = None,
    deadline: float | None = None,
) -> None:
    """Write what the client sends to ``archive`` (at most ``max_bytes``, all of it within
    ``deadline`` seconds: by default :func:`inline_deadline`); a key identity's chunks are
    answered in its own inbox only. The caller removes ``archive`` when this raises."""
    within = inline_deadline(max_bytes) if deadline is None else deadline
    inbox = StdinInbox(nc, key_id=key_id)
    await inbox.open()
    limit = asyncio.timeout(within)
    received = 0
    try:
        await send("input", {"stdin": inbox.subject})
        async with limit:
            with archive.open("wb") as out:
                async for chunk in inbox.chunks():
                    received += len(chunk)
                    if received > max_bytes:
                        raise WorkspaceRefused(
                            f"the upload is larger than {max_bytes // (1024 * 1024)} MiB, the "
                            "most a copy moves (SANDBOXER_UPLOAD_MAX_MB)"
                        )
                    await asyncio.to_thread(out.write, chunk)
    except TimeoutError:
        if not limit.expired():
            raise
        raise WorkspaceRefused(
            f"the upload did not arrive whole within {within:g} s, the most an inline copy "
            f"may take (SANDBOXER_INLINE_UPLOAD_DEADLINE; {received} bytes came): send it "
            "faster, or in smaller parts"
        ) from None
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
