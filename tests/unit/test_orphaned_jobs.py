"""When a create's provision job, ahead of the log, is one whose events will never land.

A job goes out with its create's events (docs/protocol.md#jobs). Its worker waits for them
while they may still land, and drops the job once they cannot: the create was given up, or
the job has waited longer than any create's delivery takes. Pure: ``job_orphaned``.
"""

from __future__ import annotations

from sandboxer.domain.lost_creates import STRANDED_SECONDS, job_orphaned
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.timestamps import shift
from sandboxer.events.types import (
    Actor,
    SandboxCreateAbandoned,
    SandboxEvent,
    SandboxRequested,
)

STORED = "2026-12-07T18:00:00.000Z"
ACTOR = Actor(type="agt", id="pytest")


def after(event: SandboxEvent) -> SandboxState:
    """A sandbox with that one event (a create given up, or only requested)."""
    return evolve(SandboxState(sandbox_id=event.sandbox_id), event)


def test_a_job_whose_events_may_still_land_is_waited_for() -> None:
    nothing = SandboxState(sandbox_id="orphan00001")
    assert not job_orphaned(nothing, STORED, shift(STORED, 1))
    assert not job_orphaned(nothing, STORED, shift(STORED, STRANDED_SECONDS))


def test_the_job_of_a_create_given_up_is_dropped_at_once() -> None:
    given_up = after(
        SandboxCreateAbandoned(
            sandbox_id="orphan00002",
            command_id="c1",
            actor=ACTOR,
            at=STORED,
            code="internal_error",
            reason="pytest",
        ),
    )
    assert job_orphaned(given_up, STORED, shift(STORED, 1))


def test_a_job_that_waited_past_any_delivery_is_dropped_whatever_the_log_holds() -> None:
    """Longer than a create's delivery takes, and than the jobs stream's duplicate window:
    should the create still land, its job is published again as a new message."""
    later = shift(STORED, STRANDED_SECONDS + 1)
    assert STRANDED_SECONDS > 120
    assert job_orphaned(SandboxState(sandbox_id="orphan00003"), STORED, later)
    requested = after(
        SandboxRequested(
            sandbox_id="orphan00004",
            command_id="c1",
            actor=ACTOR,
            at=STORED,
            profile="profile.local",
            profile_version=1,
        ),
    )
    assert job_orphaned(requested, STORED, later)
    assert not job_orphaned(requested, STORED, shift(STORED, 1))
