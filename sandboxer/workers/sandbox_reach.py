"""Which worker answers for a sandbox, and whether it can run anything now: shared by the
exec and files services (:mod:`sandboxer.workers.exec_service`, ``file_service``)."""

from __future__ import annotations

import inspect

from sandboxer.bus.event_store import EventStore
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.extensions.base import Extension

__all__ = ["FROZEN", "RUNNING", "frozen_reason", "reachable", "takes_stdin"]

RUNNING = frozenset({"ready", "active"})
FROZEN = frozenset({"pausing", "paused", "resuming"})


def takes_stdin(backend: Extension) -> bool:
    """Whether the backend's exec has the ``stdin`` parameter (older backends lack it)."""
    try:
        return "stdin" in inspect.signature(backend.exec).parameters
    except (TypeError, ValueError):
        return False


async def reachable(
    store: EventStore, extension: Extension, sandbox_id: str
) -> SandboxState | None:
    """The sandbox's state when this worker (of ``extension``) should answer for it."""
    state = (await store.load(sandbox_id)).state
    if state.extension != extension.id or state.status not in RUNNING | FROZEN:
        return None
    if extension.host_local:
        found = await extension.list_sandboxes()
        if not any(s.sandbox_id == sandbox_id and s.alive for s in found):
            return None
    return state


def frozen_reason(state: SandboxState) -> str:
    return (
        f"sandbox {state.sandbox_id} is {state.status}: its processes are frozen and run "
        f"nothing; resume it first (sandboxer resume {state.sandbox_id})"
    )
