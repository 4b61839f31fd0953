"""The snapshot aggregate's state, and ``evolve(state, event)``: how each event changes it.

Pure, and total like the sandbox's: an event that does not apply leaves the
state as it is (but counts toward its version). Lifecycle::

    new ─snapshot→ requested ─worker stored the data→ created ─delete→ deleted
                       │
                       └─copy or upload failed→ failed ─delete→ deleted

The snapshot's data is an object in the workspaces bucket; the state names
it (``bucket``, ``object``, ``size``, ``sha256``) and never holds it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.events.types import (
    Actor,
    SnapshotCreated,
    SnapshotDeleted,
    SnapshotEvent,
    SnapshotFailed,
    SnapshotRequested,
)

__all__ = ["SnapshotState", "SnapshotStatus", "evolve_snapshot", "fold_snapshot"]

SnapshotStatus = Literal["new", "requested", "created", "failed", "deleted"]


class SnapshotState(msgspec.Struct, frozen=True, kw_only=True):
    """What the log says about one snapshot, folded from its events."""

    snapshot_id: str
    status: SnapshotStatus = "new"
    version: int = 0
    """Number of events applied."""
    sandbox_id: str | None = None
    """Lineage: the sandbox the snapshot was taken of."""
    extension: str | None = None
    """The backend the source sandbox ran on (its worker takes the snapshot)."""
    host: str | None = None
    profile: str | None = None
    name: str | None = None
    actor: Actor | None = None
    """Who took the snapshot (which need not be its owner: see ``project``)."""
    project: str | None = None
    """The project it belongs to, its sandbox's, as ``snapshot_requested`` recorded it (None
    before it was recorded)."""
    created_by: str | None = None
    """The snapshot command's id: the correlation of every event the snapshot's job writes."""
    bucket: str | None = None
    object: str | None = None
    size: int | None = None
    sha256: str | None = None
    warnings: tuple[str, ...] = ()
    """What the snapshot's copy left out, as ``created`` recorded it: a restore lacks it."""
    failure: str | None = None
    object_removed: bool | None = None
    """Set by ``deleted``: whether the stored object went with it (it stays while shared)."""
    handled: tuple[str, ...] = ()
    """Ids of the commands already decided, in log order."""
    requested_at: str | None = None
    created_at: str | None = None
    deleted_at: str | None = None
    updated_at: str | None = None


def evolve_snapshot(state: SnapshotState, event: SnapshotEvent) -> SnapshotState:
    """The state after ``event``. Total: an event that does not apply leaves the state as it is."""
    replace = msgspec.structs.replace
    base = replace(
        state,
        version=state.version + 1,
        handled=state.handled
        if event.command_id in state.handled
        else (*state.handled, event.command_id),
        updated_at=event.at,
    )
    match event:
        case SnapshotRequested():
            return replace(
                base,
                status="requested",
                sandbox_id=event.sandbox_id,
                extension=event.extension,
                host=event.host,
                profile=event.profile,
                name=event.name,
                actor=event.actor,
                project=event.project,
                created_by=event.command_id,
                requested_at=event.at,
            )
        case SnapshotCreated():
            return replace(
                base,
                status="created",
                bucket=event.bucket,
                object=event.object,
                size=event.size,
                sha256=event.sha256,
                warnings=event.warnings,
                created_at=event.at,
            )
        case SnapshotFailed():
            return replace(base, status="failed", failure=event.reason)
        case SnapshotDeleted():
            return replace(
                base, status="deleted", object_removed=event.object_removed, deleted_at=event.at
            )
    return base


def fold_snapshot(snapshot_id: str, events: list[SnapshotEvent]) -> SnapshotState:
    state = SnapshotState(snapshot_id=snapshot_id)
    for event in events:
        state = evolve_snapshot(state, event)
    return state
