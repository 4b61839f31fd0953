"""An in-memory event store: the JetStream store's twin for pure tests of the deciding loop.

Same contract (:class:`~sandboxer.bus.event_store.EventStore`): one log, ids
stamped by :func:`~sandboxer.bus.event_store.stamp`, appends refused with
:class:`~sandboxer.errors.ConcurrencyConflict` when the sandbox moved on since
it was loaded. Loads and appends are the JetStream store's own
(:class:`~sandboxer.bus.aggregates.AggregateStore`): each event is filed under the
subject JetStream would store it on, and an aggregate is the events its scope matches.
No test that claims JetStream works uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sandboxer import subjects
from sandboxer.bus.aggregates import Aggregate, AggregateStore
from sandboxer.bus.event_store import Record, event_subject, stamp
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.types import SNAPSHOT_EVENTS, Event, SandboxRequested

__all__ = ["MemoryEventStore"]


class MemoryEventStore(AggregateStore):
    def __init__(self) -> None:
        self.log: list[Event] = []
        """Every event appended or recorded, in order; sequence ``n`` is ``log[n - 1]``."""

    async def _events(
        self, filter_subject: str, after: int = 0
    ) -> AsyncIterator[tuple[int, Event | None]]:
        for seq, event in enumerate(self.log[after:], start=after + 1):
            if subjects.matches(event_subject(event), filter_subject):
                yield seq, event

    def _last_seq(self, filter_subject: str) -> int:
        return next(
            (
                seq
                for seq in range(len(self.log), 0, -1)
                if subjects.matches(event_subject(self.log[seq - 1]), filter_subject)
            ),
            0,
        )

    async def _append_at(
        self,
        aggregate: Aggregate[Any, Any, Any],
        aggregate_id: str,
        event: Event,
        expected_seq: int,
        *,
        after: str | None = None,
    ) -> int:
        if self._last_seq(aggregate.scope(aggregate_id)) != expected_seq:
            raise aggregate.conflict(aggregate_id)
        if after is not None and (not self.log or self.log[-1].event_id != after):
            raise aggregate.conflict(aggregate_id)
        self.log.append(event)
        return len(self.log)

    async def chain_position(self) -> int | None:
        return len(self.log) + 1

    async def snapshots_holding(self, object_name: str) -> list[str]:
        ids = {event.snapshot_id for event in self.log if isinstance(event, SNAPSHOT_EVENTS)}
        states = [(await self.load_snapshot(snapshot_id)).state for snapshot_id in ids]
        return sorted(
            state.snapshot_id
            for state in states
            if state.object == object_name and state.status != "deleted"
        )

    async def snapshot_states(self) -> list[SnapshotState]:
        ids = {event.snapshot_id for event in self.log if isinstance(event, SNAPSHOT_EVENTS)}
        return [(await self.load_snapshot(snapshot_id)).state for snapshot_id in sorted(ids)]

    async def sandboxes_using(self, ref: str) -> list[str]:
        ids = {
            e.sandbox_id
            for e in self.log
            if isinstance(e, SandboxRequested)
            if ref in e.inputs.values()
        }
        states = [(await self.load(sandbox_id)).state for sandbox_id in ids]
        return sorted(state.sandbox_id for state in states if state.status != "destroyed")

    async def objects_in_use(self) -> set[str]:
        requested = [e for e in self.log if isinstance(e, SandboxRequested)]
        return {
            value
            for e in requested
            if (await self.load(e.sandbox_id)).state.status != "destroyed"
            for value in e.inputs.values()
            if value.startswith("object:")
        }

    async def record(self, event: Record) -> None:
        stamped = stamp(event)
        if all(getattr(known, "event_id", None) != stamped.event_id for known in self.log):
            self.log.append(stamped)
