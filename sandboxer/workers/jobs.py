"""Jobs: the control worker's instructions to an extension worker (``sandboxer.job.<ext>.<id>``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.domain.sandbox_state import SandboxState

__all__ = ["Job", "job_for"]

Action = Literal["provision", "recreate", "teardown", "snapshot", "pause", "resume", "retime"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    """Deterministic per (sandbox, version, action): the ``Nats-Msg-Id`` that deduplicates it."""
    sandbox_id: str
    action: Action
    version: int = 0
    """The sandbox's version when the job was made: a load that finds less read a lagging replica."""
    snapshot_id: str | None = None
    """For ``snapshot`` jobs: the snapshot to take."""


_ACTIONS: dict[str, Action] = {
    "routed": "provision",
    "recreating": "recreate",
    "destroying": "teardown",
    "pausing": "pause",
    "resuming": "resume",
}


def job_for(state: SandboxState) -> Job | None:
    """The job a sandbox in ``state`` is waiting for, if any.

    A snapshot under way comes first: a destroy decided meanwhile gets its
    teardown only once the snapshot finished (domain/sandbox_snapshots.py).
    A ``retime`` job follows a ``ttl_extended``; backends without a timeout of
    their own (:class:`~sandboxer.extensions.capabilities.TimeoutKeeper`) ack it.
    """
    if state.snapshotting is not None:
        return Job(
            job_id=f"{state.sandbox_id}-{state.snapshotting}-snapshot",
            sandbox_id=state.sandbox_id,
            action="snapshot",
            version=state.version,
            snapshot_id=state.snapshotting,
        )
    action = _ACTIONS.get(state.status)
    if state.status in {"ready", "active"} and state.expiry_moved_at == state.version:
        # The TTL just moved: a provider that keeps its own timeout must follow it. Only the
        # command that moved it dispatches this (a later event changes the version).
        action = "retime"
    if action is None:
        return None
    return Job(
        job_id=f"{state.sandbox_id}-{state.version}-{action}",
        sandbox_id=state.sandbox_id,
        action=action,
        version=state.version,
    )
