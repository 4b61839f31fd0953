"""Fallback, run directly: a refused provision goes to the next candidate, never to two."""

from __future__ import annotations

import pytest

from sandboxer.commands.types import CreateSandbox, DestroySandbox
from sandboxer.config.profile import Profile
from sandboxer.domain.fallback import has_fallback, without_candidates
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    Attempt,
    MarkFailed,
    MarkReady,
    MarkRerouting,
    Reroute,
    StartProvisioning,
    decide,
)
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected
from sandboxer.workers.jobs import job_for
from tests.unit.test_sandbox_domain import ACTOR, NOW, SID, run

ROUTED = Profile.model_validate(
    {
        "id": "profile.burst",
        "route": {"strategy": "explicit", "candidates": ["ext.saas-stub", "ext.e2b", "ext.local"]},
    }
)
FIXED = Profile.model_validate({"id": "profile.fixed", "extension": "ext.e2b"})


def provisioning_on_stub() -> SandboxState:
    create = AdmittedCreate(
        command=CreateSandbox(command_id="c1", actor=ACTOR, profile="profile.burst"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.saas-stub",
        route_reason="explicit",
        candidates=["ext.saas-stub", "ext.e2b", "ext.local"],
    )
    state, _ = run(SandboxState(sandbox_id=SID), create, StartProvisioning(job_id="j1", worker="w"))
    return state


def refused(state: SandboxState, by: str = "ext.saas-stub") -> SandboxState:
    state, events = run(
        state,
        MarkRerouting(job_id="j1", extension=by, reason="quota", code="provider_quota"),
    )
    assert [type(e).__name__ for e in events] == ["SandboxRerouting"]
    return state


def test_a_refusal_waits_for_the_control_worker_with_no_job_for_anyone() -> None:
    state = refused(provisioning_on_stub())
    assert (state.status, state.refused_by) == ("rerouting", ("ext.saas-stub",))
    assert job_for(state) is None  # nobody provisions it until the reroute is decided


def test_the_reroute_routes_the_next_backend_in_the_same_generation() -> None:
    state = refused(provisioning_on_stub())
    generation = state.generation
    state, events = run(
        state,
        Reroute(command_id="r1", extension="ext.e2b", reason="fallback", candidates=["ext.e2b"]),
        StartProvisioning(job_id="j2", worker="w"),
    )
    assert [type(e).__name__ for e in events] == ["SandboxRouted", "SandboxProvisioning"]
    assert (state.status, state.extension, state.generation) == (
        "provisioning",
        "ext.e2b",
        generation,
    )
    # The refusal that came from the first backend's job cannot refuse the second.
    assert run(state, MarkRerouting(job_id="j1", extension="ext.saas-stub", reason="x"))[1] == []
    state, _ = run(state, MarkReady(job_id="j2", reachability={"kind": "e2b"}, warnings=[]))
    assert state.refused_by == ()


def test_the_refuser_s_stale_job_starts_nothing_after_the_reroute() -> None:
    """The stub's provision job, redelivered or sent again once the sandbox was rerouted to
    ext.e2b, is picked up by the stub's worker: it starts nothing, neither while the
    sandbox waits for ext.e2b's worker (routed) nor once that one provisions it."""
    routed, _ = run(
        refused(provisioning_on_stub()),
        Reroute(command_id="r1", extension="ext.e2b", reason="fallback", candidates=["ext.e2b"]),
    )
    stale = StartProvisioning(job_id="j1", worker="stub-worker", extension="ext.saas-stub")
    assert (routed.status, routed.extension) == ("routed", "ext.e2b")
    assert decide(routed, stale, NOW) == []
    provisioning, events = run(
        routed, StartProvisioning(job_id="j2", worker="e2b-worker", extension="ext.e2b")
    )
    [started] = events
    assert (started.extension, started.attempt) == ("ext.e2b", 1)  # type: ignore[union-attr]
    # Nor does it take over ext.e2b's provisioning as a later attempt.
    assert decide(provisioning, stale, NOW) == []
    assert Attempt.of(provisioning) == Attempt("ext.e2b", provisioning.generation, 1)


def test_the_refuser_s_stale_job_giving_up_fails_nothing() -> None:
    """The stub's provision job runs out of deliveries after the reroute to ext.e2b: its
    failure fails neither the sandbox waiting for ext.e2b, nor ext.e2b's provisioning, nor
    the sandbox ready there. While the job is still the sandbox's work, it fails it."""
    routed, _ = run(
        refused(provisioning_on_stub()),
        Reroute(command_id="r1", extension="ext.e2b", reason="fallback", candidates=["ext.e2b"]),
    )
    gave_up = MarkFailed(job_id="j1", reason="worker error", stage="job", job_of="ext.saas-stub")
    assert decide(routed, gave_up, NOW) == []
    provisioning, _ = run(
        routed, StartProvisioning(job_id="j2", worker="e2b-worker", extension="ext.e2b")
    )
    assert decide(provisioning, gave_up, NOW) == []
    ready, _ = run(provisioning, MarkReady(job_id="j2", reachability={"kind": "e2b"}, warnings=[]))
    assert ready.status == "ready"
    own = MarkFailed(job_id="j2", reason="worker error", stage="job", job_of="ext.e2b")
    assert decide(ready, own, NOW) == []  # past its job: a stale copy's failure
    failed, _ = run(provisioning, own)
    assert failed.status == "failed"
    # Without a job (a failure found on the sandbox), a ready sandbox still fails.
    found = MarkFailed(job_id="reconcile", reason="its holder died", stage="job")
    assert run(ready, found)[0].status == "failed"


def test_nothing_left_fails_the_sandbox_as_retryable() -> None:
    state = refused(provisioning_on_stub())
    state, events = run(state, Reroute(command_id="r1", extension=None, reason="all refused"))
    assert state.status == "failed"
    [failed] = events
    assert (failed.stage, failed.retryable, failed.code) == ("routing", True, "no_route")  # type: ignore[union-attr]


def test_a_reroute_is_decided_once_and_only_for_a_rerouting_sandbox() -> None:
    state = refused(provisioning_on_stub())
    decision = Reroute(command_id="r1", extension="ext.e2b", reason="fallback")
    state, _ = run(state, decision)
    assert run(state, decision)[1] == []  # the same command again decides nothing
    with pytest.raises(Rejected) as not_rerouting:
        run(state, Reroute(command_id="r2", extension="ext.local", reason="hostile"))
    assert not_rerouting.value.code == "not_rerouting"


def test_a_destroy_overtakes_a_refusal() -> None:
    state, _ = run(
        provisioning_on_stub(), DestroySandbox(command_id="d1", actor=ACTOR, sandbox_id=SID)
    )
    assert run(state, MarkRerouting(job_id="j1", extension="ext.saas-stub", reason="x"))[1] == []
    state = refused(provisioning_on_stub())
    state, _ = run(state, DestroySandbox(command_id="d1", actor=ACTOR, sandbox_id=SID))
    assert state.status == "destroying"


def test_candidates_left_after_refusals() -> None:
    assert has_fallback(ROUTED, ["ext.saas-stub"])
    assert not has_fallback(ROUTED, ["ext.saas-stub", "ext.e2b", "ext.local"])
    assert not has_fallback(FIXED, ["ext.e2b"])
    trimmed = without_candidates(ROUTED, ["ext.saas-stub"])
    assert trimmed.candidates() == ["ext.e2b", "ext.local"]
    assert without_candidates(ROUTED, []) is ROUTED
    with pytest.raises(Rejected, match="no fallback"):
        without_candidates(FIXED, ["ext.e2b"])
    with pytest.raises(Rejected, match="every candidate"):
        without_candidates(ROUTED, ["ext.saas-stub", "ext.e2b", "ext.local"])
