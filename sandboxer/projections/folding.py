"""Applying events to the sandbox view in batches: shared by live projection and replay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from sandboxer.domain.sandbox_state import SandboxState, evolve, evolve_keeping_ids
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.events.codec import UnknownEventType, decode_event
from sandboxer.events.pool_events import POOL_EVENTS
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    KEY_EVENTS,
    NOT_SANDBOX_EVENTS,
    SNAPSHOT_EVENTS,
    CommandRejected,
    Event,
    HostEvent,
    HostInspected,
    HostReaped,
    SandboxEvent,
)
from sandboxer.projections.account_rows import AccountRows
from sandboxer.projections.key_rows import KeyRows
from sandboxer.projections.route_rows import SAMPLED_EVENTS, RouteSamples
from sandboxer.projections.sandbox_view import SandboxView

__all__ = ["Batch"]

log = logging.getLogger(__name__)

LIVE_CACHE_LIMIT = 10_000
LONG_HISTORY = 64
"""Decided ids past which a rebuild indexes a sandbox's instead of letting ``evolve`` scan
and copy them per event (quadratic: 0.7 s for a sandbox touched for a week)."""

_SANDBOX = "sandbox"
_OTHER = "other"
_NONE = "none"  # pool events: members are no one's sandboxes, the pool keepers index them
_KINDS: dict[type[Any], str] = {}
"""Event class -> which fold it goes to, so most events cost one dict look-up, not a chain of
``isinstance`` checks (replay folds hundreds of thousands of them)."""


def _classify(cls: type[Any]) -> str:
    if issubclass(cls, POOL_EVENTS):
        kind = _NONE
    elif issubclass(cls, NOT_SANDBOX_EVENTS):
        kind = _OTHER
    else:
        kind = _SANDBOX
    _KINDS[cls] = kind
    return kind


class Batch:
    """Events folded in memory since the last save; ``flush`` writes them in one transaction.

    ``fresh`` means the view started empty (a rebuild): every state is then
    in memory and the database is never read back, which is what makes
    replay fast. Live, states are cached up to a limit and read back from the
    view when missing.
    """

    def __init__(self, view: SandboxView, *, fresh: bool = False) -> None:
        self._view = view
        self._fresh = fresh
        self._known: dict[str, SandboxState] = {}
        self._long: dict[str, tuple[list[str], set[str]]] = {}
        """A rebuild's sandboxes with long histories: their decided ids, in log order and
        as a set; their states in ``_known`` get them at each flush."""
        self._dirty: dict[str, int] = {}
        self._rejections: list[tuple[CommandRejected, int]] = []
        self._host_events: list[tuple[HostEvent, int]] = []
        self._snapshots: dict[str, SnapshotState] = {}
        self._dirty_snapshots: dict[str, int] = {}
        self._routes = RouteSamples()
        self._accounts = AccountRows()
        self._keys = KeyRows()
        self._writing: asyncio.Future[None] | None = None
        self.position = 0
        self.size = 0

    async def apply(self, seq: int, data: bytes) -> None:
        await self.apply_many(((seq, data),))

    async def apply_many(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Fold events in log order. The loop awaits only to read a state back from the view
        (live) or for the rarer aggregates, so a rebuild folds a whole chunk of the log
        without giving up control per event."""
        known = self._known
        dirty = self._dirty
        fresh = self._fresh
        for seq, data in items:
            self.position = seq
            self.size += 1
            try:
                event = decode_event(data)
            except UnknownEventType as unknown:
                log.warning("event %d skipped: %s", seq, unknown)
                continue
            cls = type(event)
            kind = _KINDS.get(cls) or _classify(cls)
            if kind is not _SANDBOX:
                if kind is _OTHER:
                    await self._apply_other(event, seq)
                continue
            sandbox_event: SandboxEvent = event  # type: ignore[assignment]  # (its kind says so)
            sandbox_id = sandbox_event.sandbox_id
            state = known.get(sandbox_id)
            if state is None:
                stored = None if fresh else await self._view.load_state(sandbox_id)
                state = stored or SandboxState(sandbox_id=sandbox_id)
            if fresh and len(state.handled) >= LONG_HISTORY:
                evolved = self._evolve_long(state, sandbox_event)
            else:
                evolved = evolve(state, sandbox_event)
            known[sandbox_id] = evolved
            if cls in SAMPLED_EVENTS:
                self._routes.observe(state, evolved, sandbox_event, seq)
            dirty[sandbox_id] = seq

    def _evolve_long(self, state: SandboxState, event: SandboxEvent) -> SandboxState:
        """``evolve``, with the decided ids kept in ``_long`` (nothing reads a rebuild's
        states before ``flush``, which sets them)."""
        ids = self._long.get(state.sandbox_id)
        if ids is None:
            ids = self._long[state.sandbox_id] = (list(state.handled), set(state.handled))
        if event.command_id not in ids[1]:
            ids[1].add(event.command_id)
            ids[0].append(event.command_id)
        return evolve_keeping_ids(state, event)

    async def _apply_other(self, event: Event, seq: int) -> None:
        if isinstance(event, CommandRejected):
            self._rejections.append((event, seq))
        elif isinstance(event, HostInspected | HostReaped):
            self._host_events.append((event, seq))
        elif isinstance(event, ACCOUNT_EVENTS):
            load = None if self._fresh else self._view.load_account
            await self._accounts.apply(event, seq, load)
        elif isinstance(event, KEY_EVENTS):
            await self._keys.apply(event, seq, None if self._fresh else self._view.load_key)
        elif isinstance(event, SNAPSHOT_EVENTS):
            snapshot_id = event.snapshot_id
            snapshot = self._snapshots.get(snapshot_id)
            if snapshot is None:
                saved = None if self._fresh else await self._view.load_snapshot(snapshot_id)
                snapshot = saved or SnapshotState(snapshot_id=snapshot_id)
            self._snapshots[snapshot_id] = evolve_snapshot(snapshot, event)
            self._dirty_snapshots[snapshot_id] = seq

    async def flush(self, *, behind: bool = False) -> None:
        """Write what was folded since the last flush, and the position, in one transaction.

        ``behind`` starts the write and returns at once, so a rebuild folds the next events
        while SQLite writes these in its own thread. The write takes the rows with it (the
        batch starts new buffers), and the next ``flush`` or ``settle`` waits for it first:
        transactions still commit in log order, and a failed write raises there."""
        await self.settle()
        if not self.size:
            return
        known = self._known
        for sandbox_id, (handled, _) in self._long.items():
            if sandbox_id in self._dirty and len(known[sandbox_id].handled) != len(handled):
                known[sandbox_id] = msgspec.structs.replace(known[sandbox_id], handled=(*handled,))
        save = self._view.save(
            # An id a refused create gave up (``create_abandoned``) was never made: it has
            # no row, as an id never used has none.
            [
                (known[sandbox_id], seq)
                for sandbox_id, seq in self._dirty.items()
                if known[sandbox_id].abandoned_by is None or known[sandbox_id].status != "new"
            ],
            self._rejections,
            self.position,
            self._host_events,
            [(self._snapshots[sid], seq) for sid, seq in self._dirty_snapshots.items()],
            self._routes,
            self._accounts.take(),
            self._keys.take(),
        )
        self._routes = RouteSamples()
        self._dirty = {}
        self._dirty_snapshots = {}
        self._rejections = []
        self._host_events = []
        self.size = 0
        if not self._fresh:
            if len(self._accounts.known) > LIVE_CACHE_LIMIT:
                self._accounts.known.clear()
            if len(self._keys.known) > LIVE_CACHE_LIMIT:
                self._keys.known.clear()
            if len(known) > LIVE_CACHE_LIMIT:
                known.clear()
            if len(self._snapshots) > LIVE_CACHE_LIMIT:
                self._snapshots.clear()
        if behind:
            self._writing = asyncio.ensure_future(save)
        else:
            await save

    async def settle(self) -> None:
        """Wait for the write ``flush(behind=True)`` started, if any (raising its error)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing
