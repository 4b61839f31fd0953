"""The sandbox's side of a snapshot: which states may be snapshotted, and the hold on teardown.

Pure. A snapshot is first decided on the sandbox (``snapshot_started``),
under the sandbox's expected sequence, so a snapshot and a destroy racing on
one sandbox are put in one order by the log itself:

- destroy first: the sandbox is ``destroying`` and the snapshot is refused;
- snapshot first: the destroy is accepted, but the teardown it asks for
  waits (see :func:`sandboxer.workers.jobs.job_for`) until the snapshot's
  worker records ``snapshot_finished``, so the copy never races the teardown.

One snapshot at a time per sandbox: a second is refused while one is under way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    Actor,
    SandboxEvent,
    SandboxSnapshotFinished,
    SandboxSnapshotStarted,
)

__all__ = ["SNAPSHOTTABLE", "FinishSnapshot", "StartSnapshot", "decide_snapshot_hold"]

SNAPSHOTTABLE = frozenset({"ready", "active"})
"""States whose workspace exists and is settled enough to copy."""


@dataclass(frozen=True, kw_only=True)
class StartSnapshot:
    """A snapshot command, admitted: record on the sandbox that ``snapshot_id`` is being taken."""

    command_id: str
    actor: Actor
    sandbox_id: str
    snapshot_id: str


@dataclass(frozen=True, kw_only=True)
class FinishSnapshot:
    """The snapshot's worker recorded its outcome: release the sandbox (and a waiting teardown)."""

    command_id: str
    """The snapshot command's id (the correlation of the snapshot's events)."""
    actor: Actor
    job_id: str
    snapshot_id: str
    outcome: Literal["created", "failed"]


def decide_snapshot_hold(
    state: SandboxState, command: StartSnapshot | FinishSnapshot, now: str
) -> list[SandboxEvent]:
    """The sandbox's events for a snapshot starting or finishing on it."""
    if isinstance(command, StartSnapshot):
        return _decide_start(state, command, now)
    return _decide_finish(state, command, now)


def _decide_start(state: SandboxState, command: StartSnapshot, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    if state.status == "new":
        raise Rejected(
            "unknown_sandbox",
            f"no sandbox {state.sandbox_id}; 'sandboxer list' shows the existing ones",
        )
    if state.status not in SNAPSHOTTABLE:
        raise Rejected(
            "not_snapshottable",
            f"sandbox {state.sandbox_id} is {state.status}; "
            "a snapshot applies to a ready or active sandbox",
        )
    if state.snapshotting is not None:
        raise Rejected(
            "snapshot_in_progress",
            f"sandbox {state.sandbox_id} is already being snapshotted ({state.snapshotting}); "
            "try again when that snapshot is created or failed",
        )
    return [
        SandboxSnapshotStarted(
            sandbox_id=state.sandbox_id,
            command_id=command.command_id,
            actor=command.actor,
            at=now,
            snapshot_id=command.snapshot_id,
        )
    ]


def _decide_finish(state: SandboxState, command: FinishSnapshot, now: str) -> list[SandboxEvent]:
    if state.snapshotting != command.snapshot_id:
        return []  # already finished (a redelivered job), or never started here
    return [
        SandboxSnapshotFinished(
            sandbox_id=state.sandbox_id,
            command_id=command.command_id,
            causation_id=command.job_id,
            actor=command.actor,
            at=now,
            snapshot_id=command.snapshot_id,
            outcome=command.outcome,
        )
    ]
