"""Serving JSON request/reply subjects: one task per request, a reply for every outcome.

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A
handler raises :class:`RequestError` for a bad request (its message is the
reply); a key's request past its rate (:class:`RateLimited`, raised by the key's
resolver) is answered with ``code`` ``rate_limited`` and ``retry_after`` besides, and
one a view behind the log cannot answer yet (:class:`ViewBehind`) with ``code``
``view_behind``;
any other exception is logged and answered as an internal error.
Each request runs in its own task, so a slow one (a replay, a reap) does not
hold up the others. ``serve`` returns once the server routes the
subjects' requests here (bus/in_effect.py), so whoever starts a service may announce it.
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

from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.key_request_rate import refusal_fields
from sandboxer.bus.replies import answer_subject
from sandboxer.errors import RateLimited, RequestError, ViewBehind

__all__ = ["Handler", "KeyResolver", "RequestError", "Responder", "ScopedHandler"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ScopedHandler = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]
"""A handler for a key identity's request: ``(request, actor)``, the actor being the key's."""
KeyResolver = Callable[[str], Awaitable[dict[str, Any]]]
"""The actor of a key id (raises RequestError when the key is unknown or revoked, and
RateLimited when it is past its rate: bus/key_request_rate.py)."""


class Responder:
    def __init__(self, nc: Client, *, stamp: Mapping[str, Any] | None = None) -> None:
        self._nc = nc
        self._stamp = dict(stamp or {})
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(
        self,
        routes: Mapping[str, Handler],
        *,
        queue: str = "",
        scoped: Mapping[str, ScopedHandler] | None = None,
        resolve: KeyResolver | None = None,
    ) -> None:
        """Answer ``routes``, and a key identity's requests on ``<subject>.<key id>`` for each
        of ``scoped`` (docs/security.md#keys-on-the-bus): only that key may publish there, so
        the last token says who asks, and ``resolve`` gives its actor. Returns once all are in
        effect: one round trip for every subscription."""
        for subject, handler in routes.items():
            await self._subscribe(subject, queue, _fixed(handler), keyed=False)
        if scoped:
            if resolve is None:
                raise ValueError("scoped routes need a resolve for their key ids")
            for subject, scoped_handler in scoped.items():
                as_key = _as_key(scoped_handler, resolve)
                await self._subscribe(f"{subject}.*", queue, as_key, keyed=True)
        await in_effect(self._nc)

    async def _subscribe(
        self,
        subject: str,
        queue: str,
        handler_for: Callable[[Msg], Awaitable[Handler]],
        *,
        keyed: bool,
    ) -> None:
        self._subs.append(
            await self._nc.subscribe(
                subject, queue=queue, cb=self._callback(handler_for, keyed=keyed)
            )
        )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        pending: Sequence[asyncio.Task[None]] = list(self._tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _fitting(self, reply: dict[str, Any]) -> bytes:
        """``reply`` as bytes, or an error saying it is too large to send: the server refuses
        a message over its max payload, and the client would wait for an answer in vain
        and take the service for down."""
        data = msgspec.json.encode(reply)
        limit = self._nc.max_payload
        if len(data) <= limit:
            return data
        too_large = {
            "ok": False,
            **self._stamp,
            "error": f"the answer is {len(data)} bytes, more than the bus carries ({limit}); "
            "ask for less (a lower limit, or a narrower filter)",
        }
        return msgspec.json.encode(too_large)

    def _callback(
        self, handler_for: Callable[[Msg], Awaitable[Handler]], *, keyed: bool
    ) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            # Only to an inbox, and a key identity's request only to its own (bus/replies.py).
            to = answer_subject(msg.reply, msg.subject.rpartition(".")[2] if keyed else None)
            if to is None and keyed:
                return  # a key's request nobody may be answered for costs nothing more
            try:
                # A key's request: its rate and who it is first, before its bytes are read
                # (bus/key_request_rate.py: one past the rate is refused cheaply).
                handler = await handler_for(msg)
                request = msgspec.json.decode(msg.data) if msg.data else {}
                if not isinstance(request, dict):
                    raise RequestError("request must be a JSON object")
                reply = {"ok": True, **self._stamp, **await handler(request)}
            except RateLimited as limited:
                reply = {"ok": False, **self._stamp, **refusal_fields(limited)}
            except ViewBehind as behind:
                reply = {"ok": False, **self._stamp, "code": behind.code, "error": str(behind)}
            except (RequestError, msgspec.DecodeError) as exc:
                reply = {"ok": False, **self._stamp, "error": str(exc)}
            except RecursionError:  # JSON nested thousands deep: a bad request, not our fault
                reply = {"ok": False, **self._stamp, "error": "request is nested too deeply"}
            except Exception as exc:
                log.exception("request on %s failed", msg.subject)
                reply = {"ok": False, **self._stamp, "error": f"internal error: {exc}"}
            if to is not None:
                await self._nc.publish(to, self._fitting(reply))

        async def callback(msg: Msg) -> None:
            task = asyncio.create_task(respond(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return callback


def _fixed(handler: Handler) -> Callable[[Msg], Awaitable[Handler]]:
    async def handler_for(_msg: Msg) -> Handler:
        return handler

    return handler_for


def _as_key(scoped: ScopedHandler, resolve: KeyResolver) -> Callable[[Msg], Awaitable[Handler]]:
    """The handler for one key identity's request: ``scoped`` with the key's actor."""

    async def handler_for(msg: Msg) -> Handler:
        actor = await resolve(msg.subject.rpartition(".")[2])

        async def handler(request: dict[str, Any]) -> dict[str, Any]:
            return await scoped(request, actor)

        return handler

    return handler_for
