"""Pause and resume as pure rules: which states allow them, and the clocks standing still.

Every time is passed in (``now``), so these tests say exactly how long a sandbox was
paused and check the deadlines folded from its events to the millisecond.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies

from sandboxer.commands.types import (
    CreateSandbox,
    DestroySandbox,
    ExpireSandbox,
    ExtendTtl,
    PauseSandbox,
    ResumeSandbox,
    TouchSandbox,
)
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile
from sandboxer.domain.admission import admit_create
from sandboxer.domain.deadlines import PAUSED as PAUSED_STATES
from sandboxer.domain.deadlines import due, sandbox_clock
from sandboxer.domain.drift import find_drift
from sandboxer.domain.found import FoundSandbox
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    DomainCommand,
    MarkFailed,
    MarkReady,
    StartProvisioning,
    decide,
)
from sandboxer.domain.sandbox_pause import MarkPaused, MarkPauseFailed, MarkResumed
from sandboxer.domain.sandbox_snapshots import StartSnapshot
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.timestamps import seconds_between, shift
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor, event_type
from sandboxer.workers.jobs import job_for

SID = "sandbox0001"
T0 = "2026-12-02T00:00:00.000Z"
AGENT = Actor(type="agt", id="agent-7")


def at(seconds: float) -> str:
    return shift(T0, seconds)


def step(state: SandboxState, command: DomainCommand, seconds: float) -> SandboxState:
    for event in decide(state, command, at(seconds)):
        state = evolve(state, event)
    return state


def ready(
    ttl: float = 100, max_pause: float | None = None, idle: float | None = None
) -> SandboxState:
    create = AdmittedCreate(
        command=CreateSandbox(command_id="c0", actor=AGENT, profile="profile.local"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="fixed",
        ttl_seconds=ttl,
        ttl_max_seconds=1000,
        idle_reap_seconds=idle,
        max_pause_seconds=max_pause,
    )
    state = step(SandboxState(sandbox_id=SID), create, 0)
    state = step(state, StartProvisioning(job_id="j", worker="w"), 0)
    return step(state, MarkReady(job_id="j", reachability={}, warnings=[]), 0)


def pause(state: SandboxState, seconds: float, n: int = 1) -> SandboxState:
    state = step(state, PauseSandbox(command_id=f"p{n}", actor=AGENT, sandbox_id=SID), seconds)
    assert state.status == "pausing"
    return step(state, MarkPaused(job_id=f"pj{n}"), seconds)


def resume(state: SandboxState, seconds: float, n: int = 1) -> SandboxState:
    state = step(state, ResumeSandbox(command_id=f"r{n}", actor=AGENT, sandbox_id=SID), seconds)
    assert state.status == "resuming"
    return step(state, MarkResumed(job_id=f"rj{n}"), seconds)


def expire(state: SandboxState, seconds: float) -> list[str]:
    command = ExpireSandbox(command_id=f"x{seconds}", actor=AGENT, sandbox_id=SID)
    return [event_type(e) for e in decide(state, command, at(seconds))]


def test_a_paused_sandbox_has_no_deadline_and_resumes_with_what_it_had_left() -> None:
    state = pause(ready(ttl=100), 10)
    assert (state.status, state.paused_at, due(state)) == ("paused", at(10), None)
    with pytest.raises(Rejected) as caught:
        expire(state, 5000)  # long past the TTL it had when paused: not due
    assert caught.value.code == "not_due"
    assert "paused" in caught.value.reason
    state = resume(state, 5000)
    # 10 s ran before the pause, 90 s are left, counted from the resume.
    assert (state.status, state.expires_at, state.paused_seconds) == ("ready", at(5090), 4990)
    assert due(state) is not None
    assert due(state).at == at(5090)  # type: ignore[union-attr]
    with pytest.raises(Rejected):
        expire(state, 5089)
    assert expire(state, 5090) == ["expired", "destroying"]


def test_the_clock_stops_at_paused_not_at_the_command_and_restarts_at_resumed() -> None:
    state = step(ready(ttl=100), PauseSandbox(command_id="p", actor=AGENT, sandbox_id=SID), 10)
    assert due(state).at == at(100)  # type: ignore[union-attr]  # pausing: still running
    state = step(state, MarkPaused(job_id="pj"), 12)
    state = step(state, ResumeSandbox(command_id="r", actor=AGENT, sandbox_id=SID), 50)
    assert state.status == "resuming"
    assert due(state) is None  # frozen until the backend has thawed it
    state = step(state, MarkResumed(job_id="rj"), 52)
    assert state.expires_at == at(140)  # paused from 12 to 52


def test_several_pauses_add_up_and_ttl_max_does_not_count_them() -> None:
    state = resume(pause(ready(ttl=100), 10, 1), 60, 1)
    state = resume(pause(state, 70, 2), 100, 2)
    assert state.paused_seconds == 80
    assert state.expires_at == at(180)
    # ttl.max is 1000 s of running time: the 80 s paused come on top.
    extend = ExtendTtl(command_id="e", actor=AGENT, sandbox_id=SID, duration="900s")
    assert step(state, extend, 110).expires_at == at(1080)
    too_far = ExtendTtl(command_id="e2", actor=AGENT, sandbox_id=SID, duration="901s")
    with pytest.raises(Rejected) as caught:
        step(state, too_far, 110)
    assert caught.value.code == "ttl_max_exceeded"


def test_an_extension_while_paused_counts_from_the_pause_not_from_now() -> None:
    state = pause(ready(ttl=100), 90)
    assert sandbox_clock(state, at(500)) == at(90)
    extend = ExtendTtl(command_id="e", actor=AGENT, sandbox_id=SID, duration="60s")
    state = step(state, extend, 500)
    assert state.expires_at == at(160)  # was due at 100, paused at 90: not yet overdue
    assert resume(state, 600).expires_at == at(670)


def test_the_pause_limit_expires_a_sandbox_paused_too_long() -> None:
    state = pause(ready(ttl=100, max_pause=30), 10)
    deadline = due(state)
    assert deadline is not None
    assert (deadline.at, deadline.cause) == (at(40), "pause_limit")
    with pytest.raises(Rejected):
        expire(state, 39)
    command = ExpireSandbox(command_id="x", actor=AGENT, sandbox_id=SID)
    events = decide(state, command, at(40))
    assert [event_type(e) for e in events] == ["pause_limit_reached", "destroying"]
    for event in events:
        state = evolve(state, event)
    assert (state.status, state.expiry) == ("destroying", "pause_limit")
    reached = events[0]
    assert reached.due_at == at(40)  # type: ignore[union-attr]
    assert events[1].reason == "expired (pause_limit)"  # type: ignore[union-attr]


def test_a_resume_within_the_limit_restarts_it_for_the_next_pause() -> None:
    state = resume(pause(ready(ttl=1000, max_pause=30), 10), 35)
    assert due(state).cause == "ttl"  # type: ignore[union-attr]
    state = pause(state, 100, 2)
    assert due(state).at == at(130)  # type: ignore[union-attr]


def test_idle_time_does_not_run_while_paused_and_a_resume_is_activity() -> None:
    state = pause(ready(ttl=10_000, idle=60), 30)
    assert due(state) is None
    state = resume(state, 3000)
    assert state.last_activity_at == at(3000)
    assert due(state).cause == "idle"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setup", "command", "code"),
    [
        ("new", "pause", "unknown_sandbox"),
        ("provisioning", "pause", "not_pausable"),
        ("paused", "pause", "already_paused"),
        ("ready", "resume", "not_paused"),
        ("snapshotting", "pause", "snapshot_in_progress"),
        ("destroying", "resume", "not_paused"),
    ],
)
def test_pause_and_resume_are_refused_with_a_reason(setup: str, command: str, code: str) -> None:
    state = ready()
    if setup == "new":
        state = SandboxState(sandbox_id=SID)
    elif setup == "provisioning":
        state = SandboxState(sandbox_id=SID, status="provisioning", actor=AGENT)
    elif setup == "paused":
        state = pause(state, 1)
    elif setup == "snapshotting":
        start = StartSnapshot(command_id="s", actor=AGENT, sandbox_id=SID, snapshot_id="snap0001")
        state = step(state, start, 1)
    elif setup == "destroying":
        state = step(state, DestroySandbox(command_id="d", actor=AGENT, sandbox_id=SID), 1)
    verb = PauseSandbox if command == "pause" else ResumeSandbox
    with pytest.raises(Rejected) as caught:
        decide(state, verb(command_id="z", actor=AGENT, sandbox_id=SID), at(2))
    assert caught.value.code == code
    assert SID in caught.value.reason


def test_a_failed_pause_leaves_the_sandbox_as_it_was_and_a_failed_resume_paused() -> None:
    state = step(ready(), TouchSandbox(command_id="t", actor=AGENT, sandbox_id=SID), 1)
    assert state.status == "active"
    state = step(state, PauseSandbox(command_id="p", actor=AGENT, sandbox_id=SID), 2)
    state = step(state, MarkPauseFailed(job_id="pj", operation="pause", reason="boom"), 3)
    assert (state.status, state.paused_from) == ("active", None)
    state = pause(state, 4, 2)
    state = step(state, ResumeSandbox(command_id="r", actor=AGENT, sandbox_id=SID), 5)
    state = step(state, MarkPauseFailed(job_id="rj", operation="resume", reason="boom"), 6)
    assert (state.status, due(state)) == ("paused", None)
    assert resume(state, 7, 3).status == "active"


def test_repeated_commands_and_jobs_decide_nothing_and_a_destroy_overtakes_a_pause() -> None:
    state = pause(ready(), 1)
    again = PauseSandbox(command_id="p1", actor=AGENT, sandbox_id=SID)
    assert decide(state, again, at(2)) == []
    assert decide(state, MarkPaused(job_id="pj1"), at(2)) == []
    state = step(state, DestroySandbox(command_id="d", actor=AGENT, sandbox_id=SID), 3)
    assert state.status == "destroying"
    assert decide(state, MarkResumed(job_id="late"), at(4)) == []


def test_a_late_outcome_of_an_earlier_pause_is_not_recorded_against_the_next_one() -> None:
    # Pause p1's job is held up past its ack wait; another attempt pauses, the sandbox is
    # resumed and paused again (p2). The held attempt then reports: not p2's outcome.
    state = step(
        resume(pause(ready(), 1, 1), 2, 1),
        PauseSandbox(command_id="p2", actor=AGENT, sandbox_id=SID),
        3,
    )
    job = job_for(state)
    assert job is not None
    assert (job.action, job.for_command) == ("pause", "p2")
    for late in (
        MarkPauseFailed(job_id="pj1", operation="pause", reason="boom", for_command="p1"),
        MarkPaused(job_id="pj1", for_command="p1"),
    ):
        assert decide(state, late, at(4)) == []
    assert event_types(state, MarkPaused(job_id=job.job_id, for_command="p2")) == ["paused"]
    # A job made before jobs carried their command is taken as the one under way.
    assert event_types(state, MarkPauseFailed(job_id="old", operation="pause", reason="x")) == [
        "pause_failed"
    ]


def event_types(state: SandboxState, command: DomainCommand) -> list[str]:
    return [event_type(e) for e in decide(state, command, at(4))]


def test_admission_records_the_profiles_pause_limit() -> None:
    profile = Profile.model_validate(
        {
            "id": "profile.p",
            "version": 1,
            "extension": "ext.local",
            "isolation": {"level": "namespace"},
            "ttl": {"default": "1h", "max": "2h", "max_pause": "15m"},
        }
    )
    command = CreateSandbox(command_id="c", actor=AGENT, profile="profile.p")
    decl = ExtensionDecl.model_validate(
        {
            "id": "ext.local",
            "kind": "self-hosted",
            "capabilities": {
                "isolation": ["namespace"],
                "pause": True,
                "network": "all-or-nothing",
            },
            "entry_point": "sandboxer.extensions.local.backend:LocalExtension",
        }
    )
    admitted = admit_create(command, profile, {"ext.local": decl})
    assert admitted.max_pause_seconds == 900
    requested = decide(SandboxState(sandbox_id=admitted.sandbox_id), admitted, T0)[0]
    assert requested.max_pause_seconds == 900  # type: ignore[union-attr]


STEP = strategies.tuples(
    strategies.sampled_from(
        ["pause", "paused", "resume", "resumed", "pause-fails", "resume-fails", "extend", "expire"]
    ),
    strategies.integers(min_value=0, max_value=40),
)


def remaining(state: SandboxState, now: str) -> float:
    assert state.expires_at is not None
    return seconds_between(sandbox_clock(state, now), state.expires_at)


@settings(max_examples=300, deadline=None)
@given(
    max_pause=strategies.sampled_from([None, 25.0]),
    steps=strategies.lists(STEP, max_size=30),
)
def test_pauses_never_use_up_the_ttl_and_nothing_expires_early(
    max_pause: float | None, steps: list[tuple[str, int]]
) -> None:
    """Running time plus what is left of the TTL changes only by extensions, however the
    pauses fall; a TTL expiry comes only once that is used up, a pause limit only once a
    pause lasted that long."""
    state = ready(ttl=100, max_pause=max_pause)
    clock, running = 0, 0
    budget = running + remaining(state, at(0))
    reasons: list[str] = []
    for n, (kind, gap) in enumerate(steps):
        if state.status in PAUSED_STATES:
            clock += gap
        else:
            clock, running = clock + gap, running + gap
        now = at(clock)
        left, deadline = remaining(state, now), due(state)
        command: DomainCommand = {
            "pause": PauseSandbox(command_id=f"p{n}", actor=AGENT, sandbox_id=SID),
            "paused": MarkPaused(job_id=f"j{n}"),
            "resume": ResumeSandbox(command_id=f"r{n}", actor=AGENT, sandbox_id=SID),
            "resumed": MarkResumed(job_id=f"j{n}"),
            "pause-fails": MarkPauseFailed(job_id=f"j{n}", operation="pause", reason="x"),
            "resume-fails": MarkPauseFailed(job_id=f"j{n}", operation="resume", reason="x"),
            "extend": ExtendTtl(command_id=f"e{n}", actor=AGENT, sandbox_id=SID, duration="30s"),
            "expire": ExpireSandbox(command_id=f"x{n}", actor=AGENT, sandbox_id=SID),
        }[kind]
        try:
            events = decide(state, command, now)
        except Rejected as refusal:
            reasons.append(refusal.reason)
            continue
        types = [event_type(event) for event in events]
        if "expired" in types:
            assert left <= 0  # never a second of running time early
        if "pause_limit_reached" in types:
            assert deadline is not None
            assert state.paused_at is not None
            assert max_pause is not None
            assert seconds_between(state.paused_at, now) >= max_pause
        for event in events:
            state = evolve(state, event)
        if state.status in {"expired", "destroying"}:
            break
        total = running + remaining(state, now)
        if "ttl_extended" in types:
            assert total >= budget
        else:
            assert total == pytest.approx(budget, abs=1e-6)
        budget = total
    assert all(reasons)


def test_a_paused_sandbox_whose_processes_died_can_be_marked_failed() -> None:
    state = pause(ready(), 5)
    state = step(state, MarkFailed(job_id="reconcile", reason="holder died", stage="job"), 6)
    assert (state.status, state.paused_at, state.paused_from) == ("failed", None, None)


def test_drift_counts_a_paused_sandbox_with_nothing_alive_as_a_corpse() -> None:
    dead = FoundSandbox(sandbox_id=SID, alive=False, host=None, detail={"dead": "holder died"})
    drift = find_drift([dead], {SID: "paused"}, [SID])
    assert [corpse.sandbox_id for corpse in drift.corpses] == [SID]
    assert find_drift([], {}, [SID]).ghosts == [SID]
