"""Pausing and resuming a sandbox: which states allow it, and what the backend's job records.

Pure. A pause is two steps, like a provision: the control worker decides
``pausing`` (after checking, from the backend's declaration, that it can pause
at all), and the backend's worker freezes the sandbox and records ``paused``
(or ``pause_failed``, leaving it as it was). A resume is the same with
``resuming`` and ``resumed``. The clocks stop at ``paused`` and restart at
``resumed``, whose ``expires_at`` is the old deadline plus the pause's length
(see :mod:`sandboxer.domain.deadlines`).

A destroy or an expiry may overtake a pause at any step; the job then finds
the sandbox no longer ``pausing`` (or ``resuming``) and records nothing, and
the teardown thaws whatever it froze.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sandboxer.commands.types import PauseSandbox, ResumeSandbox
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import seconds_between, shift
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    SandboxEvent,
    SandboxPaused,
    SandboxPauseFailed,
    SandboxPausing,
    SandboxResumed,
    SandboxResuming,
)

__all__ = [
    "PAUSABLE",
    "MarkPauseFailed",
    "MarkPaused",
    "MarkResumed",
    "PauseStep",
    "decide_pause_step",
]

PAUSABLE = frozenset({"ready", "active"})
"""States whose processes run and are settled: nothing is being made or torn down."""


@dataclass(frozen=True, kw_only=True)
class MarkPaused:
    """The backend froze the sandbox (its pause job)."""

    job_id: str
    for_command: str | None = None
    """The pause or resume the job carries out (:attr:`Job.for_command`); None: not known."""


@dataclass(frozen=True, kw_only=True)
class MarkResumed:
    """The backend thawed the sandbox (its resume job)."""

    job_id: str
    for_command: str | None = None
    """The pause or resume the job carries out (:attr:`Job.for_command`); None: not known."""


@dataclass(frozen=True, kw_only=True)
class MarkPauseFailed:
    """The backend could not pause or resume the sandbox."""

    job_id: str
    operation: Literal["pause", "resume"]
    reason: str
    for_command: str | None = None


PauseStep = PauseSandbox | ResumeSandbox | MarkPaused | MarkResumed | MarkPauseFailed


def decide_pause_step(state: SandboxState, command: PauseStep, now: str) -> list[SandboxEvent]:
    """The events of a pause or resume command, or of its job's outcome."""
    match command:
        case PauseSandbox():
            return _decide_pause(state, command, now)
        case ResumeSandbox():
            return _decide_resume(state, command, now)
        case MarkPaused():
            if not _under_way(state, "pausing", command.for_command):
                return []  # done already (a redelivered job), or overtaken by a destroy
            return [SandboxPaused(**_of_job(state, now, command.job_id))]
        case MarkResumed():
            if not _under_way(state, "resuming", command.for_command):
                return []
            return [_resumed(state, now, command.job_id)]
        case MarkPauseFailed():
            expected = "pausing" if command.operation == "pause" else "resuming"
            if not _under_way(state, expected, command.for_command):
                return []
            return [
                SandboxPauseFailed(
                    **_of_job(state, now, command.job_id),
                    operation=command.operation,
                    reason=command.reason,
                )
            ]


def _under_way(state: SandboxState, status: str, for_command: str | None) -> bool:
    """Whether the job of ``for_command`` is the pause or resume under way. A job held up
    past its ack wait may report after its operation ended and the next one of the same
    kind began: its outcome is not the later one's (the worker undoes what it did instead,
    workers/pause_job.py)."""
    if state.status != status:
        return False
    return for_command is None or for_command == state.correlation


def _decide_pause(state: SandboxState, command: PauseSandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    if state.status not in PAUSABLE:
        already = state.status in {"pausing", "paused"}
        raise Rejected(
            "already_paused" if already else "not_pausable",
            f"sandbox {state.sandbox_id} is {state.status}; "
            + (
                "resume it with 'sandboxer resume'"
                if already
                else "only a ready or active sandbox can be paused"
            ),
        )
    if state.snapshotting is not None:
        raise Rejected(
            "snapshot_in_progress",
            f"sandbox {state.sandbox_id} is being snapshotted ({state.snapshotting}); "
            "pause it once that snapshot is created or failed",
        )
    return [SandboxPausing(**_of_command(state, command, now))]


def _decide_resume(state: SandboxState, command: ResumeSandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    if state.status != "paused":
        hint = {
            "pausing": "it is still being paused; resume it once it is paused",
            "resuming": "it is already being resumed",
        }.get(state.status, "only a paused sandbox can be resumed")
        raise Rejected("not_paused", f"sandbox {state.sandbox_id} is {state.status}; {hint}")
    return [SandboxResuming(**_of_command(state, command, now))]


def _resumed(state: SandboxState, now: str, job_id: str) -> SandboxResumed:
    assert state.paused_at is not None  # resuming follows paused
    # A clock that stepped back must not move the deadline earlier.
    paused_seconds = max(0.0, seconds_between(state.paused_at, now))
    expires_at = None if state.expires_at is None else shift(state.expires_at, paused_seconds)
    return SandboxResumed(
        **_of_job(state, now, job_id), paused_seconds=paused_seconds, expires_at=expires_at
    )


def _require_known(state: SandboxState) -> None:
    if state.status == "new":
        raise Rejected(
            "unknown_sandbox",
            f"no sandbox {state.sandbox_id}; 'sandboxer list' shows the existing ones",
        )


def _of_command(
    state: SandboxState, command: PauseSandbox | ResumeSandbox, now: str
) -> dict[str, Any]:
    return {
        "sandbox_id": state.sandbox_id,
        "command_id": command.command_id,
        "actor": command.actor,
        "at": now,
    }


def _of_job(state: SandboxState, now: str, job_id: str) -> dict[str, Any]:
    """A job's event: correlated to the pause or resume command it carries out."""
    assert state.correlation is not None
    assert state.actor is not None
    return {
        "sandbox_id": state.sandbox_id,
        "command_id": state.correlation,
        "causation_id": job_id,
        "actor": state.actor,
        "at": now,
    }
