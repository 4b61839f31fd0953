"""The sandbox event store: load an aggregate, append under optimistic concurrency.

Appends carry both expected-sequence headers scoped to
``sandboxer.evt.sandbox.<id>.>`` so that any two writers of one sandbox
conflict, whatever event types they write. A publish that timed out may still
have landed, so it is retried with the same ``Nats-Msg-Id``; with one replica
the server answers such a retry with a wrong-sequence error rather than
"duplicate", so a conflict after a retry is settled by reading the sandbox's
last message and accepting it when it carries our id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.domain.sandbox import SandboxState, evolve
from sandboxer.errors import BusError, ConcurrencyConflict
from sandboxer.events.types import (
    NOT_SANDBOX_EVENTS,
    CommandRejected,
    SandboxEvent,
    decode_event,
    encode_event,
    event_type,
)

__all__ = ["EventStore", "Loaded"]

CONFLICT_CODES = frozenset({10071, 10164})
"""JetStream's "wrong last sequence" errors (per subject, and per wildcard subject)."""

PUBLISH_ATTEMPTS = 3


@dataclass(frozen=True)
class Loaded:
    """An aggregate's state and the stream sequence of its last event (0: none yet)."""

    state: SandboxState
    last_seq: int


def _with_id(event: SandboxEvent, version: int) -> SandboxEvent:
    """Give the event a deterministic id: a retry of the same append carries the same id."""
    body = encode_event(event)
    digest = hashlib.sha256(f"{event.sandbox_id}:{version}:".encode() + body).hexdigest()[:32]
    return msgspec.structs.replace(event, event_id=digest)


class EventStore:
    def __init__(self, nc: Client, js: JetStreamContext, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = js
        self._timeout = timeout

    async def load(self, sandbox_id: str) -> Loaded:
        """Fold every event of one sandbox (a batched direct get: one round trip for most)."""
        state = SandboxState(sandbox_id=sandbox_id)
        last_seq = 0
        async for seq, data in read_subject(
            self._nc, subjects.sandbox_events_filter(sandbox_id), timeout=self._timeout
        ):
            event = decode_event(data)
            if not isinstance(event, NOT_SANDBOX_EVENTS):
                state = evolve(state, event)
            last_seq = seq
        return Loaded(state, last_seq)

    async def append(self, loaded: Loaded, events: list[SandboxEvent]) -> Loaded:
        """Append ``events`` after ``loaded``; raise ConcurrencyConflict if another writer won."""
        state, last_seq = loaded.state, loaded.last_seq
        for event in events:
            stamped = _with_id(event, state.version)
            last_seq = await self._publish(stamped, last_seq)
            state = evolve(state, stamped)
        return Loaded(state, last_seq)

    async def _publish(self, event: SandboxEvent, expected_seq: int) -> int:
        scope = subjects.sandbox_events_filter(event.sandbox_id)
        headers = {
            "Nats-Msg-Id": event.event_id,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": scope,
        }
        subject = subjects.sandbox_event_subject(event.sandbox_id, event_type(event))
        data = encode_event(event)
        retried = False
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                ack = await self._js.publish(
                    subject, data, timeout=self._timeout, headers=dict(headers)
                )
            except NatsTimeout:
                retried = True  # it may have landed: retry with the same id
                continue
            except APIError as exc:
                if exc.err_code not in CONFLICT_CODES:
                    raise BusError(f"appending {subject} failed: {exc}") from exc
                if retried:
                    landed = await self._landed_seq(scope, event.event_id)
                    if landed is not None:
                        return landed
                raise ConcurrencyConflict(
                    f"sandbox {event.sandbox_id} changed while deciding; reload and decide again",
                    sandbox_id=event.sandbox_id,
                ) from exc
            return int(ack.seq)
        raise BusError(f"appending {subject} timed out {PUBLISH_ATTEMPTS} times; is NATS healthy?")

    async def _landed_seq(self, scope: str, event_id: str) -> int | None:
        try:
            last = await self._js.get_last_msg(subjects.EVENTS_STREAM, scope, direct=True)
        except NotFoundError:
            return None
        if (last.headers or {}).get("Nats-Msg-Id") == event_id and last.seq is not None:
            return int(last.seq)
        return None

    async def reject(self, rejection: CommandRejected) -> None:
        """Record a rejected command (its key is the command id, or the stream sequence)."""
        key = rejection.command_id or f"seq-{rejection.stream_seq}"
        digest = hashlib.sha256(f"rejected:{key}".encode()).hexdigest()[:32]
        stamped = msgspec.structs.replace(rejection, event_id=digest)
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                await self._js.publish(
                    subjects.rejection_subject(key),
                    encode_event(stamped),
                    timeout=self._timeout,
                    headers={"Nats-Msg-Id": digest},
                )
            except NatsTimeout:
                continue
            return
        raise BusError(f"recording the rejection of command {key} timed out; is NATS healthy?")
