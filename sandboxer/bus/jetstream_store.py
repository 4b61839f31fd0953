"""The event store on JetStream: batched direct get to load, expected-sequence appends.

Appends carry both expected-sequence headers scoped to the aggregate
(``sandboxer.evt.sandbox.<id>.>``, ``sandboxer.evt.snapshot.<id>.>``) so that
any two writers of one aggregate conflict, whatever event types they write. A publish that timed out may still
have landed, so it is retried with the same ``Nats-Msg-Id``; with one replica
the server answers such a retry with a wrong-sequence error rather than
"duplicate", so a conflict after a retry is settled by reading the sandbox's
last message and accepting it when it carries our id.

Reads are monotonic per store. Any replica of a clustered stream answers a direct
get, and one that has not applied the latest writes yet answers without them: on
a 3-node cluster, about one read in sixty right after an acknowledged append
(docs/reliability.md). A store remembers the last sequence it has seen on each
aggregate, from its own appends and loads, and reads on until it has it again.
So the worker that appended a sandbox's ``ready`` finds the sandbox ready when an
exec for it comes next. (nats-server's ``min_last_seq`` for reads, which would ask
the server for this, is not in 2.15.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.ack_inbox import Outgoing, publish_all_for_ack
from sandboxer.bus.aggregates import (
    ACCOUNT,
    PLACES,
    SANDBOX,
    Aggregate,
    AggregateStore,
    Beside,
    E,
    L,
    S,
)
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_store import (
    Loaded,
    LoadedAccount,
    LoadedPlaces,
    Record,
    event_subject,
    stamp,
)
from sandboxer.bus.publish import (
    ATTEMPT_TIMEOUT,
    PublishConflict,
    is_expectation_failure,
    is_transient,
    publish_durably,
)
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.errors import StreamUnavailable
from sandboxer.events.codec import UnknownEventType, decode_event, encode_event
from sandboxer.events.types import (
    SNAPSHOT_EVENTS,
    Event,
    SandboxDestroyed,
    SandboxRequested,
)
from sandboxer.recent import Recent

__all__ = ["JetStreamEventStore", "event_subject"]

log = logging.getLogger(__name__)

KNOWN_ACCOUNTS = 32
"""Accounts whose last folded state a store keeps, to read only what came after it. An
account gains an event for every sandbox metered, forever: folded from sequence 1 on every
load, the meter's cost grew with every sandbox the project ever had (docs/performance.md,
"Accounts")."""
KNOWN_SANDBOXES = 512
"""Sandboxes whose last folded state a store keeps, to read only what came after it. An
active sandbox gains a ``touched`` event up to once a minute; folded from sequence 1, one with
10,000 events took 0.9 s to load, and every command on it, exec included, loads it."""
KNOWN_HOSTS = 64
"""Hosts whose places a store keeps folded: a host gains two place events per sandbox placed
on it, for ever, and each create placed there reads them (docs/routing.md#capacity)."""
KNOWN_FLOORS = 10_000
"""Aggregates whose last seen sequence a store keeps (about 100 bytes each)."""
CATCH_UP_PAUSE = 0.002
"""Seconds between reads of an aggregate that a replica behind answered (it lags by ms)."""


@dataclass
class _SnapshotIndex:
    """Every snapshot's state folded so far, and the last snapshot event folded."""

    states: dict[str, SnapshotState] = field(default_factory=dict)
    after: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _ObjectsIndex:
    """The object references each sandbox not destroyed names, and how far each subject
    (``requested``, ``destroyed``) was read."""

    refs: dict[str, frozenset[str]] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _expecting(
    event: Event, scope: str, expected_seq: int, after: str | None = None
) -> dict[str, str]:
    """The headers of an append: its id, and its scope's last sequence as it must still be;
    ``after``: the id of the event that must be the stream's last message."""
    headers = {
        "Nats-Msg-Id": event.event_id,
        "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
        "Nats-Expected-Last-Subject-Sequence-Subject": scope,
    }
    if after is not None:
        headers["Nats-Expected-Last-Msg-Id"] = after
    return headers


class JetStreamEventStore(AggregateStore):
    """:class:`~sandboxer.bus.event_store.EventStore` on the events stream."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        timeout: float = 5.0,
        checkpoints: AccountCheckpoints | None = None,
    ) -> None:
        """``checkpoints``: where accounts' checkpoints are read and written (the service's
        stores; a store without them folds every fresh load from sequence 1)."""
        self._nc = nc
        self._js = js
        self._timeout = timeout
        self._checkpoints = checkpoints
        self._accounts: Recent[str, LoadedAccount] = Recent(KNOWN_ACCOUNTS)
        self._sandboxes: Recent[str, Loaded] = Recent(KNOWN_SANDBOXES)
        self._hosts: Recent[str, LoadedPlaces] = Recent(KNOWN_HOSTS)
        self._kept_by_name: dict[str, Recent[str, Any]] = {
            SANDBOX.name: self._sandboxes,
            ACCOUNT.name: self._accounts,
            PLACES.name: self._hosts,
        }
        self._floors: Recent[str, int] = Recent(KNOWN_FLOORS)
        self._snapshot_index = _SnapshotIndex()
        self._objects_index = _ObjectsIndex()
        self._stream_last = 0
        """The highest sequence of the events stream this store saw acknowledged."""
        self._publishing = 0
        """This store's publishes awaiting their acks."""
        self._replicas: int | None = None
        """The events stream's replicas, once asked (:meth:`_one_copy`)."""

    async def _events(
        self, filter_subject: str, after: int = 0
    ) -> AsyncIterator[tuple[int, Event | None]]:
        """``(seq, event)`` on ``filter_subject`` past sequence ``after`` (a batched direct
        get: one round trip for most); ``None`` for an event of a type this version does not
        know (it is skipped). Never short of what this store has seen there (its floor)."""
        floor = self._floors.get(filter_subject, 0)
        last = after
        deadline: float | None = None
        while True:
            async for seq, data in read_subject(
                self._nc, filter_subject, timeout=self._timeout, start=last + 1, bulk=self._js
            ):
                last = seq
                try:
                    yield seq, decode_event(data)
                except UnknownEventType as unknown:
                    log.warning("%s: skipping event %d: %s", filter_subject, seq, unknown)
                    yield seq, None
            if last >= floor:
                break
            # A replica that has not applied what this store saw there answered: read on.
            deadline = deadline or time.monotonic() + self._timeout
            if time.monotonic() > deadline:
                raise StreamUnavailable(
                    f"reading {filter_subject}: the stream's replicas answer without sequence "
                    f"{floor}, which this worker saw there; is the stream healthy?"
                )
            await asyncio.sleep(CATCH_UP_PAUSE)
        self._saw(filter_subject, last)

    def _saw(self, scope: str, seq: int) -> None:
        if seq > self._floors.get(scope, 0):
            self._floors.put(scope, seq)

    def _kept(self, aggregate: Aggregate[Any, Any, Any]) -> Recent[str, Any] | None:
        """Sandboxes, accounts and hosts' places: the aggregates that gain events for ever
        (``KNOWN_SANDBOXES``, ``KNOWN_ACCOUNTS``, ``KNOWN_HOSTS``) and that every command on
        them loads."""
        return self._kept_by_name.get(aggregate.name)

    async def _checkpoint(self, aggregate: Aggregate[S, L, E], aggregate_id: str) -> L | None:
        """Accounts: the one in the checkpoints bucket, when it may be trusted."""
        if aggregate is not ACCOUNT or self._checkpoints is None:
            return None
        return cast(L | None, await self._checkpoints.read(aggregate_id))

    def _folded(self, aggregate: Aggregate[S, L, E], loaded: L, events: int) -> None:
        if aggregate is ACCOUNT and self._checkpoints is not None:
            self._checkpoints.folded(cast(LoadedAccount, loaded), events)

    async def snapshots_holding(self, object_name: str) -> list[str]:
        return sorted(
            state.snapshot_id
            for state in await self.snapshot_states()
            if state.object == object_name and state.status != "deleted"
        )

    async def snapshot_states(self) -> list[SnapshotState]:
        """Every snapshot as the log says now. The states are kept, and each call reads only
        the snapshot events past the last one it folded: the log is kept for ever, and the
        bucket's collection asks on every leak sweep."""
        index = self._snapshot_index
        async with index.lock:
            states, after = dict(index.states), index.after
            async for seq, event in self._events(subjects.SNAPSHOT_EVENTS, after):
                after = seq
                if isinstance(event, SNAPSHOT_EVENTS):
                    known = states.get(event.snapshot_id) or SnapshotState(
                        snapshot_id=event.snapshot_id
                    )
                    states[event.snapshot_id] = evolve_snapshot(known, event)
            index.states, index.after = states, after  # only a whole read counts
            return list(states.values())

    async def sandboxes_using(self, ref: str) -> list[str]:
        """Read every ``requested`` (a scan, like :meth:`snapshots_holding`), then load the few
        sandboxes whose inputs name ``ref``."""
        ids = {
            event.sandbox_id
            async for _seq, event in self._events(subjects.sandbox_event_subject("*", "requested"))
            if isinstance(event, SandboxRequested) and ref in event.inputs.values()
        }
        states = [(await self.load(sandbox_id)).state for sandbox_id in ids]
        return sorted(state.sandbox_id for state in states if state.status != "destroyed")

    async def objects_in_use(self) -> set[str]:
        """Kept as :meth:`snapshot_states` is: the object references of the sandboxes not
        destroyed, and how far the ``requested`` and ``destroyed`` events were read; each call
        reads only past that. ``destroyed`` is read first: the ``requested`` of a sandbox
        destroyed by then comes before it, so the same call reads it (one read first after
        the ``requested`` would miss a sandbox requested and destroyed in between)."""
        index = self._objects_index
        async with index.lock:
            refs, after = dict(index.refs), dict(index.after)
            gone: set[str] = set()
            destroyed = subjects.sandbox_event_subject("*", "destroyed")
            async for seq, event in self._events(destroyed, after.get(destroyed, 0)):
                after[destroyed] = seq
                if isinstance(event, SandboxDestroyed):
                    gone.add(event.sandbox_id)
            requested = subjects.sandbox_event_subject("*", "requested")
            async for seq, event in self._events(requested, after.get(requested, 0)):
                after[requested] = seq
                if isinstance(event, SandboxRequested):
                    # Only references: a path input is not the bucket's (and kept, it would
                    # cost memory for every sandbox).
                    named = frozenset(v for v in event.inputs.values() if v.startswith("object:"))
                    if named:
                        refs[event.sandbox_id] = named
            for sandbox_id in gone:
                refs.pop(sandbox_id, None)
            index.refs, index.after = refs, after  # only a whole read counts
            return set().union(*refs.values())

    async def record(self, event: Record) -> None:
        stamped = stamp(event)
        await self._publish(stamped, {"Nats-Msg-Id": stamped.event_id})

    async def _append_at(
        self,
        aggregate: Aggregate[Any, Any, Any],
        aggregate_id: str,
        event: Event,
        expected_seq: int,
        *,
        sent_before: bool = False,
        after: str | None = None,
    ) -> int:
        """Append under both expected-sequence headers, scoped to the aggregate (and, with
        ``after``, the last-message-id one). ``sent_before``: the event went out once already
        and its fate is unknown (no ack came), so a conflict may be its own landing."""
        scope = aggregate.scope(aggregate_id)
        try:
            appended = await self._publish(event, _expecting(event, scope, expected_seq, after))
        except PublishConflict as conflict:
            if conflict.retried or sent_before:
                landed = await self._landed_seq(scope, event.event_id)
                if landed is not None:
                    self._saw(scope, landed)
                    return landed
            raise aggregate.conflict(aggregate_id) from conflict
        self._saw(scope, appended)
        return appended

    async def chain_position(self) -> int | None:
        # Only a stream of one copy takes the last-message-id header safely (_one_copy). A
        # publish of this process awaiting its ack may land first and make the guess wrong:
        # an append that expects it is refused then, and sent again in turn.
        if not self._stream_last or not await self._one_copy():
            return None
        return self._stream_last + 1

    async def _one_copy(self) -> bool:
        """Whether the events stream keeps one copy: only then are a decision's events sent
        together. A replicated stream's followers check ``Nats-Expected-Last-Msg-Id`` again as
        they apply an entry, and after a leader was killed they found it unmet where the
        leader had found it met (nats-server 2.15.1, ``make chaos`` ``leader-kill``,
        2026-12-07: "last msgid mismatch", a critical write error on both followers, and the
        stream without a leader from then on). So a replicated stream gets one event at a
        time, each expecting the sequence the one before it was acknowledged at. Asked once;
        unknown (the question failed: no leader yet, an identity that may not ask) counts as
        replicated for this store's life, which costs a round trip a decision and nothing
        else."""
        if self._replicas is None:
            try:
                info = await self._js.stream_info(subjects.EVENTS_STREAM)
            except Exception:
                self._replicas = 0
            else:
                self._replicas = info.config.num_replicas or 1
        return self._replicas == 1

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
        """Send the events of one decision at once when this store's own appends are all
        answered: one round trip for them all (a create's ``requested`` and ``routed``), and
        for the message ``beside`` them (its provision job), sent last, made from the state
        they fold to at the position the last one is guessed to land at.

        Each one after the first expects the stream's last message to be the event before it
        (``Nats-Expected-Last-Msg-Id``), so it lands only right after that one, with nothing
        of anyone's between them. The last sequence it expects on its scope is where the
        event before it was guessed to land: the stream's next after the last sequence this
        store saw acknowledged. When another writer appended meanwhile the guess is wrong,
        the stream refuses the rest, and they go one by one from the first refused, as any
        store sends them (the round trip saved is lost, and no more). A send that fails is
        taken as no answer to any of them.

        The message beside them is marked sent only when it and every event were
        acknowledged: then the guess was right, and it carries the position its events are
        at. Otherwise its maker publishes it again under its message id, which the stream
        drops as a copy when the first one landed; a job that carries a wrong guess conflicts
        at its first append and its worker reads the log instead (workers/deciding.py). The
        message goes out after the events on the same connection: on a lone server, whatever
        its reader appends next reaches the events stream after them; elsewhere its reader
        may find the log behind it, and waits (docs/protocol.md#jobs)."""
        if after is not None and not await self._one_copy():
            # Only a stream of one copy takes the last-message-id header safely (above); a
            # guessed state there is read from the log instead.
            raise aggregate.conflict(aggregate_id)
        if (
            len(events) < 2
            or self._publishing
            or not self._stream_last
            or not await self._one_copy()
        ):
            return await super()._append_all(
                aggregate, aggregate_id, events, expected_seq, after=after
            )
        scope = aggregate.scope(aggregate_id)
        outgoing: list[Outgoing] = []
        expected = expected_seq
        for index, event in enumerate(events):
            headers = _expecting(
                event, scope, expected, events[index - 1].event_id if index else after
            )
            outgoing.append((event_subject(event), encode_event(event), headers))
            expected = self._stream_last + index + 1  # where this one lands, guessed
        extra = None if beside is None else beside.message(self._stream_last + len(events))
        if extra is not None:
            outgoing.append(extra)
        self._publishing += 1
        try:
            answers = await publish_all_for_ack(self._nc, outgoing, timeout=ATTEMPT_TIMEOUT)
        except Exception as failed:  # the one-by-one sends below retry it, or say why not
            answers = [failed] * len(outgoing)
        finally:
            self._publishing -= 1
        if beside is not None and extra is not None:
            beside.alongside.sent = all(isinstance(answer, PubAck) for answer in answers)
            answers = answers[: len(events)]
        last_seq = expected_seq
        for index, answer in enumerate(answers):
            if isinstance(answer, PubAck):
                last_seq = self._acked(answer)
                self._saw(scope, last_seq)
                continue
            if index == 0 and is_expectation_failure(answer):
                raise aggregate.conflict(aggregate_id) from answer
            # From the first one not acknowledged on, one by one. One that got no answer may
            # have landed (sent_before); should a later one have been acknowledged all the
            # same (an ack lost, the very next landed), the resend finds it in the way and
            # raises the conflict a load and a new decision settle.
            for position, event in enumerate(events[index:], start=index):
                last_seq = await self._append_at(
                    aggregate,
                    aggregate_id,
                    event,
                    last_seq,
                    sent_before=is_transient(answer),
                    after=None if position else after,
                )
            break
        return last_seq

    async def _publish(self, event: Event, headers: dict[str, str]) -> int:
        """The one publish of every append: retried through elections, same id every time.

        Raises PublishConflict, StreamUnavailable once the retry budget is spent,
        or BusError for any other refusal.
        """
        self._publishing += 1
        try:
            published = await publish_durably(
                self._js, event_subject(event), encode_event(event), headers=headers
            )
        finally:
            self._publishing -= 1
        return self._acked(published.ack)

    def _acked(self, ack: PubAck) -> int:
        """An event's sequence, from its ack; noted as the stream's last this store knows."""
        seq = int(ack.seq)
        self._stream_last = max(self._stream_last, seq)
        return seq

    async def _landed_seq(self, scope: str, event_id: str) -> int | None:
        try:
            last = await self._js.get_last_msg(subjects.EVENTS_STREAM, scope, direct=True)
        except NotFoundError:
            return None
        if (last.headers or {}).get("Nats-Msg-Id") == event_id and last.seq is not None:
            return int(last.seq)
        return None
