"""Every aggregate's load and append, written once for both event stores.

An aggregate (a sandbox, a snapshot, a project's account, an API key, a warm pool member, a
host's places) is the events of one subject scope (``sandboxer.evt.sandbox.<id>.>``…)
folded from its initial state. :class:`Aggregate` says, for each kind, which scope, which
initial state, which evolve and which ``Loaded…`` holds the result; :class:`AggregateStore`
folds and appends by it. A store supplies only its I/O: the events of a scope past a
sequence (:meth:`AggregateStore._events`) and the append of one event that expects the
scope's last sequence (:meth:`AggregateStore._append_at`). The JetStream store also keeps
the last state of some kinds (:meth:`AggregateStore._kept`), and loads accounts from their
checkpoints (:meth:`AggregateStore._checkpoint`, :mod:`sandboxer.bus.checkpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, Generic, Protocol, TypeVar, cast, get_args

from sandboxer import subjects
from sandboxer.bus.ack_inbox import Outgoing
from sandboxer.bus.event_store import (
    Alongside,
    Loaded,
    LoadedAccount,
    LoadedKey,
    LoadedMember,
    LoadedPlaces,
    LoadedSnapshot,
    stamp,
)
from sandboxer.domain.account_state import AccountBook, evolve_book, fold_book
from sandboxer.domain.host_places import HostPlaces, evolve_places
from sandboxer.domain.key_state import KeyState, evolve_key
from sandboxer.domain.pool_state import MemberState, evolve_member
from sandboxer.domain.sandbox_state import SandboxState, evolve, fold_on
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.errors import ConcurrencyConflict
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    KEY_EVENTS,
    PLACE_EVENTS,
    POOL_EVENTS,
    SNAPSHOT_EVENTS,
    AccountEvent,
    Event,
    KeyEvent,
    PlaceEvent,
    PoolEvent,
    SandboxEvent,
    SnapshotEvent,
)
from sandboxer.fewer_collections import fewer_collections
from sandboxer.recent import Recent

__all__ = [
    "ACCOUNT",
    "KEY",
    "MEMBER",
    "PLACES",
    "SANDBOX",
    "SNAPSHOT",
    "Aggregate",
    "AggregateStore",
    "Beside",
]


@dataclass(frozen=True)
class Beside:
    """An :class:`~sandboxer.bus.event_store.Alongside` of one append, and what its events
    fold to at a log position: the message to send with them, once their last one's position
    is guessed."""

    alongside: Alongside
    folded_at: Callable[[int], Any]
    last_event: str
    """The id of the last of the events: the guessed state names it as its unconfirmed
    end (:attr:`~sandboxer.bus.event_store.Loaded.unconfirmed`)."""

    def message(self, last_seq: int) -> Outgoing | None:
        guessed = dataclasses.replace(self.folded_at(last_seq), unconfirmed=self.last_event)
        return self.alongside.message(guessed)


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...


class _Sequenced(Protocol):
    @property
    def last_seq(self) -> int: ...


FOLD_CHUNK = 5_000
"""Events a load folds before it lets the rest of its process run. A fresh load of a long
history (an account of a million events folds for seconds) would otherwise hold the event
loop of the process that also runs every other role, past the commands' ack wait."""

S = TypeVar("S", bound=_Versioned)
"""The state of one aggregate."""
L = TypeVar("L", bound=_Sequenced)
"""What a load returns: the state and the sequence of its last event."""
E = TypeVar("E", bound=Event)
"""The events of one aggregate."""


@dataclass(frozen=True)
class Aggregate(Generic[S, L, E]):
    """One kind of aggregate: where its events are, and how they fold."""

    name: str
    """What a conflict calls it."""
    kinds: tuple[type, ...]
    """The event types it folds (its scope holds no other)."""
    scope: Callable[[str], str]
    """Its id -> the filter subject of its events: the expected-sequence scope of appends."""
    initial: Callable[[str], S]
    evolve: Callable[[S, E], S]
    loaded: Callable[[S, int], L]
    state_of: Callable[[L], S]
    id_of: Callable[[S], str]
    fold_many: Callable[[S, Sequence[E]], S] | None = None
    """Folds many events at once where that is faster than :attr:`evolve` one by one."""

    def fold(self, state: S, events: Sequence[E]) -> S:
        if self.fold_many is not None:
            return self.fold_many(state, events)
        return reduce(self.evolve, events, state)

    def conflict(self, aggregate_id: str) -> ConcurrencyConflict:
        return ConcurrencyConflict(
            f"{self.name} {aggregate_id} changed while deciding; reload and decide again",
            sandbox_id=aggregate_id if self.name == "sandbox" else None,
        )


SANDBOX: Aggregate[SandboxState, Loaded, SandboxEvent] = Aggregate(
    name="sandbox",
    kinds=get_args(SandboxEvent),
    scope=subjects.sandbox_events_filter,
    initial=lambda sandbox_id: SandboxState(sandbox_id=sandbox_id),
    evolve=evolve,
    loaded=Loaded,
    state_of=lambda loaded: loaded.state,
    id_of=lambda state: state.sandbox_id,
    fold_many=fold_on,
)
SNAPSHOT: Aggregate[SnapshotState, LoadedSnapshot, SnapshotEvent] = Aggregate(
    name="snapshot",
    kinds=SNAPSHOT_EVENTS,
    scope=subjects.snapshot_events_filter,
    initial=lambda snapshot_id: SnapshotState(snapshot_id=snapshot_id),
    evolve=evolve_snapshot,
    loaded=LoadedSnapshot,
    state_of=lambda loaded: loaded.state,
    id_of=lambda state: state.snapshot_id,
)
ACCOUNT: Aggregate[AccountBook, LoadedAccount, AccountEvent] = Aggregate(
    name="account",
    kinds=ACCOUNT_EVENTS,
    scope=subjects.account_events_filter,
    initial=AccountBook.empty,
    evolve=evolve_book,
    loaded=LoadedAccount,
    fold_many=fold_book,
    state_of=lambda loaded: loaded.book,
    id_of=lambda book: book.state.project,
)
KEY: Aggregate[KeyState, LoadedKey, KeyEvent] = Aggregate(
    name="key",
    kinds=KEY_EVENTS,
    scope=subjects.key_events_filter,
    initial=lambda key_id: KeyState(key_id=key_id),
    evolve=evolve_key,
    loaded=LoadedKey,
    state_of=lambda loaded: loaded.state,
    id_of=lambda state: state.key_id,
)
MEMBER: Aggregate[MemberState, LoadedMember, PoolEvent] = Aggregate(
    name="pool member",
    kinds=POOL_EVENTS,
    scope=subjects.pool_events_filter,
    initial=lambda member_id: MemberState(member_id=member_id),
    evolve=evolve_member,
    loaded=LoadedMember,
    state_of=lambda loaded: loaded.state,
    id_of=lambda state: state.member_id,
)
PLACES: Aggregate[HostPlaces, LoadedPlaces, PlaceEvent] = Aggregate(
    name="host",
    kinds=PLACE_EVENTS,
    scope=subjects.place_events_filter,
    initial=lambda host: HostPlaces(host=host),
    evolve=evolve_places,
    loaded=LoadedPlaces,
    state_of=lambda loaded: loaded.state,
    id_of=lambda state: state.host,
)


