"""Load, decide, append for the snapshot aggregate: :func:`apply_snapshot`.

The same loop as :mod:`sandboxer.workers.deciding` (reload and decide again
on a conflict, a bounded number of times), on the snapshot's own history.
"""

from __future__ import annotations

from sandboxer.bus.event_store import EventStore, LoadedSnapshot
from sandboxer.clock import utc_now
from sandboxer.domain.snapshot_decide import SnapshotCommand, decide_snapshot
from sandboxer.errors import ConcurrencyConflict
from sandboxer.workers.deciding import DECIDE_ATTEMPTS

__all__ = ["apply_snapshot"]


async def apply_snapshot(
    store: EventStore, snapshot_id: str, command: SnapshotCommand
) -> tuple[LoadedSnapshot, bool]:
    """Load, decide, append (reloading on conflicts). Returns the state and whether it changed.

    ``Rejected`` from the decision propagates to the caller.
    """
    for _ in range(DECIDE_ATTEMPTS):
        loaded = await store.load_snapshot(snapshot_id)
        events = decide_snapshot(loaded.state, command, utc_now())
        if not events:
            return loaded, False
        try:
            return await store.append_snapshot(loaded, events), True
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(
        f"snapshot {snapshot_id} kept changing; gave up after {DECIDE_ATTEMPTS} attempts"
    )
