"""Serving JSON request/reply subjects: one task per request, a reply for every outcome.

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A
handler raises :class:`RequestError` for a bad request (its message is the
reply); any other exception is logged and answered as an internal error.
Each request runs in its own task, so a slow one (a replay, a reap) does not
hold up the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.errors import RequestError

__all__ = ["Handler", "RequestError", "Responder"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Responder:
    def __init__(self, nc: Client, *, stamp: Mapping[str, Any] | None = None) -> None:
        self._nc = nc
        self._stamp = dict(stamp or {})
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, routes: Mapping[str, Handler], *, queue: str = "") -> None:
        for subject, handler in routes.items():
            self._subs.append(
                await self._nc.subscribe(subject, queue=queue, cb=self._callback(handler))
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        pending: Sequence[asyncio.Task[None]] = list(self._tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _callback(self, handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            try:
                request = msgspec.json.decode(msg.data) if msg.data else {}
                if not isinstance(request, dict):
                    raise RequestError("request must be a JSON object")
                reply = {"ok": True, **self._stamp, **await handler(request)}
            except (RequestError, msgspec.DecodeError) as exc:
                reply = {"ok": False, **self._stamp, "error": str(exc)}
            except RecursionError:  # JSON nested thousands deep: a bad request, not our fault
                reply = {"ok": False, **self._stamp, "error": "request is nested too deeply"}
            except Exception as exc:
                log.exception("request on %s failed", msg.subject)
                reply = {"ok": False, **self._stamp, "error": f"internal error: {exc}"}
            if msg.reply:
                await msg.respond(msgspec.json.encode(reply))

        async def callback(msg: Msg) -> None:
            task = asyncio.create_task(respond(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return callback
