"""Jobs: the control worker's instructions to an extension worker (``sandboxer.job.<ext>.<id>``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.domain.sandbox_state import SandboxState

__all__ = ["Job", "job_for"]

Action = Literal["provision", "recreate", "teardown"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    """Deterministic per (sandbox, version, action): the ``Nats-Msg-Id`` that deduplicates it."""
    sandbox_id: str
    action: Action
    version: int = 0
    """The sandbox's version when the job was made: a load that finds less read a lagging replica."""


_ACTIONS: dict[str, Action] = {
    "routed": "provision",
    "recreating": "recreate",
    "destroying": "teardown",
}


def job_for(state: SandboxState) -> Job | None:
    """The job a sandbox in ``state`` is waiting for, if any."""
    action = _ACTIONS.get(state.status)
    if action is None:
        return None
    return Job(
        job_id=f"{state.sandbox_id}-{state.version}-{action}",
        sandbox_id=state.sandbox_id,
        action=action,
        version=state.version,
    )
