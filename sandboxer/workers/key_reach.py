"""Who asks to reach a sandbox (exec, files, tokens): the trusted identities, or an API key.

Requests arrive on ``sandboxer.<kind>.<sandbox id>`` from the client identity,
or on ``sandboxer.<kind>.<sandbox id>.<key id>`` from an API key's identity,
which only that key may publish (docs/security.md#keys-on-the-bus). A key
reaches only its own project's sandboxes (an ``adm`` key: any); for any other
the worker stays silent, exactly as for a sandbox that does not exist.

A key's request is held to the key's rate (:mod:`sandboxer.bus.key_request_rate`)
by :class:`KeyReach`, by the one worker that answers it: every backend's service
of every worker hears each request, and only the sandbox's own may answer, or a
refusal from one could race another's output. So a request is counted once the
service knows the sandbox is its own and the key's to reach (the read it makes
for every request, and the key as last read); one past the rate is answered at
once when the service looked at that sandbox within the last
:data:`OWNER_MEMORY` seconds, with no read at all (a flood asks about the same
sandboxes over and over). A request about a sandbox the key may not reach, or
none, is neither counted nor refused: counted, it would show in the key's next
refusal that the sandbox exists. It costs the look it always did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.key_request_rate import KeyRequestRates, logged_keys
from sandboxer.bus.replies import answer_subject
from sandboxer.domain.key_access import may_see, sandbox_project
from sandboxer.domain.key_state import is_valid_key_id
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import RateLimited
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.recent import Recent

__all__ = [
    "OWNER_MEMORY",
    "KeyReach",
    "Owner",
    "Reached",
    "Refuse",
    "key_actor",
    "reach_target",
    "subscriptions",
]

Owner = Callable[[str], Awaitable[SandboxState | None]]
"""The state of a sandbox when this service answers for it, else None (a read)."""
Refuse = Callable[[str, RateLimited], Awaitable[None]]
"""Answer ``(inbox, refusal)``: a key's request past its rate, in the service's own shape."""
OWNER_MEMORY = 1.0
"""Seconds a service trusts what it found about a sandbox, to refuse a key past its rate
without reading again. Within it, a sandbox just destroyed or paused is answered
``rate_limited`` rather than not at all or ``frozen``; one just made ready here, found not
this service's a moment before, is not answered at all for a key past its rate: the key
hears what it heard a moment before, that no worker serves the sandbox yet."""
MAX_OWNERS = 10_000
"""Sandboxes one service remembers so (the oldest go first)."""


@dataclass(frozen=True)
class Reached:
    """A request this service answers."""

    state: SandboxState
    reply: str
    """The inbox every answer goes to (bus/replies.py)."""
    key_id: str | None
    actor: dict[str, Any] | None
    """The asking key's actor (None: the client identity asked)."""


class KeyReach:
    """Which requests one service (a backend's exec, files or tokens) answers, with an API
    key's held to the key's rate first (see the module)."""

    def __init__(self, store: EventStore, rates: KeyRequestRates, owner: Owner) -> None:
        self._store = store
        self._keys = logged_keys(store)
        self._rates = rates
        self._owner = owner
        self._seen: Recent[str, tuple[bool, str | None, float]] = Recent(MAX_OWNERS)
        """Sandbox -> (whether it was this service's, its project, when that was found)."""

    async def reach(self, msg: Msg, refuse: Refuse) -> Reached | None:
        """The request ``msg`` when this service answers it; None to stay silent (a
        malformed subject, a reply that is no inbox of the asker's, another worker's
        sandbox, a key of another project). A key's request past its rate is answered with
        ``refuse`` here, and None returned."""
        target = reach_target(msg.subject)
        if target is None:
            return None
        sandbox_id, key_id = target
        # An inbox, the key's own (bus/replies.py): every answer goes there with the
        # service's rights, never to a subject the request points at.
        reply = answer_subject(msg.reply, key_id)
        if reply is None:
            return None
        if key_id is None:  # the client identity: nothing more than the subject test
            state = await self._owner(sandbox_id)
            return None if state is None else Reached(state, reply, None, None)
        try:
            state = await self._for_key(sandbox_id, key_id)
        except RateLimited as limited:  # before anything else is read for it
            await refuse(reply, limited)
            return None
        if state is None:
            return None
        # Read afresh, not the kept one: a key revoked a moment ago is refused at once.
        actor = await key_actor(self._store, key_id, state)
        if actor is None:  # a key of another project: as for a sandbox that does not exist
            return None
        return Reached(state, reply, key_id, actor)

    async def _for_key(self, sandbox_id: str, key_id: str) -> SandboxState | None:
        """The sandbox's state when this service answers the key's request about it, with a
        token taken; :class:`RateLimited` when the key has none. Only a request about a
        sandbox this service holds and the key may reach (its project's) is counted or
        refused: one about any other is not answered, past the rate or not, so that neither
        tells the key which sandboxes exist."""
        refused = await self._rates.refusal(key_id, self._keys)
        if refused is not None:
            seen = self._seen.get(sandbox_id)
            if seen is not None and self._rates.now() - seen[2] < OWNER_MEMORY:
                mine, owner, _when = seen
                if mine and self._may_reach(key_id, owner):
                    raise refused
                return None
        state = await self._owner(sandbox_id)
        owner = None if state is None else sandbox_project(state)
        self._seen.put(sandbox_id, (state is not None, owner, self._rates.now()))
        if state is None or not self._may_reach(key_id, owner):
            return None
        await self._rates.hold(key_id, self._keys)  # a token, or RateLimited
        return state

    def _may_reach(self, key_id: str, owner: str | None) -> bool:
        """Whether the key (as last read: :meth:`KeyRequestRates.actor`) may reach a sandbox
        of project ``owner``."""
        actor = self._rates.actor(key_id)
        return actor is not None and may_see(actor, owner)


def subscriptions(kind: str) -> tuple[str, str]:
    """The subjects a service of ``kind`` (exec, files, token) listens on."""
    return f"sandboxer.{kind}.*", f"sandboxer.{kind}.*.*"


def reach_target(subject: str) -> tuple[str, str | None] | None:
    """``(sandbox id, key id or None)`` of a request subject; None when it is malformed."""
    parts = subject.split(".")
    if len(parts) not in {3, 4} or not is_valid_sandbox_id(parts[2]):
        return None
    key_id = parts[3] if len(parts) == 4 else None
    if key_id is not None and not is_valid_key_id(key_id):
        return None
    return parts[2], key_id


async def key_actor(store: EventStore, key_id: str, state: SandboxState) -> dict[str, Any] | None:
    """The actor of key ``key_id`` when it is active and may reach the sandbox ``state``;
    None otherwise (a revoked key, another project's sandbox)."""
    actor = (await store.load_key(key_id)).state.actor
    if actor is None:
        return None
    plain: dict[str, Any] = msgspec.to_builtins(actor)
    return plain if may_see(plain, sandbox_project(state)) else None
