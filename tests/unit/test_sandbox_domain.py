"""The sandbox aggregate's rules, run directly: no event loop, no NATS."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from sandboxer.commands.types import (
    CreateSandbox,
    DestroySandbox,
    ExpireSandbox,
    ExtendTtl,
    RecreateSandbox,
    TouchSandbox,
)
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile
from sandboxer.domain.admission import admit_create
from sandboxer.domain.deadlines import Due, due
from sandboxer.domain.key_access import taken_refusal
from sandboxer.domain.sandbox_decide import (
    AbandonCreate,
    AdmittedCreate,
    Attempt,
    FinishTeardown,
    MarkFailed,
    MarkReady,
    MarkRerouting,
    MarkTeardownFailed,
    StartProvisioning,
    decide,
    superseded,
    taken_over,
)
from sandboxer.domain.sandbox_state import SandboxState, evolve, fold
from sandboxer.domain.timestamps import shift
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    Actor,
    SandboxEvent,
    SandboxExpired,
    SandboxTtlExtended,
    event_type,
)
from sandboxer.workers.jobs import job_for

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
    with pytest.raises(Rejected, match="is taken") as refused:
        decide(state, admitted("other-command"), NOW)
    # It may be another project's sandbox: its state is not told.
    assert state.status not in refused.value.reason
    # A key's create of another project's id is refused before deciding with these very
    # words (workers/bus_identity.py): the two answers must not tell the cases apart.
    assert (refused.value.code, refused.value.reason) == taken_refusal(SID)


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


def test_an_attempt_taken_over_by_a_later_one_decides_nothing() -> None:
    """Worker a froze past the ack wait; the job went to worker b (attempt 2). Whatever a
    reports when it resumes is not the sandbox's outcome; b's is."""
    first, _ = run(
        SandboxState(sandbox_id=SID), admitted(), StartProvisioning(job_id="j1", worker="a")
    )
    mine = Attempt.of(first)
    state, _ = run(first, StartProvisioning(job_id="j1", worker="b"))
    assert superseded(state, mine)
    late = [
        MarkReady(job_id="j1", reachability={"kind": "local"}, warnings=[], attempt=mine),
        MarkFailed(job_id="j1", reason="its holder was killed", stage="provision", attempt=mine),
        MarkRerouting(job_id="j1", extension="ext.local", reason="quota", attempt=mine),
    ]
    assert [decide(state, command, NOW) for command in late] == [[], [], []]
    state, events = run(
        state,
        MarkReady(
            job_id="j1", reachability={"kind": "local"}, warnings=[], attempt=Attempt.of(state)
        ),
    )
    assert [type(e).__name__ for e in events] == ["SandboxReady"]
    # Once ready, the frozen attempt's failure does not fail it either.
    assert decide(state, late[1], NOW) == []
    assert not superseded(state, None)
    # The later attempt started clean over what the frozen one made: not the frozen one's to
    # tear down. Nor after a recreate: its job tore the sandbox down and made it again, in
    # the same backend, under the same id. A reroute leaves what it made in its backend to it.
    assert taken_over(state, mine)
    assert not taken_over(state, Attempt.of(state))
    recreated = msgspec.structs.replace(state, generation=2, attempt=1)
    assert superseded(recreated, mine)
    assert taken_over(recreated, mine)
    assert taken_over(recreated, Attempt.of(state))
    rerouted = msgspec.structs.replace(state, extension="ext.e2b", attempt=1)
    assert superseded(rerouted, mine)
    assert not taken_over(rerouted, mine)


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


def test_another_project_s_create_under_a_create_s_command_id_is_refused() -> None:
    """Command ids are the clients' and one namespace across projects: another project's
    create under the id of the create that made the sandbox is not that create sent again
    (it decided nothing, and its hold on its own account stayed for ever), nor does it
    complete one interrupted between its appends (routed as its own)."""
    other = Actor(type="agt", id="k", project="beta")
    foreign = dataclasses.replace(
        admitted(), command=msgspec.structs.replace(admitted().command, actor=other)
    )
    requested = decide(SandboxState(sandbox_id=SID), admitted(), NOW)[0]
    interrupted = evolve(SandboxState(sandbox_id=SID), requested)
    for state in (interrupted, ready_state()):
        with pytest.raises(Rejected) as refused:
            decide(state, foreign, NOW)
        assert (refused.value.code, refused.value.reason) == taken_refusal(SID)
    # The project's own create sent again is decided as before.
    assert [e.__struct_config__.tag for e in decide(interrupted, admitted(), NOW)] == ["routed"]
    assert decide(ready_state(), admitted(), NOW) == []


def abandon(command_id: str = "c-create") -> AbandonCreate:
    return AbandonCreate(command_id=command_id, actor=ACTOR, code="no_host", reason="all down")


def test_an_id_a_refused_create_gave_up_is_never_made() -> None:
    """A create refused after its credit hold gives its id up before its hold is given back:
    from then on no create of the id is made (not a slower delivery of that create, which
    would run on a hold that is gone, nor any other), and the sandbox stays new (it does not
    exist). Given up once."""
    state, events = run(SandboxState(sandbox_id=SID), abandon())
    assert [event_type(e) for e in events] == ["create_abandoned"]
    assert (state.status, state.abandoned_by, state.actor) == ("new", "c-create", None)
    for create in (admitted(), admitted("other-command")):
        with pytest.raises(Rejected) as refused:
            decide(state, create, NOW)
        assert (refused.value.code, refused.value.reason) == taken_refusal(SID)
    assert decide(state, abandon(), NOW) == []
    assert decide(state, abandon("other-command"), NOW) == []


def test_a_sandbox_that_was_requested_is_never_given_up() -> None:
    """Its create was appended (by a delivery that came first, or another create took the
    id): its hold is its own, and its metering releases it."""
    requested = decide(SandboxState(sandbox_id=SID), admitted(), NOW)[0]
    for state in (evolve(SandboxState(sandbox_id=SID), requested), ready_state()):
        assert decide(state, abandon(), NOW) == []
        assert decide(state, abandon("other-command"), NOW) == []


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


# -- lifetime: TTL, activity, expiry ---------------------------------------------------------

AGENT = Actor(type="agt", id="agent-1")


def at(seconds: float) -> str:
    return shift(NOW, seconds)


def step(state: SandboxState, command: object, now: str) -> tuple[SandboxState, list[SandboxEvent]]:
    events = decide(state, command, now)  # type: ignore[arg-type]
    for event in events:
        state = evolve(state, event)
    return state, events


def timed_ready(
    ttl: float = 3600, ttl_max: float = 7200, idle: float | None = None
) -> SandboxState:
    create = dataclasses.replace(
        admitted(), ttl_seconds=ttl, ttl_max_seconds=ttl_max, idle_reap_seconds=idle
    )
    state, _ = run(
        SandboxState(sandbox_id=SID),
        create,
        StartProvisioning(job_id="j1", worker="w"),
        MarkReady(job_id="j1", reachability={"kind": "local"}, warnings=[]),
    )
    return state


def test_expiry_is_creation_plus_ttl_and_recorded_limits_travel_in_requested() -> None:
    state = timed_ready(ttl=60, ttl_max=120, idle=30)
    assert state.expires_at == at(60)
    assert (state.ttl_max_seconds, state.idle_reap_seconds) == (120, 30)
    assert state.last_activity_at == NOW
    assert due(state) == Due(at(30 + 3), "idle")  # idle limit plus one touch interval


def test_extend_moves_the_expiry_within_the_max_counted_from_creation() -> None:
    state = timed_ready(ttl=3600, ttl_max=7200)
    state, events = step(
        state, ExtendTtl(command_id="e1", actor=AGENT, sandbox_id=SID, duration="30m"), at(10)
    )
    assert isinstance(events[0], SandboxTtlExtended)
    assert state.expires_at == at(5400)
    with pytest.raises(Rejected) as refused:
        step(state, ExtendTtl(command_id="e2", actor=AGENT, sandbox_id=SID, duration="1h"), at(20))
    assert refused.value.code == "ttl_max_exceeded"
    assert "ttl.max is 2h" in refused.value.reason
    # Exactly up to the limit is allowed; a re-sent extension decides nothing.
    state, _ = step(
        state, ExtendTtl(command_id="e3", actor=AGENT, sandbox_id=SID, duration="30m"), at(30)
    )
    assert state.expires_at == at(7200)
    assert (
        step(
            state, ExtendTtl(command_id="e3", actor=AGENT, sandbox_id=SID, duration="30m"), at(40)
        )[1]
        == []
    )


def test_extending_an_overdue_sandbox_counts_from_now() -> None:
    state = timed_ready(ttl=60, ttl_max=7200)
    state, _ = step(
        state, ExtendTtl(command_id="e1", actor=AGENT, sandbox_id=SID, duration="60s"), at(100)
    )
    assert state.expires_at == at(160)


def test_first_touch_records_active_then_at_most_one_touched_per_interval() -> None:
    state = timed_ready(idle=100)  # touch interval: 10 s
    kinds = []
    for n, seconds in enumerate([1, 2, 5, 11.5, 12, 30]):
        state, events = step(
            state, TouchSandbox(command_id=f"t{n}", actor=AGENT, sandbox_id=SID), at(seconds)
        )
        kinds.append([event_type(e) for e in events])
    assert kinds == [["active"], [], [], ["touched"], [], ["touched"]]
    assert state.status == "active"
    assert state.last_activity_at == at(30)
    assert due(state) == Due(at(30 + 100 + 10), "idle")


def test_touch_before_ready_is_rejected() -> None:
    state, _ = run(SandboxState(sandbox_id=SID), admitted())
    with pytest.raises(Rejected) as refused:
        step(state, TouchSandbox(command_id="t", actor=AGENT, sandbox_id=SID), NOW)
    assert refused.value.code == "not_ready"


def test_expire_when_due_records_expired_then_destroying_once() -> None:
    state = timed_ready(ttl=60)
    expire = ExpireSandbox(command_id="x1", actor=AGENT, sandbox_id=SID)
    with pytest.raises(Rejected) as early:
        step(state, expire, at(59))
    assert early.value.code == "not_due"
    state, events = step(state, expire, at(61))
    assert [event_type(e) for e in events] == ["expired", "destroying"]
    assert isinstance(events[0], SandboxExpired)
    assert (events[0].cause, events[0].due_at) == ("ttl", at(60))
    assert (state.status, state.expiry, state.correlation) == ("destroying", "ttl", "x1")
    assert job_for(state) is not None
    # Another expirer, a restart or a re-sent command: nothing more.
    assert step(state, expire, at(62))[1] == []
    assert step(state, ExpireSandbox(command_id="x2", actor=AGENT, sandbox_id=SID), at(62))[1] == []


def test_an_expiry_interrupted_after_expired_is_completed_by_its_redelivery() -> None:
    state = timed_ready(ttl=60)
    expire = ExpireSandbox(command_id="x1", actor=AGENT, sandbox_id=SID)
    expired = decide(state, expire, at(61))[0]
    state = evolve(state, expired)
    assert state.status == "expired"
    assert due(state) is None
    state, events = step(state, expire, at(70))
    assert [event_type(e) for e in events] == ["destroying"]


def test_idle_reaping_spares_a_touched_sandbox() -> None:
    state = timed_ready(idle=100)
    state, _ = step(state, TouchSandbox(command_id="t1", actor=AGENT, sandbox_id=SID), at(90))
    with pytest.raises(Rejected):
        step(state, ExpireSandbox(command_id="x1", actor=AGENT, sandbox_id=SID), at(150))
    state, events = step(
        state, ExpireSandbox(command_id="x2", actor=AGENT, sandbox_id=SID), at(201)
    )
    assert isinstance(events[0], SandboxExpired)
    assert events[0].cause == "idle"


def test_adm_can_force_an_early_expiry_and_nobody_expires_a_destroyed_sandbox() -> None:
    state = timed_ready(ttl=60)
    state, events = step(
        state, ExpireSandbox(command_id="x1", actor=ACTOR, sandbox_id=SID, reason="cleanup"), at(1)
    )
    assert isinstance(events[0], SandboxExpired)
    assert (events[0].cause, events[0].note) == ("forced", "cleanup")
    state, _ = step(state, FinishTeardown(job_id="td"), at(2))
    with pytest.raises(Rejected) as refused:
        step(state, ExpireSandbox(command_id="x3", actor=ACTOR, sandbox_id=SID), at(3))
    assert refused.value.code == "already_destroyed"


def test_an_active_sandbox_can_be_recreated_failed_and_destroyed() -> None:
    state = timed_ready()
    state, _ = step(state, TouchSandbox(command_id="t1", actor=AGENT, sandbox_id=SID), at(1))
    assert state.status == "active"
    recreated, _ = step(state, RecreateSandbox(command_id="r1", actor=AGENT, sandbox_id=SID), at(2))
    assert recreated.status == "recreating"
    assert (recreated.recreated_by, recreated.recreated_at) == ("r1", at(2))  # lineage
    failed, _ = step(state, MarkFailed(job_id="j", reason="gone", stage="job"), at(2))
    assert failed.status == "failed"
    destroyed, _ = step(state, DestroySandbox(command_id="d1", actor=AGENT, sandbox_id=SID), at(2))
    assert destroyed.status == "destroying"


def test_admission_applies_the_profile_ttl_and_refuses_more_than_its_max() -> None:
    profile = Profile.model_validate(
        {
            "id": "profile.t",
            "version": 1,
            "extension": "ext.local",
            "isolation": {"level": "namespace"},
            "ttl": {"default": "1h", "max": "2h", "idle_reap": "10m"},
        }
    )
    enabled = {
        "ext.local": ExtensionDecl.model_validate(
            {
                "id": "ext.local",
                "kind": "self-hosted",
                "entry_point": "x:y",
                "capabilities": {"isolation": ["namespace"], "network": "all-or-nothing"},
            }
        )
    }
    command = CreateSandbox(command_id="c1", actor=AGENT, profile="profile.t")
    chosen = admit_create(command, profile, enabled)
    assert (chosen.ttl_seconds, chosen.ttl_max_seconds, chosen.idle_reap_seconds) == (
        3600,
        7200,
        600,
    )
    longer = msgspec.structs.replace(command, ttl="90m")
    assert admit_create(longer, profile, enabled).ttl_seconds == 5400
    with pytest.raises(Rejected) as refused:
        admit_create(msgspec.structs.replace(command, ttl="3h"), profile, enabled)
    assert refused.value.code == "ttl_max_exceeded"
    assert "ttl.max (2h)" in refused.value.reason


def test_an_extension_counts_as_activity() -> None:
    state = timed_ready(idle=100)
    extend = ExtendTtl(command_id="e1", actor=AGENT, sandbox_id=SID, duration="1m")
    state, _ = step(state, extend, at(50))
    assert state.last_activity_at == at(50)
    assert due(state) == Due(at(50 + 100 + 10), "idle")


def test_an_extension_of_the_ttl_sends_a_retime_job_once() -> None:
    """A provider with a timeout of its own must follow the new expiry; nothing else asks it."""
    state = timed_ready(ttl=3600, ttl_max=7200)
    assert job_for(state) is None
    state, _ = step(
        state, ExtendTtl(command_id="e1", actor=AGENT, sandbox_id=SID, duration="30m"), at(10)
    )
    job = job_for(state)
    assert job is not None
    assert (job.action, job.job_id) == ("retime", f"{SID}-{state.version}-retime")
    state, _ = step(state, TouchSandbox(command_id="t1", actor=AGENT, sandbox_id=SID), at(20))
    assert job_for(state) is None  # only the command that moved the expiry dispatches it
