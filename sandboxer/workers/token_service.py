"""Handing a sandbox's provider-issued tokens to its own actor or project
(``sandboxer.token.<sandbox_id>``, core request/reply, outside every stream).

The request is ``{"actor": {...}}``; the answer ``{"ok": true, "tokens": {...}}``
or ``{"ok": false, "error": "..."}``. Only workers of the sandbox's backend
answer (a queue group per backend, so one of them), and only backends that
hold such tokens (:class:`~sandboxer.extensions.capabilities.TokenHolder`)
run this service. Nothing here is logged with a token in it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.event_store import EventStore
from sandboxer.domain.token_access import token_refusal
from sandboxer.errors import SandboxerError
from sandboxer.events.actor import Actor
from sandboxer.extensions.capabilities import TokenHolder
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.workers.backend_for import backend_for

__all__ = ["TokenService"]

log = logging.getLogger(__name__)

LIVE = frozenset({"ready", "active", "pausing", "paused", "resuming"})


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actor: Actor


class TokenService:
    def __init__(
        self, nc: Client, store: EventStore, extension: TokenHolder, extension_id: str
    ) -> None:
        self._nc = nc
        self._store = store
        self._extension = extension
        self._id = extension_id
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            "sandboxer.token.*", queue=f"token-{self._id}", cb=self._serve
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _serve(self, msg: Msg) -> None:
        sandbox_id = msg.subject.rsplit(".", 1)[-1]
        if not msg.reply or not is_valid_sandbox_id(sandbox_id):
            return
        state = (await self._store.load(sandbox_id)).state
        if state.extension != self._id:
            return  # another backend's sandbox: its workers answer
        answer: dict[str, Any]
        try:
            request = msgspec.json.decode(msg.data, type=TokenRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            answer = {"ok": False, "error": f"invalid token request: {exc}"}
        else:
            refusal = token_refusal(request.actor, state)
            if refusal is not None:
                log.info(
                    "refused %s %s the tokens of %s",
                    request.actor.type,
                    request.actor.id,
                    sandbox_id,
                )
                answer = {"ok": False, "error": refusal}
            elif state.status not in LIVE:
                answer = {"ok": False, "error": f"sandbox {sandbox_id} is {state.status}"}
            else:
                try:
                    answer = {
                        "ok": True,
                        "tokens": await (
                            await backend_for(self._store, self._extension, state)  # BYOK
                        ).sandbox_tokens(sandbox_id),
                    }
                except SandboxerError as exc:
                    answer = {"ok": False, "error": exc.message}
        await self._nc.publish(msg.reply, msgspec.json.encode(answer))
