"""The sandbox aggregate's rules, run directly: no event loop, no NATS."""

from __future__ import annotations

import pytest

from sandboxer.commands.types import CreateSandbox, DestroySandbox, RecreateSandbox
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkFailed,
    MarkReady,
    MarkTeardownFailed,
    StartProvisioning,
    decide,
)
from sandboxer.domain.sandbox_state import SandboxState, evolve, fold
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor, SandboxEvent

ACTOR = Actor(type="adm", id="tester")
SID = "sandbox0001"
NOW = "2026-11-23T00:00:00.000Z"


def admitted(command_id: str = "c-create") -> AdmittedCreate:
    return AdmittedCreate(
        command=CreateSandbox(command_id=command_id, actor=ACTOR, profile="profile.local"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="fixed by profile",
    )


def run(state: SandboxState, *commands: object) -> tuple[SandboxState, list[SandboxEvent]]:
    produced: list[SandboxEvent] = []
    for command in commands:
        events = decide(state, command, NOW)  # type: ignore[arg-type]
        for event in events:
            state = evolve(state, event)
        produced += events
    return state, produced


def ready_state() -> SandboxState:
    state, _ = run(
        SandboxState(sandbox_id=SID),
        admitted(),
        StartProvisioning(job_id="j1", worker="w"),
        MarkReady(job_id="j1", reachability={"kind": "local"}, warnings=[]),
    )
    return state


def test_create_requests_and_routes() -> None:
    state, events = run(SandboxState(sandbox_id=SID), admitted())
    assert [type(e).__name__ for e in events] == ["SandboxRequested", "SandboxRouted"]
    assert state.status == "routed"
    assert state.extension == "ext.local"


def test_same_create_twice_decides_nothing_more() -> None:
    state, _ = run(SandboxState(sandbox_id=SID), admitted())
    assert decide(state, admitted(), NOW) == []


def test_another_create_for_an_existing_id_is_rejected() -> None:
    state, _ = run(SandboxState(sandbox_id=SID), admitted())
    with pytest.raises(Rejected, match="already exists"):
        decide(state, admitted("other-command"), NOW)


def test_full_lifecycle_and_correlation() -> None:
    state = ready_state()
    assert state.status == "ready"
    assert state.generation == 1
    state, events = run(
        state,
        DestroySandbox(command_id="c-destroy", actor=ACTOR, sandbox_id=SID),
        FinishTeardown(job_id="j2"),
    )
    assert state.status == "destroyed"
    assert [e.command_id for e in events] == ["c-destroy", "c-destroy"]


def test_redelivered_provision_counts_attempts() -> None:
    state, _ = run(
        SandboxState(sandbox_id=SID),
        admitted(),
        StartProvisioning(job_id="j1", worker="a"),
        StartProvisioning(job_id="j1", worker="b"),
    )
    assert (state.status, state.attempt, state.generation) == ("provisioning", 2, 1)


def test_job_for_a_ready_sandbox_does_nothing() -> None:
    assert decide(ready_state(), StartProvisioning(job_id="j9", worker="w"), NOW) == []


def test_destroy_unknown_is_rejected_with_a_hint() -> None:
    with pytest.raises(Rejected, match="sandboxer list"):
        decide(
            SandboxState(sandbox_id=SID),
            DestroySandbox(command_id="c", actor=ACTOR, sandbox_id=SID),
            NOW,
        )


def test_destroy_while_destroying_is_a_quiet_retry() -> None:
    state, _ = run(ready_state(), DestroySandbox(command_id="d1", actor=ACTOR, sandbox_id=SID))
    assert decide(state, DestroySandbox(command_id="d2", actor=ACTOR, sandbox_id=SID), NOW) == []


def test_destroyed_cannot_be_destroyed_again_or_recreated() -> None:
    state, _ = run(
        ready_state(),
        DestroySandbox(command_id="d1", actor=ACTOR, sandbox_id=SID),
        FinishTeardown(job_id="t"),
    )
    with pytest.raises(Rejected, match="already destroyed"):
        decide(state, DestroySandbox(command_id="d2", actor=ACTOR, sandbox_id=SID), NOW)
    with pytest.raises(Rejected, match="recreate applies"):
        decide(state, RecreateSandbox(command_id="r", actor=ACTOR, sandbox_id=SID), NOW)


def test_recreate_provisions_a_new_generation_correlated_to_the_recreate() -> None:
    state, events = run(
        ready_state(),
        RecreateSandbox(command_id="c-re", actor=ACTOR, sandbox_id=SID),
        StartProvisioning(job_id="j3", worker="w"),
        MarkReady(job_id="j3", reachability={}, warnings=[]),
    )
    assert state.status == "ready"
    assert state.generation == 2
    assert {e.command_id for e in events} == {"c-re"}


def test_recreate_while_provisioning_is_rejected() -> None:
    state, _ = run(SandboxState(sandbox_id=SID), admitted())
    with pytest.raises(Rejected, match="routed"):
        decide(state, RecreateSandbox(command_id="r", actor=ACTOR, sandbox_id=SID), NOW)


def test_destroy_during_provisioning_wins_over_ready() -> None:
    state, _ = run(
        SandboxState(sandbox_id=SID),
        admitted(),
        StartProvisioning(job_id="j1", worker="w"),
        DestroySandbox(command_id="d", actor=ACTOR, sandbox_id=SID),
    )
    assert decide(state, MarkReady(job_id="j1", reachability={}, warnings=[]), NOW) == []
    assert decide(state, MarkFailed(job_id="j1", reason="x", stage="provision"), NOW) == []


def test_fold_equals_stepwise_evolution() -> None:
    state, events = run(
        SandboxState(sandbox_id=SID),
        admitted(),
        StartProvisioning(job_id="j1", worker="w"),
        MarkFailed(job_id="j1", reason="boom", stage="provision"),
    )
    assert fold(SID, events) == state
    assert state.failure == "boom"


def test_create_interrupted_between_its_two_appends_is_completed() -> None:
    requested = decide(SandboxState(sandbox_id=SID), admitted(), NOW)[0]
    state = evolve(SandboxState(sandbox_id=SID), requested)
    completion = decide(state, admitted(), NOW)
    assert [e.__struct_config__.tag for e in completion] == ["routed"]


def test_drift_finds_orphans_and_ghosts_but_not_work_in_flight() -> None:
    from sandboxer.domain.drift import find_drift
    from sandboxer.extensions.base import FoundSandbox

    found = [
        FoundSandbox(sandbox_id=s, alive=True)
        for s in ("destroyedone", "unknownone1", "readyone111", "provisioning", "failedone11")
    ]
    status = {
        "destroyedone": "destroyed",
        "readyone111": "ready",
        "provisioning": "provisioning",
        "failedone11": "failed",
    }
    drift = find_drift(found, status, ["readyone111", "vanished1111"])
    assert [o.sandbox_id for o in drift.orphans] == ["destroyedone", "unknownone1", "failedone11"]
    assert drift.ghosts == ["vanished1111"]


def test_a_failed_teardown_is_recorded_once_and_a_new_destroy_retries_it() -> None:
    destroy = DestroySandbox(command_id="c-destroy", actor=ACTOR, sandbox_id=SID)
    state, _ = run(ready_state(), destroy)
    stuck, events = run(
        state,
        MarkTeardownFailed(job_id="j2", reason="device busy"),
        MarkTeardownFailed(job_id="j2", reason="device busy"),
    )
    assert [type(e).__name__ for e in events] == ["SandboxTeardownFailed"]
    assert stuck.status == "destroying"
    assert stuck.teardown_failure == "device busy"
    again = DestroySandbox(command_id="c-again", actor=ACTOR, sandbox_id=SID)
    retried, events = run(stuck, again)
    assert [e.command_id for e in events] == ["c-again"]
    assert retried.teardown_failure is None
    assert retried.correlation == "c-again"
    done, events = run(retried, FinishTeardown(job_id="j3"))
    assert done.status == "destroyed"
    assert events[0].command_id == "c-again"


def test_teardown_failure_applies_only_while_destroying() -> None:
    assert decide(ready_state(), MarkTeardownFailed(job_id="j", reason="x"), NOW) == []
