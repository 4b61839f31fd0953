"""An in-memory event store: the JetStream store's twin for pure tests of the deciding loop.

Same contract (:class:`~sandboxer.bus.event_store.EventStore`): one log, ids
stamped by :func:`~sandboxer.bus.event_store.stamp`, appends refused with
:class:`~sandboxer.errors.ConcurrencyConflict` when the sandbox moved on since
it was loaded. No test that claims JetStream works uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sandboxer.bus.event_store import (
    Loaded,
    LoadedAccount,
    LoadedKey,
    LoadedMember,
    LoadedPlaces,
    LoadedSnapshot,
    Record,
    stamp,
)
from sandboxer.domain.account_state import AccountBook, evolve_book
from sandboxer.domain.host_places import HostPlaces, evolve_places
from sandboxer.domain.key_state import KeyState, evolve_key
from sandboxer.domain.pool_state import MemberState, evolve_member
from sandboxer.domain.sandbox_state import SandboxState, evolve
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
    SandboxRequested,
    SnapshotEvent,
)

__all__ = ["MemoryEventStore"]


S = TypeVar("S")
"""The state of one aggregate (sandbox, snapshot, account, key)."""


class MemoryEventStore:
    def __init__(self) -> None:
        self.log: list[Event] = []
        """Every event appended or recorded, in order; sequence ``n`` is ``log[n - 1]``."""

    def _seqs(self, belongs: Callable[[Event], bool]) -> list[int]:
        return [seq for seq, event in enumerate(self.log, start=1) if belongs(event)]

    def _fold(
        self, belongs: Callable[[Event], bool], state: S, step: Callable[[S, Any], S]
    ) -> tuple[S, int]:
        seqs = self._seqs(belongs)
        for seq in seqs:
            state = step(state, self.log[seq - 1])
        return state, seqs[-1] if seqs else 0

    def _append_all(
        self,
        belongs: Callable[[Event], bool],
        state: S,
        last_seq: int,
        events: Sequence[Any],
        step: Callable[[S, Any], S],
        what: str,
    ) -> tuple[S, int]:
        """Append unless the aggregate moved on since ``last_seq`` (ConcurrencyConflict)."""
        seqs = self._seqs(belongs)
        if (seqs[-1] if seqs else 0) != last_seq:
            raise ConcurrencyConflict(f"{what} changed while deciding")
        for event in events:
            stamped = stamp(event, version=state.version)  # type: ignore[attr-defined]
            self.log.append(stamped)
            last_seq = len(self.log)
            state = step(state, stamped)
        return state, last_seq

    @staticmethod
    def _of_sandbox(sandbox_id: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, SandboxEvent) and e.sandbox_id == sandbox_id

    @staticmethod
    def _of_snapshot(snapshot_id: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, SNAPSHOT_EVENTS) and e.snapshot_id == snapshot_id

    @staticmethod
    def _of_account(project: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, ACCOUNT_EVENTS) and e.project == project

    @staticmethod
    def _of_key(key_id: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, KEY_EVENTS) and e.key_id == key_id

    @staticmethod
    def _of_member(member_id: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, POOL_EVENTS) and e.member_id == member_id

    @staticmethod
    def _of_host(host: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, PLACE_EVENTS) and e.host == host

    async def load(self, sandbox_id: str) -> Loaded:
        return Loaded(
            *self._fold(self._of_sandbox(sandbox_id), SandboxState(sandbox_id=sandbox_id), evolve)
        )

    async def append(self, loaded: Loaded, events: Sequence[SandboxEvent]) -> Loaded:
        sandbox_id = loaded.state.sandbox_id
        try:
            return Loaded(
                *self._append_all(
                    self._of_sandbox(sandbox_id),
                    loaded.state,
                    loaded.last_seq,
                    events,
                    evolve,
                    f"sandbox {sandbox_id}",
                )
            )
        except ConcurrencyConflict as conflict:
            raise ConcurrencyConflict(conflict.message, sandbox_id=sandbox_id) from None

    async def load_snapshot(self, snapshot_id: str) -> LoadedSnapshot:
        belongs = self._of_snapshot(snapshot_id)
        return LoadedSnapshot(
            *self._fold(belongs, SnapshotState(snapshot_id=snapshot_id), evolve_snapshot)
        )

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        snapshot_id = loaded.state.snapshot_id
        return LoadedSnapshot(
            *self._append_all(
                self._of_snapshot(snapshot_id),
                loaded.state,
                loaded.last_seq,
                events,
                evolve_snapshot,
                f"snapshot {snapshot_id}",
            )
        )

    async def load_account(self, project: str) -> LoadedAccount:
        return LoadedAccount(
            *self._fold(self._of_account(project), AccountBook.empty(project), evolve_book)
        )

    async def append_account(
        self, loaded: LoadedAccount, events: Sequence[AccountEvent]
    ) -> LoadedAccount:
        project = loaded.state.project
        return LoadedAccount(
            *self._append_all(
                self._of_account(project),
                loaded.book,
                loaded.last_seq,
                events,
                evolve_book,
                f"account {project}",
            )
        )

    async def load_key(self, key_id: str) -> LoadedKey:
        return LoadedKey(*self._fold(self._of_key(key_id), KeyState(key_id=key_id), evolve_key))

    async def append_key(self, loaded: LoadedKey, events: Sequence[KeyEvent]) -> LoadedKey:
        key_id = loaded.state.key_id
        return LoadedKey(
            *self._append_all(
                self._of_key(key_id),
                loaded.state,
                loaded.last_seq,
                events,
                evolve_key,
                f"key {key_id}",
            )
        )

    async def load_member(self, member_id: str) -> LoadedMember:
        return LoadedMember(
            *self._fold(self._of_member(member_id), MemberState(member_id=member_id), evolve_member)
        )

    async def append_member(
        self, loaded: LoadedMember, events: Sequence[PoolEvent]
    ) -> LoadedMember:
        member_id = loaded.state.member_id
        return LoadedMember(
            *self._append_all(
                self._of_member(member_id),
                loaded.state,
                loaded.last_seq,
                events,
                evolve_member,
                f"pool member {member_id}",
            )
        )

    async def load_places(self, host: str) -> LoadedPlaces:
        return LoadedPlaces(*self._fold(self._of_host(host), HostPlaces(host=host), evolve_places))

    async def append_places(
        self, loaded: LoadedPlaces, events: Sequence[PlaceEvent]
    ) -> LoadedPlaces:
        host = loaded.state.host
        return LoadedPlaces(
            *self._append_all(
                self._of_host(host),
                loaded.state,
                loaded.last_seq,
                events,
                evolve_places,
                f"host {host}",
            )
        )

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
