"""The event store: the one way events reach the log.

:class:`EventStore` is the Protocol every worker writes through: sandbox
events under optimistic concurrency (:meth:`EventStore.append`), snapshot
events likewise on their own aggregate (:meth:`EventStore.append_snapshot`), and the
facts that belong to no sandbox, rejections and host events, with
:meth:`EventStore.record`. :class:`JetStreamEventStore` implements it on the
events stream; :class:`sandboxer.bus.memory_store.MemoryEventStore` is the
in-memory twin that pure tests of the deciding loop use.

Event ids are stamped here and nowhere else (:func:`event_id`), from what
makes an event the same event when its append is retried: an aggregate's
(sandbox's or snapshot's) version and the event's bytes; a rejection's command; a host event's bytes. The id is
the append's ``Nats-Msg-Id``, so JetStream drops a retried copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec

from sandboxer import subjects
from sandboxer.bus.ack_inbox import Outgoing
from sandboxer.domain.account_state import AccountBook, AccountState
from sandboxer.domain.host_places import HostPlaces
from sandboxer.domain.key_state import KeyState
from sandboxer.domain.pool_state import MemberState
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.codec import encode_event
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    KEY_EVENTS,
    NOT_SANDBOX_EVENTS,
    PLACE_EVENTS,
    POOL_EVENTS,
    SNAPSHOT_EVENTS,
    AccountEvent,
    CommandRejected,
    Event,
    HostEvent,
    KeyEvent,
    PlaceEvent,
    PoolEvent,
    SandboxEvent,
    SnapshotEvent,
    event_type,
)

__all__ = [
    "Alongside",
    "EventStore",
    "Loaded",
    "LoadedAccount",
    "LoadedKey",
    "LoadedMember",
    "LoadedPlaces",
    "LoadedSnapshot",
    "Record",
    "event_id",
    "event_subject",
    "rejection_key",
    "stamp",
]

Record = CommandRejected | HostEvent
"""Facts that belong to no sandbox aggregate: recorded without a concurrency check."""

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Loaded:
    """An aggregate's state and the stream sequence of its last event (0: none yet)."""

    state: SandboxState
    last_seq: int
    unconfirmed: str | None = None
    """Set on a state no read of the log confirmed, guessed from an append sent and not
    acknowledged yet (the provision job sent with its create's events): the id of its last
    event. An append after it also expects that event to be the events stream's last
    message, not only ``last_seq`` its sandbox's last sequence: the guessed position alone
    could be another event's, had the guessed ones been refused (docs/protocol.md#jobs)."""


@dataclass(frozen=True)
class LoadedSnapshot:
    """A snapshot aggregate's state and the stream sequence of its last event (0: none yet)."""

    state: SnapshotState
    last_seq: int


@dataclass(frozen=True)
class LoadedAccount:
    """A project's account book and the stream sequence of its last event (0: none yet)."""

    book: AccountBook
    last_seq: int

    @property
    def state(self) -> AccountState:
        return self.book.state


@dataclass(frozen=True)
class LoadedKey:
    """An API key's state and the stream sequence of its last event (0: none yet)."""

    state: KeyState
    last_seq: int


@dataclass(frozen=True)
class LoadedMember:
    """A warm pool member's state and the stream sequence of its last event (0: none yet)."""

    state: MemberState
    last_seq: int
    unconfirmed: str | None = None
    """As :attr:`Loaded.unconfirmed`: the id of an event sent and not acknowledged yet (a
    sandbox's `provisioning`, in the write its member's claim goes in), which an append after
    this state also expects as the events stream's last message."""


@dataclass(frozen=True)
class LoadedPlaces:
    """A host's places and the stream sequence of its last place event (0: none yet)."""

    state: HostPlaces
    last_seq: int


@dataclass
class Alongside:
    """A message to send beside a sandbox's events, made from the state they lead to at the
    log position of the last: a create's provision job, beside its ``requested`` and
    ``routed``. A store that sends a decision's events together, in one round trip, sends
    the message right after them on the same connection, and sets ``sent`` once every one
    of them was acknowledged; then the caller has nothing left to publish. A store that
    sends them one by one leaves ``sent`` False, and the caller publishes the message itself
    (once they are all in the log), as it would without this. ``message`` is given the state
    as guessed (:attr:`Loaded.unconfirmed` set), and answers None when there is nothing to
    send."""

    message: Callable[[Loaded], Outgoing | None]
    sent: bool = False


class EventStore(Protocol):
    async def load(self, sandbox_id: str) -> Loaded:
        """Fold every event of one sandbox."""

    async def append(
        self,
        loaded: Loaded,
        events: Sequence[SandboxEvent],
        *,
        alongside: Alongside | None = None,
    ) -> Loaded:
        """Append ``events`` after ``loaded``; ConcurrencyConflict if another writer won.
        ``alongside``: a message that may go out with them (:class:`Alongside`)."""

    async def load_snapshot(self, snapshot_id: str) -> LoadedSnapshot:
        """Fold every event of one snapshot."""

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        """Append snapshot ``events`` after ``loaded``, under the same concurrency rule."""

    async def load_account(self, project: str) -> LoadedAccount:
        """Fold every event of one project's account."""

    async def append_account(
        self, loaded: LoadedAccount, events: Sequence[AccountEvent]
    ) -> LoadedAccount:
        """Append account ``events`` after ``loaded``, under the same concurrency rule."""

    async def load_key(self, key_id: str) -> LoadedKey:
        """Fold every event of one API key."""

    async def append_key(self, loaded: LoadedKey, events: Sequence[KeyEvent]) -> LoadedKey:
        """Append key ``events`` after ``loaded``, under the same concurrency rule."""

    async def load_member(self, member_id: str) -> LoadedMember:
        """Fold every event of one warm pool member."""

    async def append_member(
        self, loaded: LoadedMember, events: Sequence[PoolEvent]
    ) -> LoadedMember:
        """Append pool member ``events`` after ``loaded``, under the same concurrency rule."""

    async def load_places(self, host: str) -> LoadedPlaces:
        """Fold every place event of one host (docs/routing.md#capacity)."""

    async def append_places(
        self, loaded: LoadedPlaces, events: Sequence[PlaceEvent]
    ) -> LoadedPlaces:
        """Append place ``events`` after ``loaded``, under the same concurrency rule."""

    async def snapshots_holding(self, object_name: str) -> list[str]:
        """Ids of the snapshots whose data is ``object_name`` and that are not deleted
        (the object is content addressed, so two snapshots of one tree share it)."""

    async def snapshot_states(self) -> list[SnapshotState]:
        """What the log says of every snapshot (the collection of orphaned snapshot objects
        reads them all at once: workers/snapshot_objects.py)."""

    async def sandboxes_using(self, ref: str) -> list[str]:
        """Ids of the sandboxes not destroyed whose inputs name ``ref`` (``object:sha256:…``):
        uploads and snapshots share content-addressed objects, so a snapshot's data may be a
        live sandbox's input (a recreate fetches it again)."""

    async def objects_in_use(self) -> set[str]:
        """The object references (``object:sha256:…``) that inputs of sandboxes not destroyed
        name (the collection of the bucket's objects asks once per sweep, whatever the number
        of objects: workers/snapshot_objects.py)."""

    async def record(self, event: Record) -> None:
        """Append a rejection or a host event (idempotent: a retry records it once)."""

    async def chain_position(self) -> int | None:
        """Where an append sent now is guessed to land, when appends that expect the event
        right before them as the stream's last message (``Loaded.unconfirmed``) may be sent
        before it is acknowledged; None when they may not (a replicated events stream, or
        one this store has not asked about yet): each is then awaited in turn."""


def rejection_key(rejection: CommandRejected) -> str:
    """What a rejection is filed under: the command id, or the message's stream position."""
    if rejection.command_id:
        return rejection.command_id
    prefix = "seq" if rejection.stream is None else f"{rejection.stream.lower()}-seq"
    return f"{prefix}-{rejection.stream_seq}"


def event_subject(event: Event) -> str:
    """The subject ``event`` is appended on: one per aggregate instance and type."""
    if isinstance(event, CommandRejected):
        return subjects.rejection_subject(rejection_key(event))
    if isinstance(event, SNAPSHOT_EVENTS):
        return subjects.snapshot_event_subject(event.snapshot_id, event_type(event))
    if isinstance(event, ACCOUNT_EVENTS):
        return subjects.account_event_subject(event.project, event_type(event))
    if isinstance(event, KEY_EVENTS):
        return subjects.key_event_subject(event.key_id, event_type(event))
    if isinstance(event, POOL_EVENTS):
        return subjects.pool_event_subject(event.member_id, event_type(event))
    if isinstance(event, PLACE_EVENTS):
        return subjects.place_event_subject(event.host, event_type(event))
    if isinstance(event, NOT_SANDBOX_EVENTS):
        return subjects.host_event_subject(event.host, event_type(event))
    return subjects.sandbox_event_subject(event.sandbox_id, event_type(event))


def event_id(event: Event, *, version: int = 0) -> str:
    """The deterministic id of ``event``: the same for every retry of the same append.

    ``version`` is the aggregate's version before the event (sandbox and snapshot events).
    """
    if isinstance(event, CommandRejected):
        # One rejection per command id *and* rejected actor: a command id is anyone's to
        # send, and another caller's rejection under it (a key of another project, say)
        # must not take the place of this command's own as a duplicate (command_outcomes.py).
        actor = event.actor
        who = b"" if actor is None else msgspec.json.encode([actor.type, actor.id, actor.project])
        identity = f"rejected:{rejection_key(event)}".encode() + who
    elif isinstance(event, HostEvent):
        identity = encode_event(event)
    elif isinstance(event, SNAPSHOT_EVENTS):
        identity = f"snapshot:{event.snapshot_id}:{version}:".encode() + encode_event(event)
    elif isinstance(event, ACCOUNT_EVENTS):
        identity = f"account:{event.project}:{version}:".encode() + encode_event(event)
    elif isinstance(event, KEY_EVENTS):
        identity = f"key:{event.key_id}:{version}:".encode() + encode_event(event)
    elif isinstance(event, POOL_EVENTS):
        identity = f"pool:{event.member_id}:{version}:".encode() + encode_event(event)
    elif isinstance(event, PLACE_EVENTS):
        identity = f"host:{event.host}:{version}:".encode() + encode_event(event)
    else:
        identity = f"{event.sandbox_id}:{version}:".encode() + encode_event(event)
    return hashlib.sha256(identity).hexdigest()[:32]


def stamp(event: E, *, version: int = 0) -> E:
    return msgspec.structs.replace(event, event_id=event_id(event, version=version))
