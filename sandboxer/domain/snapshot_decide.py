"""The snapshot aggregate's rules: ``decide_snapshot(state, command, now) -> events``.

Pure. A snapshot touches two aggregates, so it is two idempotent appends:
the sandbox records ``snapshot_started`` first (under the sandbox's expected
sequence, which orders it against a destroy; see
:mod:`sandboxer.domain.sandbox_snapshots`), then the snapshot records
``requested`` in reaction. A re-sent command decides nothing on either.

A snapshot's id is derived from its command's id, and command ids are the clients'
choice, one namespace across projects: a snapshot command whose id names a snapshot
already taken of another sandbox is not that snapshot's command sent again, and is
refused before anything is appended (:func:`snapshot_taken`): decided as a re-send, it
would start a snapshot of its own sandbox under the other's id, and its job would store
its sandbox's workspace as that snapshot while it is still being taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    Actor,
    SnapshotCreated,
    SnapshotDeleted,
    SnapshotEvent,
    SnapshotFailed,
    SnapshotRequested,
)

__all__ = [
    "DeleteSnapshotDecision",
    "RecordSnapshotFailed",
    "RecordSnapshotStored",
    "RequestSnapshot",
    "SnapshotCommand",
    "decide_snapshot",
    "snapshot_taken",
]


@dataclass(frozen=True, kw_only=True)
class RequestSnapshot:
    """The sandbox accepted the snapshot: open the snapshot's own history."""

    command_id: str
    actor: Actor
    sandbox_id: str
    extension: str
    host: str | None = None
    profile: str | None = None
    name: str | None = None
    project: str | None = None
    """The sandbox's project: the snapshot's owner."""


@dataclass(frozen=True, kw_only=True)
class RecordSnapshotStored:
    """The backend's worker stored the data as ``object`` in ``bucket``."""

    job_id: str
    bucket: str
    object: str
    size: int
    sha256: str
    warnings: tuple[str, ...] = ()
    """What the copy left out (:meth:`~sandboxer.domain.left_out.LeftOut.warnings`)."""


@dataclass(frozen=True, kw_only=True)
class RecordSnapshotFailed:
    job_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class DeleteSnapshotDecision:
    """A delete, with what the caller found out: whether another snapshot shares the object."""

    command_id: str
    actor: Actor
    object_shared: bool = False


SnapshotCommand = (
    RequestSnapshot | RecordSnapshotStored | RecordSnapshotFailed | DeleteSnapshotDecision
)


def snapshot_taken(state: SnapshotState, sandbox_id: str) -> Rejected | None:
    """Why a snapshot command on ``sandbox_id`` whose id makes the snapshot ``state`` is
    refused: the snapshot exists, taken of another sandbox (see the module). None when it is
    free, or this sandbox's (the command sent again). The reason names the snapshot id
    only (the caller derived it), nothing of its sandbox or project."""
    if state.status == "new" or state.sandbox_id == sandbox_id:
        return None
    return Rejected(
        "snapshot_exists",
        f"snapshot {state.snapshot_id} already exists (a snapshot's id comes from its "
        "command's id): send the snapshot with a new command_id",
    )


def decide_snapshot(
    state: SnapshotState, command: SnapshotCommand, now: str
) -> list[SnapshotEvent]:
    """The events ``command`` produces in ``state``; raises Rejected when it is not acceptable."""
    match command:
        case RequestSnapshot():
            if command.command_id in state.handled:
                return []
            if state.status != "new":
                raise Rejected(
                    "snapshot_exists",
                    f"snapshot {state.snapshot_id} already exists",
                )
            return [
                SnapshotRequested(
                    snapshot_id=state.snapshot_id,
                    command_id=command.command_id,
                    actor=command.actor,
                    at=now,
                    sandbox_id=command.sandbox_id,
                    extension=command.extension,
                    host=command.host,
                    profile=command.profile,
                    name=command.name,
                    project=command.project,
                )
            ]
        case RecordSnapshotStored():
            if state.status != "requested":
                return []  # a redelivered job whose outcome is already recorded
            return [
                SnapshotCreated(
                    **_of_job(state, now, command.job_id),
                    bucket=command.bucket,
                    object=command.object,
                    size=command.size,
                    sha256=command.sha256,
                    warnings=command.warnings,
                )
            ]
        case RecordSnapshotFailed():
            if state.status != "requested":
                return []
            return [SnapshotFailed(**_of_job(state, now, command.job_id), reason=command.reason)]
        case DeleteSnapshotDecision():
            return _decide_delete(state, command, now)


def _of_job(state: SnapshotState, now: str, job_id: str) -> dict[str, Any]:
    """Fields of the events a snapshot job writes: correlated to the snapshot command."""
    assert state.created_by is not None
    assert state.actor is not None
    return {
        "snapshot_id": state.snapshot_id,
        "command_id": state.created_by,
        "causation_id": job_id,
        "actor": state.actor,
        "at": now,
    }


def _decide_delete(
    state: SnapshotState, command: DeleteSnapshotDecision, now: str
) -> list[SnapshotEvent]:
    if command.command_id in state.handled:
        return []
    if state.status == "new":
        raise Rejected(
            "unknown_snapshot",
            f"no snapshot {state.snapshot_id}; 'sandboxer snapshots list' shows the existing ones",
        )
    if state.status == "deleted":
        raise Rejected("already_deleted", f"snapshot {state.snapshot_id} is already deleted")
    if state.status == "requested":
        raise Rejected(
            "snapshot_in_progress",
            f"snapshot {state.snapshot_id} is still being taken; delete it once it is created "
            "or failed",
        )
    return [
        SnapshotDeleted(
            snapshot_id=state.snapshot_id,
            command_id=command.command_id,
            actor=command.actor,
            at=now,
            object_removed=state.object is not None and not command.object_shared,
        )
    ]