class AggregateStore(ABC):
    """The aggregate half of :class:`~sandboxer.bus.event_store.EventStore`: each load folds
    the events of the aggregate's scope, each append expects the scope's last sequence."""

    @abstractmethod
    def _events(
        self, filter_subject: str, after: int = 0
    ) -> AsyncIterator[tuple[int, Event | None]]:
        """``(seq, event)`` on ``filter_subject`` past sequence ``after``, in order; ``None``
        for an event of a type this version does not know."""

    @abstractmethod
    async def _append_at(
        self,
        aggregate: Aggregate[Any, Any, Any],
        aggregate_id: str,
        event: Event,
        expected_seq: int,
        *,
        after: str | None = None,
    ) -> int:
        """Append ``event`` (stamped) on the aggregate's scope if ``expected_seq`` is still
        the scope's last sequence (and, with ``after``, the event of that id the store's last),
        and return its sequence; else raise ``aggregate.conflict(aggregate_id)``."""

    def _kept(self, aggregate: Aggregate[Any, Any, Any]) -> Recent[str, Any] | None:
        """Where this store keeps the last state it saw of aggregates of this kind, to read
        only the events that came after it (the log only grows); ``None``: it keeps none."""
        return None

    async def _checkpoint(self, aggregate: Aggregate[S, L, E], aggregate_id: str) -> L | None:
        """A load of the aggregate up to some sequence, stored beside the log for a fresh
        load to start from; ``None``: none (this store keeps none of this kind)."""
        return None

    def _folded(  # noqa: B027 (a hook: only the JetStream store's accounts keep checkpoints)
        self, aggregate: Aggregate[S, L, E], loaded: L, events: int
    ) -> None:
        """A load or an append folded ``events`` more events into ``loaded``: the store may
        keep a checkpoint of it."""

    async def _load(self, aggregate: Aggregate[S, L, E], aggregate_id: str) -> L:
        kept = self._kept(aggregate)
        known: L | None = None if kept is None else kept.get(aggregate_id)
        if known is None:
            known = await self._checkpoint(aggregate, aggregate_id)
        if known is None:
            state, after = aggregate.initial(aggregate_id), 0
        else:
            state, after = aggregate.state_of(known), known.last_seq
        state, last_seq, read = await self._fold_after(aggregate, aggregate_id, state, after)
        if known is not None and last_seq == after:
            loaded = known  # nothing new
        else:  # the events, if any: there may be only events of types this version skips
            loaded = aggregate.loaded(state, last_seq)
        if kept is not None:
            kept.put(aggregate_id, loaded)
        self._folded(aggregate, loaded, read)
        return loaded

    async def _fold_after(
        self, aggregate: Aggregate[S, L, E], aggregate_id: str, state: S, after: int
    ) -> tuple[S, int, int]:
        """``state`` with the aggregate's events past sequence ``after`` folded in, the last
        sequence read, and how many events were read. A long history is folded a chunk at a
        time, the rest of the process running in between, and with fewer collections."""
        last_seq, read, chunks = after, 0, 0
        events: list[E] = []
        with contextlib.ExitStack() as long_history:
            async for seq, event in self._events(aggregate.scope(aggregate_id), after):
                last_seq, read = seq, read + 1
                if not isinstance(event, aggregate.kinds):
                    continue
                events.append(cast(E, event))
                if len(events) < FOLD_CHUNK:
                    continue
                if chunks == 0:  # a long history: fewer collections until it is folded
                    long_history.enter_context(fewer_collections())
                chunks += 1
                state, events = aggregate.fold(state, events), []
                await asyncio.sleep(0)  # the rest of the process runs meanwhile
            return aggregate.fold(state, events), last_seq, read

    async def _append_all(
        self,
        aggregate: Aggregate[Any, Any, Any],
        aggregate_id: str,
        events: Sequence[Event],
        expected_seq: int,
        beside: Beside | None = None,
        *,
        after: str | None = None,
    ) -> int:
        """Append ``events`` (stamped) in order, the first expecting ``expected_seq`` (and,
        with ``after``, that event as the stream's last message) and each later one the
        sequence of the one before; the last one's sequence. One by one here, and nothing
        sent ``beside`` them; a store may send them at once
        (:class:`~sandboxer.bus.jetstream_store.JetStreamEventStore`) as long as each lands
        only right after the one before it."""
        for event in events:
            expected_seq = await self._append_at(
                aggregate, aggregate_id, event, expected_seq, after=after
            )
            after = None
        return expected_seq

    async def _append(
        self,
        aggregate: Aggregate[S, L, E],
        loaded: L,
        events: Sequence[E],
        alongside: Alongside | None = None,
    ) -> L:
        """Append ``events`` after ``loaded``, each expecting the last one's sequence, and fold
        them (stamped as folded: an event's id names the version it was decided at)."""
        state = aggregate.state_of(loaded)
        aggregate_id = aggregate.id_of(state)
        stamped_events = []
        for event in events:
            stamped = stamp(event, version=state.version)
            stamped_events.append(stamped)
            state = aggregate.evolve(state, stamped)
        beside = None
        if alongside is not None and stamped_events:
            folded = state
            beside = Beside(
                alongside,
                lambda last_seq: aggregate.loaded(folded, last_seq),
                stamped_events[-1].event_id,
            )
        last_seq = await self._append_all(
            aggregate,
            aggregate_id,
            stamped_events,
            loaded.last_seq,
            beside,
            # A guess not read back: a job's state (Loaded.unconfirmed), or a member's whose
            # claim goes out right after its sandbox's `provisioning` (LoadedMember.unconfirmed).
            after=getattr(loaded, "unconfirmed", None),
        )
        appended = aggregate.loaded(state, last_seq)
        kept = self._kept(aggregate)
        if kept is not None:
            kept.put(aggregate_id, appended)
        self._folded(aggregate, appended, len(events))
        return appended

    async def load(self, sandbox_id: str) -> Loaded:
        return await self._load(SANDBOX, sandbox_id)

    async def append(
        self,
        loaded: Loaded,
        events: Sequence[SandboxEvent],
        *,
        alongside: Alongside | None = None,
    ) -> Loaded:
        return await self._append(SANDBOX, loaded, events, alongside)

    async def load_snapshot(self, snapshot_id: str) -> LoadedSnapshot:
        return await self._load(SNAPSHOT, snapshot_id)

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        return await self._append(SNAPSHOT, loaded, events)

    async def load_account(self, project: str) -> LoadedAccount:
        return await self._load(ACCOUNT, project)

    async def append_account(
        self, loaded: LoadedAccount, events: Sequence[AccountEvent]
    ) -> LoadedAccount:
        return await self._append(ACCOUNT, loaded, events)

    async def load_key(self, key_id: str) -> LoadedKey:
        return await self._load(KEY, key_id)

    async def append_key(self, loaded: LoadedKey, events: Sequence[KeyEvent]) -> LoadedKey:
        return await self._append(KEY, loaded, events)

    async def load_member(self, member_id: str) -> LoadedMember:
        return await self._load(MEMBER, member_id)

    async def append_member(
        self, loaded: LoadedMember, events: Sequence[PoolEvent]
    ) -> LoadedMember:
        return await self._append(MEMBER, loaded, events)

    async def load_places(self, host: str) -> LoadedPlaces:
        return await self._load(PLACES, host)

    async def append_places(
        self, loaded: LoadedPlaces, events: Sequence[PlaceEvent]
    ) -> LoadedPlaces:
        return await self._append(PLACES, loaded, events)
