"""Applying events to the sandbox view in batches: shared by live projection and replay."""

from __future__ import annotations

import logging

from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.events.codec import UnknownEventType, decode_event
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    KEY_EVENTS,
    POOL_EVENTS,
    SNAPSHOT_EVENTS,
    CommandRejected,
    HostEvent,
    HostInspected,
    HostReaped,
)
from sandboxer.projections.account_rows import AccountRows
from sandboxer.projections.key_rows import KeyRows
from sandboxer.projections.route_rows import RouteSamples
from sandboxer.projections.sandbox_view import SandboxView

__all__ = ["Batch"]

log = logging.getLogger(__name__)

LIVE_CACHE_LIMIT = 10_000


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
        self._dirty: dict[str, int] = {}
        self._rejections: list[tuple[CommandRejected, int]] = []
        self._host_events: list[tuple[HostEvent, int]] = []
        self._snapshots: dict[str, SnapshotState] = {}
        self._dirty_snapshots: dict[str, int] = {}
        self._routes = RouteSamples()
        self._accounts = AccountRows()
        self._keys = KeyRows()
        self.position = 0
        self.size = 0

    async def apply(self, seq: int, data: bytes) -> None:
        self.position = seq
        self.size += 1
        try:
            event = decode_event(data)
        except UnknownEventType as unknown:
            log.warning("event %d skipped: %s", seq, unknown)
            return
        if isinstance(event, CommandRejected):
            self._rejections.append((event, seq))
        elif isinstance(event, HostInspected | HostReaped):
            self._host_events.append((event, seq))
        elif isinstance(event, ACCOUNT_EVENTS):
            load = None if self._fresh else self._view.load_account
            await self._accounts.apply(event, seq, load)
        elif isinstance(event, KEY_EVENTS):
            await self._keys.apply(event, seq, None if self._fresh else self._view.load_key)
        elif isinstance(event, POOL_EVENTS):
            pass  # pool members are no one's sandboxes: the pool keepers index them
        elif isinstance(event, SNAPSHOT_EVENTS):
            snapshot_id = event.snapshot_id
            snapshot = self._snapshots.get(snapshot_id)
            if snapshot is None:
                saved = None if self._fresh else await self._view.load_snapshot(snapshot_id)
                snapshot = saved or SnapshotState(snapshot_id=snapshot_id)
            self._snapshots[snapshot_id] = evolve_snapshot(snapshot, event)
            self._dirty_snapshots[snapshot_id] = seq
        else:
            sandbox_id = event.sandbox_id
            state = self._known.get(sandbox_id)
            if state is None:
                stored = None if self._fresh else await self._view.load_state(sandbox_id)
                state = stored or SandboxState(sandbox_id=sandbox_id)
            self._known[sandbox_id] = evolved = evolve(state, event)
            self._routes.observe(state, evolved, event, seq)
            self._dirty[sandbox_id] = seq

    async def flush(self) -> None:
        if not self.size:
            return
        known = self._known
        await self._view.save(
            [(known[sandbox_id], seq) for sandbox_id, seq in self._dirty.items()],
            self._rejections,
            self.position,
            self._host_events,
            [(self._snapshots[sid], seq) for sid, seq in self._dirty_snapshots.items()],
            self._routes,
            self._accounts,
            self._keys,
        )
        self._routes.clear()
        self._accounts.clear(
            forget=not self._fresh and len(self._accounts.known) > LIVE_CACHE_LIMIT
        )
        self._keys.clear(forget=not self._fresh and len(self._keys.known) > LIVE_CACHE_LIMIT)
        self._dirty_snapshots.clear()
        self._dirty.clear()
        self._rejections.clear()
        self._host_events.clear()
        self.size = 0
        if not self._fresh and len(known) > LIVE_CACHE_LIMIT:
            known.clear()
        if not self._fresh and len(self._snapshots) > LIVE_CACHE_LIMIT:
            self._snapshots.clear()
