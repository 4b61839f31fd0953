"""How the pause events change a sandbox's state (the pause part of ``evolve``).

Pure, and kept apart from :mod:`sandboxer.domain.sandbox_state` only to keep
that module short: ``evolve`` hands every pause event here. The clocks'
standing still is what ``resumed`` does: it moves ``expires_at`` later by the
pause's length (recorded in the event) and counts as activity.
"""

from __future__ import annotations

import msgspec

from sandboxer.domain.sandbox_record import SandboxState
from sandboxer.events.types import (
    SandboxPaused,
    SandboxPauseFailed,
    SandboxPauseLimitReached,
    SandboxPausing,
    SandboxResumed,
    SandboxResuming,
)

__all__ = ["PAUSE_EVENTS", "PauseEvent", "evolve_pause"]

PauseEvent = (
    SandboxPausing
    | SandboxPaused
    | SandboxResuming
    | SandboxResumed
    | SandboxPauseFailed
    | SandboxPauseLimitReached
)
PAUSE_EVENTS = (
    SandboxPausing,
    SandboxPaused,
    SandboxResuming,
    SandboxResumed,
    SandboxPauseFailed,
    SandboxPauseLimitReached,
)
"""For ``isinstance``: the events this module folds."""


def evolve_pause(base: SandboxState, event: PauseEvent) -> SandboxState:
    """The state after a pause event (``base`` has its version and handled ids already)."""
    replace = msgspec.structs.replace
    match event:
        case SandboxPausing():
            return replace(
                base,
                status="pausing",
                paused_from="active" if base.status == "active" else "ready",
                correlation=event.command_id,
            )
        case SandboxPaused():
            return replace(base, status="paused", paused_at=event.at)
        case SandboxResuming():
            return replace(base, status="resuming", correlation=event.command_id)
        case SandboxResumed():
            # A resume is a command on the sandbox, so it counts as activity too.
            return replace(
                base,
                status=base.paused_from or "ready",
                paused_from=None,
                paused_at=None,
                paused_seconds=base.paused_seconds + event.paused_seconds,
                expires_at=event.expires_at,
                last_activity_at=event.at,
            )
        case SandboxPauseFailed():
            if event.operation == "resume":
                return replace(base, status="paused")
            return replace(base, status=base.paused_from or "ready", paused_from=None)
        case SandboxPauseLimitReached():
            return replace(
                base, status="expired", expiry="pause_limit", correlation=event.command_id
            )
