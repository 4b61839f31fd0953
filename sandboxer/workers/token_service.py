"""Handing a sandbox's provider-issued tokens to its project or an administrator
(``sandboxer.token.<sandbox_id>``, core request/reply, outside every stream).

The request is ``{"actor": {...}}``; the answer ``{"ok": true, "tokens": {...}}``
or ``{"ok": false, "error": "..."}``. Only workers of the sandbox's backend
answer (a queue group per backend, so one of them), and only backends that
hold such tokens (:class:`~sandboxer.extensions.capabilities.TokenHolder`)
run this service. Nothing here is logged with a token in it. An API key asks on
``sandboxer.token.<sandbox_id>.<key id>`` and is answered as itself
(:mod:`sandboxer.workers.key_reach`), within its rate: past it, ``{"ok": false, "error":
"...", "code": "rate_limited", "retry_after": SECONDS}``.

Each request is served in a task of its own (:class:`~sandboxer.workers.in_flight.InFlight`,
as execs and copies are): a backend that takes seconds to hand out one sandbox's tokens (a
hosted provider asked again) holds no other sandbox's answer. The backend's call is bounded
by :data:`TOKEN_TIMEOUT`, and whatever it raises is answered ``{"ok": false, "error":
"..."}`` (logged; the answer names the exception's kind only), so the asker hears why
rather than waiting out its timeout for a worker that seems absent. A stopping worker gives
running requests :data:`~sandboxer.workers.in_flight.STOP_GRACE`, then answers the rest
with ``"code": "worker_stopped"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.key_request_rate import KeyRequestRates, refusal_fields
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.token_access import token_refusal
from sandboxer.errors import RateLimited, SandboxerError
from sandboxer.events.actor import Actor
from sandboxer.exec_protocol.answer_codes import WORKER_STOPPED
from sandboxer.extensions.capabilities import TokenHolder
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.in_flight import STOP_GRACE, InFlight
from sandboxer.workers.key_reach import KeyReach, subscriptions

__all__ = ["TOKEN_TIMEOUT", "TokenService"]

log = logging.getLogger(__name__)

LIVE = frozenset({"ready", "active", "pausing", "paused", "resuming"})
TOKEN_TIMEOUT = 4.0
"""Seconds the backend gets to hand out a sandbox's tokens. The client asks once for 5 s
(``SandboxerClient.tokens``): answered within that, a provider too slow is told as such,
not taken for no worker at all, and a request's task never outlives its asker for long."""


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
        self._in_flight = InFlight()
        self._reach = KeyReach(
            store, rates if rates is not None else KeyRequestRates(), self._its_own
        )

    async def start(self) -> None:
        """Return once requests from any connection reach this service (bus/in_effect.py)."""
        for subject in subscriptions("token"):  # the client identity's, and API keys'
            self._subs.append(
                await self._nc.subscribe(subject, queue=f"token-{self._id}", cb=self._on_request)
            )
        await in_effect(self._nc)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self._in_flight.stop(STOP_GRACE)

    async def _on_request(self, msg: Msg) -> None:
        # A task per request: nats-py runs a subscription's callback for one message at a
        # time, so awaiting the backend here would queue every other sandbox's request
        # behind one slow provider call.
        self._in_flight.start(self._serve(msg))

    async def _serve(self, msg: Msg) -> None:
        try:
            await self._answer(msg)
        except Exception:
            # Not the backend's call (_tokens answers that): reading the sandbox's log or
            # publishing failed, whose sandbox it is may be unknown, so nothing is answered.
            log.exception("a token request on %s failed", msg.subject)

    async def _its_own(self, sandbox_id: str) -> SandboxState | None:
        """The sandbox's state when it is this backend's (whatever its status: one not live
        is answered so), else None."""
        state = (await self._store.load(sandbox_id)).state
        return state if state.extension == self._id else None

    async def _refuse(self, reply: str, limited: RateLimited) -> None:
        """A key's token request past its rate: refused, saying when to ask again."""
        await self._nc.publish(reply, msgspec.json.encode({"ok": False, **refusal_fields(limited)}))

    async def _answer(self, msg: Msg) -> None:
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
                    answer = await self._tokens(state)
                except asyncio.CancelledError:
                    # The worker is stopping (stop()): say so, or the asker waits out its
                    # timeout and hears that no worker holds the sandbox.
                    stopped = {
                        "ok": False,
                        "error": "the worker stopped before it handed out the tokens; ask again",
                        "code": WORKER_STOPPED,
                    }
                    with contextlib.suppress(Exception):
                        await self._nc.publish(reply, msgspec.json.encode(stopped))
                    raise
        await self._nc.publish(reply, msgspec.json.encode(answer))

    async def _tokens(self, state: SandboxState) -> dict[str, Any]:
        """The answer carrying the sandbox's tokens, or saying why there are none; raises
        nothing but CancelledError (the worker stopping)."""
        sandbox_id = state.sandbox_id
        limit = asyncio.timeout(TOKEN_TIMEOUT)
        try:
            async with limit:
                backend = await backend_for(self._store, self._extension, state)  # BYOK
                return {"ok": True, "tokens": await backend.sandbox_tokens(sandbox_id)}
        except SandboxerError as exc:
            return {"ok": False, "error": exc.message}
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                log.warning("the tokens of %s took over %g s", sandbox_id, TOKEN_TIMEOUT)
                return {
                    "ok": False,
                    "error": f"{self._id} did not hand out the tokens of {sandbox_id} within "
                    f"{TOKEN_TIMEOUT:g} s; ask again",
                }
            # The traceback goes to the worker's log (the operator's); the asker, maybe an
            # API key, gets the kind only: a message could quote what the backend read.
            log.exception("handing out the tokens of %s failed", sandbox_id)
            return {
                "ok": False,
                "error": f"{self._id} failed to hand out the tokens of {sandbox_id} "
                f"({type(exc).__name__}); the worker's log says more",
            }
