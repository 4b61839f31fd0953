"""The sandbox's lifetime rules: extending its TTL, recording activity, expiring it.

Pure, like the rest of ``decide``: the time comes in as ``now`` and every limit the rules
need (``ttl.max``, ``ttl.idle_reap``) was recorded in ``requested``, so a decision never
reads a profile that may have changed since the sandbox was made.
"""

from __future__ import annotations

from typing import Any, Literal

from sandboxer.commands.types import ExpireSandbox, ExtendTtl, TouchSandbox
from sandboxer.domain.deadlines import (
    EXPIRABLE,
    PAUSED,
    Due,
    due,
    sandbox_clock,
    touch_interval,
)
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import seconds_between, shift
from sandboxer.durations import format_duration, parse_duration
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    SandboxActive,
    SandboxDestroying,
    SandboxEvent,
    SandboxExpired,
    SandboxPauseLimitReached,
    SandboxTouched,
    SandboxTtlExtended,
)

__all__ = ["EXTEND_REFUSED_FOR_GOOD", "decide_expire", "decide_extend", "decide_touch"]

EXTEND_REFUSED_FOR_GOOD = frozenset({"ttl_max_exceeded"})
"""Refusals of an ``extend_ttl`` that no later state of its sandbox lifts, so the hold it made
can be given back with no delivery of it ever appended after: the expiry it asks for,
``max(expires_at, the sandbox's clock) + by``, only grows (a later extension moves
``expires_at`` on, time the clock), and a pause ends by moving ``expires_at`` and the limit
(``created_at + ttl.max + paused_seconds``) by the same time. (``not_extendable`` is not:
a failed sandbox is recreated; a destroyed one's metering releases every hold anyway.) The
one give: a sandbox already past its expiry is extended from ``now``, which two control
workers read off two clocks, so at the very limit one whose clock is behind by a few
milliseconds could still take it; it would run on no hold, and its use is debited anyway."""


def _require_known(state: SandboxState) -> None:
    if state.status == "new":
        raise Rejected(
            "unknown_sandbox",
            f"no sandbox {state.sandbox_id}; 'sandboxer list' shows the existing ones",
        )


def decide_extend(state: SandboxState, command: ExtendTtl, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    if state.status not in EXPIRABLE:
        raise Rejected(
            "not_extendable",
            f"sandbox {state.sandbox_id} is {state.status}; only a live sandbox can be extended",
        )
    if state.expires_at is None or state.created_at is None:
        raise Rejected(
            "no_ttl", f"sandbox {state.sandbox_id} has no TTL; there is nothing to extend"
        )
    by = parse_duration(command.duration)
    # An overdue sandbox the expirer has not reached yet is extended from now, not from a
    # deadline already in the past (from the pause's start while paused: its clock stopped).
    start = max(state.expires_at, sandbox_clock(state, now))
    new_expiry = shift(start, by)
    if state.ttl_max_seconds is not None:
        # Paused time does not count toward ttl.max either (the current pause is added to
        # both sides when it ends, so it is left out of both here).
        limit = shift(state.created_at, state.ttl_max_seconds + state.paused_seconds)
        if new_expiry > limit:
            lived = format_duration(round(seconds_between(state.created_at, new_expiry)))
            raise Rejected(
                "ttl_max_exceeded",
                f"extending sandbox {state.sandbox_id} by {command.duration} would keep it "
                f"{lived} after its creation; its profile's ttl.max is "
                f"{format_duration(state.ttl_max_seconds)}, so it can live until {limit} "
                f"at the latest (it now expires at {state.expires_at})",
            )
    return [
        SandboxTtlExtended(
            sandbox_id=state.sandbox_id,
            command_id=command.command_id,
            actor=command.actor,
            at=now,
            expires_at=new_expiry,
            by_seconds=by,
        )
    ]


def decide_touch(state: SandboxState, command: TouchSandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    head: dict[str, Any] = {
        "sandbox_id": state.sandbox_id,
        "command_id": command.command_id,
        "actor": command.actor,
        "at": now,
    }
    if state.status == "ready":
        return [SandboxActive(**head)]
    if state.status != "active":
        raise Rejected(
            "not_ready",
            f"sandbox {state.sandbox_id} is {state.status}; "
            "activity counts only on a ready or active sandbox",
        )
    last = state.last_activity_at
    if last is not None and seconds_between(last, now) < touch_interval(state.idle_reap_seconds):
        return []  # recorded recently enough: the idle deadline allows for this gap
    return [SandboxTouched(**head)]


def decide_expire(state: SandboxState, command: ExpireSandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        # A crash between `expired` and `destroying` leaves the first alone: complete it.
        return [_destroying(state, command, now)] if state.status == "expired" else []
    _require_known(state)
    if state.status == "destroyed":
        raise Rejected("already_destroyed", f"sandbox {state.sandbox_id} is already destroyed")
    if state.status in {"destroying", "expired"}:
        return []  # already on its way out (a destroy or another expiry won the race)
    deadline = due(state)
    passed = deadline is not None and deadline.at <= now
    if passed and deadline is not None and deadline.cause == "pause_limit":
        limit_reached = _pause_limit_reached(state, command, now, deadline)
        return [limit_reached, _destroying(state, command, now, "pause_limit")]
    cause: Literal["ttl", "idle", "forced"]
    if passed and deadline is not None and deadline.cause != "pause_limit":
        cause = deadline.cause
    elif command.actor.type == "adm":
        cause = "forced"
    else:
        when = f"it is due at {deadline.at} ({deadline.cause})" if deadline else "it has no TTL"
        if deadline is None and state.status in PAUSED:
            when = "it is paused (its TTL clock stands still) and has no pause limit"
        raise Rejected(
            "not_due",
            f"sandbox {state.sandbox_id} is not due to expire: {when}; "
            "only an adm actor can expire it early (or destroy it)",
        )
    expired = SandboxExpired(
        sandbox_id=state.sandbox_id,
        command_id=command.command_id,
        actor=command.actor,
        at=now,
        cause=cause,
        due_at=deadline.at if deadline else None,
        note=command.reason,
    )
    return [expired, _destroying(state, command, now, cause)]


def _pause_limit_reached(
    state: SandboxState, command: ExpireSandbox, now: str, deadline: Due
) -> SandboxPauseLimitReached:
    assert state.paused_at is not None
    assert state.max_pause_seconds is not None
    return SandboxPauseLimitReached(
        sandbox_id=state.sandbox_id,
        command_id=command.command_id,
        actor=command.actor,
        at=now,
        paused_at=state.paused_at,
        max_pause_seconds=state.max_pause_seconds,
        due_at=deadline.at,
        note=command.reason,
    )


def _destroying(
    state: SandboxState, command: ExpireSandbox, now: str, cause: str | None = None
) -> SandboxDestroying:
    return SandboxDestroying(
        sandbox_id=state.sandbox_id,
        command_id=command.command_id,
        actor=command.actor,
        at=now,
        reason=f"expired ({cause or state.expiry})",
    )
