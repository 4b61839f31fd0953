"""One exec's standard input, as the exec service receives it (docs/protocol.md#exec).

The client sends each chunk as a request to a subject made for this exec only, and the
end of input as ``end``; each chunk is answered once it is queued for the command, so a
command that reads slowly holds its client back instead of filling the worker's memory.
The exec service (:mod:`.exec_service`) and the file service's inline uploads
(:mod:`.inline_files`) both receive through it.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.replies import answer_subject
from sandboxer.errors import SandboxerError
from sandboxer.exec_protocol.wire import STDIN_HEADER

__all__ = ["STDIN_IDLE", "STDIN_PENDING", "STDIN_QUEUE", "STDIN_UNANSWERED", "StdinInbox"]

STDIN_IDLE = 120.0
"""Seconds without a chunk of input (or its end) after which the command is stopped."""
STDIN_QUEUE = 8
"""Chunks of input held for the command before the client's next chunk waits."""
STDIN_UNANSWERED = 2
"""Chunks held unanswered beyond the queue; a client following the protocol has one at most."""
STDIN_PENDING = STDIN_QUEUE + STDIN_UNANSWERED
"""Messages nats-py may buffer for an input subscription (its default is 512k, 128 MiB)."""


class StdinInbox:
    """One exec's input: chunks a client sends to ``subject``, handed on in order.

    Each chunk is answered once it is queued for the command, and the queue holds
    :data:`STDIN_QUEUE` chunks: when it is full, the answer waits, and so does a client
    that waits for answers. The callback itself never waits, so every message is looked
    at as it arrives and a client that does not wait for answers is caught at once
    (:attr:`broken`) instead of being buffered.
    """

    def __init__(self, nc: Client, *, idle: float = STDIN_IDLE, key_id: str | None = None) -> None:
        self._nc = nc
        self._idle = idle
        self._key_id = key_id
        """A key identity's exec: its chunks are answered in that key's inbox only."""
        # Under ``sandboxer.``, not ``_INBOX.``: clients may publish here, and never into
        # other connections' inboxes (docs/security.md).
        self.subject = f"sandboxer.stdin.{secrets.token_hex(16)}"
        # Bounded by _answer to STDIN_QUEUE (an item more for an ``end`` with data).
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._unanswered: collections.deque[Msg] = collections.deque()
        self._received = 0
        self.broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Set (to the exit's error) when the client broke the protocol; the input is lost."""
        self._sub: Subscription | None = None

    async def open(self) -> None:
        # Small limits: what a flood sends past them is dropped by nats-py (and noticed in
        # _on_chunk) rather than held in the worker's memory.
        self._sub = await self._nc.subscribe(
            self.subject,
            cb=self._on_chunk,
            pending_msgs_limit=STDIN_PENDING,
            pending_bytes_limit=STDIN_PENDING * self._nc.max_payload,
        )

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_chunk(self, msg: Msg) -> None:
        self._received += 1
        if self.broken.done() or self._sub is None:
            return  # the input is over: what still arrives is dropped
        self._unanswered.append(msg)
        # Delivered by the server but neither handed to us nor waiting: nats-py dropped it.
        dropped = self._sub.delivered - self._received - self._sub.pending_msgs
        if dropped > 0 or len(self._unanswered) > STDIN_UNANSWERED:
            self._unanswered.clear()
            self.broken.set_result(
                "standard input came faster than it was answered: send each chunk only "
                "once the previous one is answered (docs/protocol.md#exec); the command "
                "was stopped"
            )
            self._queue.put_nowait(b"")  # wakes chunks(), which raises
            return
        await self._answer()

    async def _answer(self) -> None:
        """Queue unanswered chunks while the queue has room, answering each: the client
        sends its next chunk only then."""
        while self._unanswered and self._queue.qsize() < STDIN_QUEUE:
            msg = self._unanswered.popleft()
            if msg.data:
                self._queue.put_nowait(msg.data)
            if (msg.headers or {}).get(STDIN_HEADER) == "end":
                self._queue.put_nowait(None)
            answer_to = answer_subject(msg.reply, self._key_id)  # an inbox (bus/replies.py)
            if answer_to is not None:
                await self._nc.publish(answer_to, b"")

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await self._queue.get()
            except TimeoutError:
                raise SandboxerError(
                    f"standard input stopped arriving for {self._idle:.0f} s without its end; "
                    "the command was stopped"
                ) from None
            if self.broken.done():
                raise SandboxerError(self.broken.result())
            await self._answer()  # a place in the queue is free for a waiting chunk
            if chunk is None:
                return
            yield chunk
