"""When a sandbox is due to expire, computed from its folded state (time is in the log).

Pure. Two deadlines can end a sandbox's life:

- its TTL: ``expires_at``, set by ``requested`` (its time plus the TTL) and moved by
  ``ttl_extended``; it applies in every live state, so a sandbox stuck provisioning or
  left failed expires too;
- its idle limit (``ttl.idle_reap``): the last recorded activity (``ready``, ``active``,
  ``touched``) plus the limit plus one touch interval; it applies only to a ready or
  active sandbox.

Activity is recorded at most once per touch interval (:func:`touch_interval`), so the
last recorded activity can trail the real one by up to one interval. Adding that interval
to the idle deadline means a sandbox is never reaped while it was used within its limit;
it may outlive the limit by at most one interval.

While a sandbox is paused both clocks stand still: from ``paused`` to ``resumed`` neither
deadline can pass (``resumed`` moves ``expires_at`` later by the pause's length, and counts
as activity). The only deadline of a paused sandbox is its pause limit (``ttl.max_pause``,
recorded in ``requested``): the pause's start plus that limit, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sandboxer.domain.sandbox_state import LIVE, SandboxState
from sandboxer.domain.timestamps import seconds_between, shift

__all__ = [
    "EXPIRABLE",
    "PAUSED",
    "Due",
    "due",
    "idle_deadline",
    "pause_deadline",
    "sandbox_clock",
    "seconds_between",
    "shift",
    "touch_interval",
    "ttl_with_extensions",
]

EXPIRABLE = LIVE - {"expired"}
"""States in which a sandbox can expire (every live state; ``expired`` is already on its way
out). A paused one expires only by its pause limit."""

PAUSED = frozenset({"paused", "resuming"})
"""States whose clocks stand still: frozen, and not yet running again."""

IDLE = frozenset({"ready", "active"})
"""States in which idleness counts: before ``ready`` nobody could use the sandbox."""

MAX_TOUCH_INTERVAL = 60.0
"""Activity is recorded at most once a minute (sooner for short idle limits)."""


def touch_interval(idle_reap_seconds: float | None) -> float:
    """How often activity is recorded: a tenth of the idle limit, at most a minute."""
    if not idle_reap_seconds:
        return MAX_TOUCH_INTERVAL
    return min(MAX_TOUCH_INTERVAL, idle_reap_seconds / 10)


@dataclass(frozen=True)
class Due:
    """A deadline and what it is (``ttl`` or ``idle``)."""

    at: str
    cause: Literal["ttl", "idle", "pause_limit"]


def idle_deadline(state: SandboxState) -> str | None:
    if state.status not in IDLE or not state.idle_reap_seconds or not state.last_activity_at:
        return None
    slack = touch_interval(state.idle_reap_seconds)
    return shift(state.last_activity_at, state.idle_reap_seconds + slack)


def sandbox_clock(state: SandboxState, now: str) -> str:
    """The sandbox's own "now": ``now``, except while paused, when its clock stands at the
    pause's start (so, say, a TTL extended while paused is extended from there)."""
    if state.status in PAUSED and state.paused_at is not None:
        return state.paused_at
    return now


def ttl_with_extensions(state: SandboxState) -> float | None:
    """The seconds a sandbox may live in all: its TTL and every ``ttl_extended`` since
    (pauses left out, their clocks stood still), so a hold made again for it (a reroute)
    covers the time it was given and paid for, not only the TTL its create asked."""
    if state.expires_at is None or state.created_at is None:
        return state.ttl_seconds
    return max(seconds_between(state.created_at, state.expires_at) - state.paused_seconds, 0.0)


def pause_deadline(state: SandboxState) -> str | None:
    """When a paused sandbox's pause limit runs out; None if it is not paused or has none."""
    if state.status not in PAUSED or state.paused_at is None or not state.max_pause_seconds:
        return None
    return shift(state.paused_at, state.max_pause_seconds)


def due(state: SandboxState) -> Due | None:
    """The earliest deadline of a sandbox that can still expire; None when it has none."""
    if state.status not in EXPIRABLE:
        return None
    if state.status in PAUSED:
        limit = pause_deadline(state)
        return None if limit is None else Due(limit, "pause_limit")
    candidates: list[Due] = []
    if state.expires_at is not None:
        candidates.append(Due(state.expires_at, "ttl"))
    idle = idle_deadline(state)
    if idle is not None:
        candidates.append(Due(idle, "idle"))
    if not candidates:
        return None
    # Timestamps share one format, so the earliest sorts first as text.
    return min(candidates, key=lambda d: d.at)
