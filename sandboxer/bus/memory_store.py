"""An in-memory event store: the JetStream store's twin for pure tests of the deciding loop.

Same contract (:class:`~sandboxer.bus.event_store.EventStore`): one log, ids
stamped by :func:`~sandboxer.bus.event_store.stamp`, appends refused with
:class:`~sandboxer.errors.ConcurrencyConflict` when the sandbox moved on since
it was loaded. No test that claims JetStream works uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sandboxer.bus.event_store import (
    Loaded,
    LoadedAccount,
    LoadedKey,
    LoadedSnapshot,
    Record,
    stamp,
)
from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.domain.key_state import KeyState, evolve_key
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.errors import ConcurrencyConflict
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    KEY_EVENTS,
    SNAPSHOT_EVENTS,
    AccountEvent,
    Event,
    KeyEvent,
    SandboxEvent,
    SandboxRequested,
    SnapshotEvent,
)

__all__ = ["MemoryEventStore"]


class MemoryEventStore:
    def __init__(self) -> None:
        self.log: list[Event] = []
        """Every event appended or recorded, in order; sequence ``n`` is ``log[n - 1]``."""

    def _sandbox_seqs(self, sandbox_id: str) -> list[int]:
        return [
            seq
            for seq, event in enumerate(self.log, start=1)
            if getattr(event, "sandbox_id", None) == sandbox_id and isinstance(event, SandboxEvent)
        ]

    async def load(self, sandbox_id: str) -> Loaded:
        state = SandboxState(sandbox_id=sandbox_id)
        seqs = self._sandbox_seqs(sandbox_id)
        for seq in seqs:
            event = self.log[seq - 1]
            assert isinstance(event, SandboxEvent)
            state = evolve(state, event)
        return Loaded(state, seqs[-1] if seqs else 0)

    async def append(self, loaded: Loaded, events: Sequence[SandboxEvent]) -> Loaded:
        state, last_seq = loaded.state, loaded.last_seq
        seqs = self._sandbox_seqs(state.sandbox_id)
        if (seqs[-1] if seqs else 0) != last_seq:
            raise ConcurrencyConflict(
                f"sandbox {state.sandbox_id} changed while deciding", sandbox_id=state.sandbox_id
            )
        for event in events:
            stamped = stamp(event, version=state.version)
            self.log.append(stamped)
            last_seq = len(self.log)
            state = evolve(state, stamped)
        return Loaded(state, last_seq)

    def _snapshot_seqs(self, snapshot_id: str) -> list[int]:
        return [
            seq
            for seq, event in enumerate(self.log, start=1)
            if isinstance(event, SNAPSHOT_EVENTS) and event.snapshot_id == snapshot_id
        ]

    async def load_snapshot(self, snapshot_id: str) -> LoadedSnapshot:
        state = SnapshotState(snapshot_id=snapshot_id)
        seqs = self._snapshot_seqs(snapshot_id)
        for seq in seqs:
            event = self.log[seq - 1]
            assert isinstance(event, SNAPSHOT_EVENTS)
            state = evolve_snapshot(state, event)
        return LoadedSnapshot(state, seqs[-1] if seqs else 0)

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        state, last_seq = loaded.state, loaded.last_seq
        seqs = self._snapshot_seqs(state.snapshot_id)
        if (seqs[-1] if seqs else 0) != last_seq:
            raise ConcurrencyConflict(f"snapshot {state.snapshot_id} changed while deciding")
        for event in events:
            stamped = stamp(event, version=state.version)
            self.log.append(stamped)
            last_seq = len(self.log)
            state = evolve_snapshot(state, stamped)
        return LoadedSnapshot(state, last_seq)

    def _account_seqs(self, project: str) -> list[int]:
        return [
            seq
            for seq, event in enumerate(self.log, start=1)
            if isinstance(event, ACCOUNT_EVENTS) and event.project == project
        ]

    async def load_account(self, project: str) -> LoadedAccount:
        state = AccountState(project=project)
        seqs = self._account_seqs(project)
        for seq in seqs:
            event = self.log[seq - 1]
            assert isinstance(event, ACCOUNT_EVENTS)
            state = evolve_account(state, event)
        return LoadedAccount(state, seqs[-1] if seqs else 0)

    async def append_account(
        self, loaded: LoadedAccount, events: Sequence[AccountEvent]
    ) -> LoadedAccount:
        state, last_seq = loaded.state, loaded.last_seq
        seqs = self._account_seqs(state.project)
        if (seqs[-1] if seqs else 0) != last_seq:
            raise ConcurrencyConflict(f"account {state.project} changed while deciding")
        for event in events:
            stamped = stamp(event, version=state.version)
            self.log.append(stamped)
            last_seq = len(self.log)
            state = evolve_account(state, stamped)
        return LoadedAccount(state, last_seq)

    def _key_seqs(self, key_id: str) -> list[int]:
        return [
            seq
            for seq, event in enumerate(self.log, start=1)
            if isinstance(event, KEY_EVENTS) and event.key_id == key_id
        ]

    async def load_key(self, key_id: str) -> LoadedKey:
        state = KeyState(key_id=key_id)
        seqs = self._key_seqs(key_id)
        for seq in seqs:
            event = self.log[seq - 1]
            assert isinstance(event, KEY_EVENTS)
            state = evolve_key(state, event)
        return LoadedKey(state, seqs[-1] if seqs else 0)

    async def append_key(self, loaded: LoadedKey, events: Sequence[KeyEvent]) -> LoadedKey:
        state, last_seq = loaded.state, loaded.last_seq
        seqs = self._key_seqs(state.key_id)
        if (seqs[-1] if seqs else 0) != last_seq:
            raise ConcurrencyConflict(f"key {state.key_id} changed while deciding")
        for event in events:
            stamped = stamp(event, version=state.version)
            self.log.append(stamped)
            last_seq = len(self.log)
            state = evolve_key(state, stamped)
        return LoadedKey(state, last_seq)

    async def snapshots_holding(self, object_name: str) -> list[str]:
        ids = {event.snapshot_id for event in self.log if isinstance(event, SNAPSHOT_EVENTS)}
        states = [(await self.load_snapshot(snapshot_id)).state for snapshot_id in ids]
        return sorted(
            state.snapshot_id
            for state in states
            if state.object == object_name and state.status != "deleted"
        )

    async def sandboxes_using(self, ref: str) -> list[str]:
        ids = {
            e.sandbox_id
            for e in self.log
            if isinstance(e, SandboxRequested)
            if ref in e.inputs.values()
        }
        states = [(await self.load(sandbox_id)).state for sandbox_id in ids]
        return sorted(state.sandbox_id for state in states if state.status != "destroyed")

    async def record(self, event: Record) -> None:
        stamped = stamp(event)
        if all(getattr(known, "event_id", None) != stamped.event_id for known in self.log):
            self.log.append(stamped)
