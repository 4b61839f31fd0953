"""Handing a sandbox's provider-issued tokens to its own actor or project
(``sandboxer.token.<sandbox_id>``, core request/reply, outside every stream).

The request is ``{"actor": {...}}``; the answer ``{"ok": true, "tokens": {...}}``
or ``{"ok": false, "error": "..."}``. Only workers of the sandbox's backend
answer (a queue group per backend, so one of them), and only backends that
hold such tokens (:class:`~sandboxer.extensions.capabilities.TokenHolder`)
run this service. Nothing here is logged with a token in it. An API key asks on
``sandboxer.token.<sandbox_id>.<key id>`` and is answered as itself
(:mod:`sandboxer.workers.key_reach`), within its rate: past it, ``{"ok": false, "error":
"...", "code": "rate_limited", "retry_after": SECONDS}``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.key_request_rate import KeyRequestRates, refusal_fields
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.token_access import token_refusal
from sandboxer.errors import RateLimited, SandboxerError
from sandboxer.events.actor import Actor
from sandboxer.extensions.capabilities import TokenHolder
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.key_reach import KeyReach, subscriptions

__all__ = ["TokenService"]

log = logging.getLogger(__name__)

LIVE = frozenset({"ready", "active", "pausing", "paused", "resuming"})


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actor: Actor


class TokenService:
    def __init__(
        self,
        nc: Client,
        store: EventStore,
        extension: TokenHolder,
        extension_id: str,
        *,
        rates: KeyRequestRates | None = None,
    ) -> None:
        """``rates``: the keys' request rates this process holds, shared with its other
        services (bus/key_request_rate.py); a bucket of its own without one."""
        self._nc = nc
        self._store = store
        self._extension = extension
        self._id = extension_id
        self._subs: list[Subscription] = []
        self._reach = KeyReach(
            store, rates if rates is not None else KeyRequestRates(), self._its_own
        )

    async def start(self) -> None:
        for subject in subscriptions("token"):  # the client identity's, and API keys'
            self._subs.append(
                await self._nc.subscribe(subject, queue=f"token-{self._id}", cb=self._serve)
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _its_own(self, sandbox_id: str) -> SandboxState | None:
        """The sandbox's state when it is this backend's (whatever its status: one not live
        is answered so), else None."""
        state = (await self._store.load(sandbox_id)).state
        return state if state.extension == self._id else None

    async def _refuse(self, reply: str, limited: RateLimited) -> None:
        """A key's token request past its rate: refused, saying when to ask again."""
        await self._nc.publish(reply, msgspec.json.encode({"ok": False, **refusal_fields(limited)}))

    async def _serve(self, msg: Msg) -> None:
        reached = await self._reach.reach(msg, self._refuse)
        if reached is None:  # another backend's sandbox (its workers answer), another project's
            return
        state, reply, key = reached.state, reached.reply, reached.actor
        sandbox_id = state.sandbox_id
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
