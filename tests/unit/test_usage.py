"""Billable seconds of a sandbox, folded from its events (sandboxer.domain.usage)."""

from __future__ import annotations

from typing import Any

from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.usage import billable_seconds, billed_seconds, billing_step
from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxFailed,
    SandboxPaused,
    SandboxPausing,
    SandboxProvisioning,
    SandboxReady,
    SandboxRecreating,
    SandboxRequested,
    SandboxResumed,
    SandboxResuming,
    SandboxRouted,
)

ACTOR = Actor(type="agt", id="a", project="p")


def at(second: float) -> str:
    whole, frac = divmod(second, 1)
    minutes, secs = divmod(int(whole), 60)
    return f"2026-12-02T10:{minutes:02d}:{secs:02d}.{round(frac * 1000):03d}Z"


def head(second: float, command_id: str = "c1") -> dict[str, Any]:
    return {"sandbox_id": "sbx00000001", "command_id": command_id, "actor": ACTOR, "at": at(second)}


def fold(events: list[SandboxEvent]) -> SandboxState:
    state = SandboxState(sandbox_id="sbx00000001")
    for event in events:
        state = evolve(state, event)
    return state


def created(ready_at: float) -> list[SandboxEvent]:
    return [
        SandboxRequested(**head(0), profile="profile.saas-stub", profile_version=1),
        SandboxRouted(**head(0), extension="ext.saas-stub", reason="fixed"),
        SandboxProvisioning(**head(1), extension="ext.saas-stub"),
        SandboxReady(**head(ready_at), reachability={}),
    ]


def test_billed_from_ready_to_destroying_not_provisioning_nor_teardown() -> None:
    state = fold(
        [
            *created(ready_at=5),
            SandboxDestroying(**head(65, "d1")),
            SandboxDestroyed(**head(90, "d1")),
        ]
    )
    assert state.billable_seconds == 60.0
    assert state.billing_since is None


def test_pauses_are_not_billed() -> None:
    state = fold(
        [
            *created(ready_at=0),
            SandboxPausing(**head(10, "p1")),  # still usable until paused
            SandboxPaused(**head(12, "p1")),
            SandboxResuming(**head(100, "r1")),
            SandboxResumed(**head(102, "r1"), paused_seconds=90),
            SandboxDestroying(**head(110, "d1")),
        ]
    )
    assert state.billable_seconds == 12 + 8


def test_a_failure_stops_the_clock_and_a_recreate_starts_a_new_span() -> None:
    state = fold(
        [
            *created(ready_at=0),
            SandboxFailed(**head(30), reason="gone", stage="wait_ready"),
            SandboxRecreating(**head(40, "rc")),
            SandboxProvisioning(**head(41, "rc"), extension="ext.saas-stub", generation=2),
            SandboxReady(**head(50, "rc"), reachability={}, generation=2),
        ]
    )
    assert state.billable_seconds == 30
    assert state.billing_since == at(50)
    assert billable_seconds(state, now=at(60.5)) == 40.5


def test_never_ready_is_never_billed() -> None:
    state = fold(
        [
            SandboxRequested(**head(0), profile="profile.saas-stub", profile_version=1),
            SandboxFailed(**head(3), reason="quota", stage="provision"),
            SandboxDestroying(**head(4, "d1")),
            SandboxDestroyed(**head(5, "d1")),
        ]
    )
    assert state.billable_seconds == 0
    assert billed_seconds(state.billable_seconds) == 0


def test_seconds_are_billed_whole_and_rounded_up() -> None:
    assert billed_seconds(0.001) == 1
    assert billed_seconds(2.0000000001) == 2
    assert billed_seconds(59.2) == 60


def test_a_second_ready_while_billing_keeps_the_first_start() -> None:
    assert billing_step(0.0, at(1), "ready", at(5)) == (0.0, at(1))
    assert billing_step(3.0, None, "destroyed", at(5)) == (3.0, None)
