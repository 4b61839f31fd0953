"""Handing a sandbox's provider-issued tokens to its own actor or project
(``sandboxer.token.<sandbox_id>``, core request/reply, outside every stream).

The request is ``{"actor": {...}}``; the answer ``{"ok": true, "tokens": {...}}``
or ``{"ok": false, "error": "..."}``. Only workers of the sandbox's backend
answer (a queue group per backend, so one of them), and only backends that
hold such tokens (:class:`~sandboxer.extensions.capabilities.TokenHolder`)
run this service. Nothing here is logged with a token in it. An API key asks on
``sandboxer.token.<sandbox_id>.<key id>`` and is answered as itself
(:mod:`sandboxer.workers.key_reach`).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.replies import answer_subject
from sandboxer.domain.token_access import token_refusal
from sandboxer.errors import SandboxerError
from sandboxer.events.actor import Actor
from sandboxer.extensions.capabilities import TokenHolder
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.key_reach import key_actor, reach_target, subscriptions

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
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for subject in subscriptions("token"):  # the client identity's, and API keys'
            self._subs.append(
                await self._nc.subscribe(subject, queue=f"token-{self._id}", cb=self._serve)
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _serve(self, msg: Msg) -> None:
        target = reach_target(msg.subject)
        if target is None:
            return
        sandbox_id, key_id = target
        reply = answer_subject(msg.reply, key_id)  # an inbox, the key's own (bus/replies.py)
        if reply is None:
            return
        state = (await self._store.load(sandbox_id)).state
        if state.extension != self._id:
            return  # another backend's sandbox: its workers answer
        key = await key_actor(self._store, key_id, state) if key_id is not None else None
        if key_id is not None and key is None:
            return  # a key of another project: as for a sandbox that does not exist
        answer: dict[str, Any]
        try:
            request = msgspec.json.decode(msg.data, type=TokenRequest)
            if key is not None:  # a key asks as itself, whatever actor it wrote
                request = TokenRequest(actor=msgspec.convert(key, Actor))
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
        await self._nc.publish(reply, msgspec.json.encode(answer))
