"""Drift between the log and what backends find: orphans, ghosts and corpses. Pure."""

from __future__ import annotations

from sandboxer.config.hosts import HostConfig
from sandboxer.domain.drift import (
    claimed,
    corpse_reason,
    earlier_attempt,
    find_drift,
    live_attempt,
    placed_elsewhere,
    reap_agrees,
    reconcile_step,
    step_for,
    usable_as_judged,
)
from sandboxer.domain.found import FoundSandbox, Frozen, by_id
from sandboxer.domain.sandbox_state import SandboxState, Status
from sandboxer.extensions.compose_ssh.containers import Container
from sandboxer.extensions.compose_ssh.listing import found_on_host, why_dead
from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import Scan


def found(sandbox_id: str, *, alive: bool = True, dead: str | None = None) -> FoundSandbox:
    return FoundSandbox(
        sandbox_id=sandbox_id, alive=alive, host="host1", detail={"dead": dead} if dead else {}
    )


def test_each_kind_is_found_and_transitions_are_left_alone() -> None:
    held = [
        found("healthy00001"),
        found("orphan000001"),
        found("strange00001"),
        found("corpse000001", alive=False, dead="its holder process 42 died"),
        found("busy00000001", alive=False),
        found("failedleft01", alive=False),
    ]
    status = {
        "healthy00001": "ready",
        "orphan000001": "destroyed",
        "corpse000001": "ready",
        "busy00000001": "provisioning",
        "failedleft01": "failed",
    }
    drift = find_drift(held, status, ["healthy00001", "corpse000001", "vanished0001"])
    assert [o.sandbox_id for o in drift.orphans] == ["orphan000001", "strange00001", "failedleft01"]
    assert drift.ghosts == ["vanished0001"]
    assert [c.sandbox_id for c in drift.corpses] == ["corpse000001"]


def test_a_live_sandbox_the_log_calls_ready_is_no_drift() -> None:
    drift = find_drift([found("healthy00001")], {"healthy00001": "ready"}, ["healthy00001"])
    assert drift.to_dict() == {"orphans": [], "ghosts": [], "corpses": [], "unmatched": []}


def test_a_live_sandbox_not_as_paused_as_its_log_says_is_listed_unmatched() -> None:
    """With the step a reap or a worker takes; a dead one is a corpse, and one a job is
    pausing or resuming, or whose backend does not say, is no drift."""
    listed = [
        FoundSandbox(sandbox_id="running00001", alive=True, frozen="part"),
        FoundSandbox(sandbox_id="frozen000001", alive=True, frozen="all"),
        FoundSandbox(sandbox_id="pausing00001", alive=True, frozen="part"),
        FoundSandbox(sandbox_id="unsaid000001", alive=True),
        FoundSandbox(sandbox_id="dead00000001", alive=False, frozen="none"),
    ]
    statuses = {
        "running00001": "paused",
        "frozen000001": "active",
        "pausing00001": "pausing",
        "unsaid000001": "paused",
        "dead00000001": "paused",
    }
    drift = find_drift(listed, statuses, list(statuses))
    assert drift.to_dict()["unmatched"] == [
        {
            "sandbox_id": "running00001",
            "host": None,
            "status": "paused",
            "frozen": "part",
            "step": "freeze",
        },
        {
            "sandbox_id": "frozen000001",
            "host": None,
            "status": "active",
            "frozen": "all",
            "step": "thaw",
        },
    ]
    assert [c.sandbox_id for c in drift.corpses] == ["dead00000001"]


def test_corpses_say_why_in_the_report() -> None:
    corpse = found("corpse000001", alive=False, dead="its workspace /build/sbx-x was deleted")
    report = find_drift([corpse], {"corpse000001": "ready"}, ["corpse000001"]).to_dict()
    assert report["corpses"] == [
        {
            "sandbox_id": "corpse000001",
            "host": "host1",
            "alive": False,
            "detail": {"dead": "its workspace /build/sbx-x was deleted"},
            "reason": "its workspace /build/sbx-x was deleted on host1",
        }
    ]
    assert corpse_reason(found("quiet0000001", alive=False)) == (
        "what is left of it on host1 is not alive"
    )


def logged(status: Status, extension: str | None, host: str | None = None) -> SandboxState:
    return SandboxState(sandbox_id="copy00000001", status=status, extension=extension, host=host)


def test_a_live_sandbox_not_as_paused_as_its_log_says_is_frozen_or_thawed_to_match() -> None:
    """A paused sandbox that runs, all or in part (an undo that kept failing, a compose pause
    cut short), is frozen again; a running one frozen, all or in part, is thawed. Not while a
    job pauses or resumes it, nor when the backend does not say, nor for a dead one (its
    failure is the start's)."""
    here = "ext.local"

    def held(frozen: Frozen | None, *, alive: bool = True) -> FoundSandbox:
        return FoundSandbox(sandbox_id="copy00000001", alive=alive, frozen=frozen)

    for running in ("none", "part"):
        assert reconcile_step(held(running), here, logged("paused", here)) == "freeze"
    for frozen in ("all", "part"):
        assert reconcile_step(held(frozen), here, logged("ready", here)) == "thaw"
        assert reconcile_step(held(frozen), here, logged("active", here)) == "thaw"
    assert reconcile_step(held("all"), here, logged("paused", here)) == "adopt"
    assert reconcile_step(held("none"), here, logged("active", here)) == "adopt"
    for moving in ("pausing", "resuming"):
        for how in ("all", "part", "none"):
            assert reconcile_step(held(how), here, logged(moving, here)) == "adopt"
    assert reconcile_step(held(None), here, logged("paused", here)) == "adopt"
    assert reconcile_step(held("all", alive=False), here, logged("ready", here)) == "fail"
    # Never for a sandbox the log places elsewhere, destroys or has failed.
    assert reconcile_step(held("all"), here, logged("ready", "ext.other")) == "remove_copy"
    assert reconcile_step(held("all"), here, logged("destroying", here)) == "finish_teardown"


def test_a_copy_of_a_sandbox_the_log_places_elsewhere_is_removed_whatever_its_status() -> None:
    """A rerouted sandbox lives on ext.local; ext.saas-stub still holds a copy (its create
    landed late). The log's status speaks of ext.local's: the copy is removed, and neither
    adopted (live), nor marked failed (dead), nor recorded destroyed (destroying)."""
    live, dead = found("copy00000001"), found("copy00000001", alive=False)
    hosted = FoundSandbox(sandbox_id="copy00000001", alive=True)
    statuses: list[Status] = ["ready", "paused", "destroying", "failed", "destroyed", "routed"]
    for status in statuses:
        state = logged(status, "ext.local")
        assert placed_elsewhere(hosted, "ext.saas-stub", state) == "ext.local"
        for item in (live, dead, hosted):
            assert reconcile_step(item, "ext.saas-stub", state) == "remove_copy"
    # Another host of the same backend is elsewhere too.
    on_host2 = logged("ready", "ext.compose-ssh", "host2")
    assert placed_elsewhere(live, "ext.compose-ssh", on_host2) == "ext.compose-ssh on host2"
    assert reconcile_step(dead, "ext.compose-ssh", on_host2) == "remove_copy"


def test_the_log_s_status_rules_what_it_places_here() -> None:
    live, dead = found("copy00000001"), found("copy00000001", alive=False)
    here = "ext.compose-ssh"
    assert reconcile_step(live, here, logged("ready", here, "host1")) == "adopt"
    assert reconcile_step(dead, here, logged("active", here, "host1")) == "fail"
    assert reconcile_step(live, here, logged("destroying", here, "host1")) == "finish_teardown"
    assert reconcile_step(live, here, logged("failed", here, "host1")) == "remove"
    assert reconcile_step(live, here, logged("provisioning", here, "host1")) == "leave"
    # A sandbox it refused and is rerouting is still its own until routed elsewhere.
    assert reconcile_step(live, here, logged("rerouting", here, "host1")) == "leave"
    # No host recorded (made before hosts were): not elsewhere, its teardown looks everywhere.
    assert reconcile_step(live, here, logged("ready", here)) == "adopt"
    # Unknown to the log: no backend is named, so it is no one's copy.
    assert placed_elsewhere(live, here, logged("new", None)) is None
    assert reconcile_step(live, here, logged("new", None)) == "unknown"
    snapshotting = SandboxState(
        sandbox_id="copy00000001", status="destroying", extension=here, snapshotting="snap1"
    )
    assert reconcile_step(live, here, snapshotting) == "leave"


def test_an_unmarked_hosted_sandbox_is_this_backend_s_only_where_the_log_places_it() -> None:
    """Made before its labels named the declaration that made it: on an account ext.e2b and
    ext.e2b-eu share it may be either's, so neither takes it for a copy or an orphan."""
    older = FoundSandbox(sandbox_id="copy00000001", alive=True, unmarked=True)
    marked = FoundSandbox(sandbox_id="copy00000001", alive=True)
    assert claimed(older, "ext.e2b", logged("ready", "ext.e2b"))
    assert claimed(older, "ext.e2b", logged("destroyed", "ext.e2b"))
    assert not claimed(older, "ext.e2b-eu", logged("ready", "ext.e2b"))
    assert not claimed(older, "ext.e2b", logged("new", None))  # whose leak: unknown
    assert claimed(marked, "ext.e2b-eu", logged("ready", "ext.e2b"))  # its mark: a copy


def test_a_copy_left_here_is_an_orphan_never_a_corpse() -> None:
    """Stale and reap see a rerouted sandbox's copy as an orphan of this backend, whatever
    the log says of the sandbox where it lives, and say where that is."""
    dead_copy = found("copy00000001", alive=False)
    live_copy = found("copy00000002")
    status = {"copy00000001": "ready", "copy00000002": "destroying"}
    placed = {"copy00000001": "ext.local", "copy00000002": "ext.e2b"}
    drift = find_drift([dead_copy, live_copy], status, [], placed)
    assert [o.sandbox_id for o in drift.orphans] == ["copy00000001", "copy00000002"]
    assert drift.corpses == []
    report = drift.to_dict()
    orphans = report["orphans"]
    assert isinstance(orphans, list)
    assert [o["placed_on"] for o in orphans] == ["ext.local", "ext.e2b"]


def container(service: str, status: str, project: str = "sbx-stack0000001") -> Container:
    return Container(
        id=f"id-{service}",
        name=f"{project}_{service}_1",
        project=project,
        service=service,
        status=status,
    )


def test_a_compose_stack_is_dead_only_when_nothing_of_it_runs() -> None:
    project = "sbx-stack0000001"
    assert why_dead(project, True, [container("web", "running"), container("db", "exited")]) is None
    assert why_dead(project, True, []) == (
        "its compose project sbx-stack0000001 has no containers (they were removed)"
    )
    assert why_dead(project, True, [container("web", "exited"), container("db", "created")]) == (
        "no container of its compose project sbx-stack0000001 is running (web: exited, db: created)"
    )
    assert why_dead(project, True, [container("web", "paused")]) is None  # paused, not dead
    gone = why_dead(project, False, [container("web", "running")])
    assert gone is not None
    assert gone.startswith("its directory is gone")


def test_compose_listing_joins_markers_and_containers() -> None:
    item = Target(
        "host1",
        HostConfig(
            address="127.0.0.1", insecure_accept_any_host_key=True, workspace_root="/srv/sbx"
        ),
    )
    scan = Scan(
        directories=frozenset({"stack0000001", "removed00001"}),
        markers={
            "stack0000001": {"extension": "ext.compose-ssh", "compose_file": "compose.yml"},
            "removed00001": {"extension": "ext.compose-ssh"},
            "vmworkspace1": {"extension": "ext.vm-packer"},
        },
    )
    listed = found_on_host(item, scan, [container("web", "running")], "ext.compose-ssh")
    by_id = {f.sandbox_id: f for f in listed}
    assert sorted(by_id) == ["removed00001", "stack0000001"]
    assert by_id["stack0000001"].alive
    assert by_id["stack0000001"].detail["directory"] == "/srv/sbx/sbx-stack0000001"
    assert "dead" not in by_id["stack0000001"].detail
    assert not by_id["removed00001"].alive
    assert by_id["removed00001"].detail["dead"].endswith("has no containers (they were removed)")


def test_compose_listing_says_how_much_of_a_live_stack_is_paused() -> None:
    """Of the containers that run or are paused (an exited one is neither): all paused,
    none, or some (a pause cut short between containers). Not said of a dead stack, nor
    when the engine could not list them."""
    item = Target(
        "host1",
        HostConfig(address="127.0.0.1", insecure_accept_any_host_key=True, workspace_root="/s"),
    )
    scan = Scan(
        directories=frozenset({"stack0000001"}),
        markers={"stack0000001": {"extension": "ext.compose-ssh"}},
    )

    def frozen(*statuses: str, engine_error: str | None = None) -> Frozen | None:
        items = [container(f"s{i}", status) for i, status in enumerate(statuses)]
        [found] = found_on_host(item, scan, items, "ext.compose-ssh", engine_error=engine_error)
        return found.frozen

    assert frozen("paused", "paused", "exited") == "all"
    assert frozen("running", "exited") == "none"
    assert frozen("running", "paused") == "part"
    assert frozen("exited") is None  # dead
    assert frozen("paused", engine_error="cannot connect") is None


def test_compose_listing_leaves_out_another_backend_s_sandbox_with_containers() -> None:
    """On a host shared with vm-packer (one workspace root), `docker compose up` run in a
    vm-packer workspace starts a project named after its directory, sbx-<id>: those
    containers are not a compose sandbox, or reconcile and reap would take vm-packer's
    sandbox for a copy left here. Containers whose marker is gone are still ours."""
    item = Target(
        "host1",
        HostConfig(
            address="127.0.0.1", insecure_accept_any_host_key=True, workspace_root="/srv/sbx"
        ),
    )
    scan = Scan(
        directories=frozenset({"vmworkspace1"}),
        markers={"vmworkspace1": {"extension": "ext.vm-packer"}},
    )
    held = [
        container("app", "running", project="sbx-vmworkspace1"),
        container("web", "exited", project="sbx-unmarked0001"),
    ]
    listed = found_on_host(item, scan, held, "ext.compose-ssh")
    assert [f.sandbox_id for f in listed] == ["unmarked0001"]


def hosted(made_by: tuple[int, int] | None, *, alive: bool = True, pid: str = "") -> FoundSandbox:
    """One provider sandbox of ``copy00000001``, labelled with the attempt that made it."""
    return FoundSandbox(
        sandbox_id="copy00000001", alive=alive, detail={"provider_id": pid}, made_by=made_by
    )


def attempted(
    status: Status, generation: int, attempt: int, extension: str = "ext.e2b"
) -> SandboxState:
    return SandboxState(
        sandbox_id="copy00000001",
        status=status,
        extension=extension,
        generation=generation,
        attempt=attempt,
    )


def test_an_earlier_attempt_s_copy_beside_a_live_sandbox_is_an_orphan() -> None:
    """The log's `ready` names attempt 2; a killed attempt 1's create landed after it. The
    copy is an orphan (reported with both attempts), the live one is neither an orphan nor
    a ghost, and the reconcile removes only the copy, by its attempt."""
    live, copy = hosted((1, 2), pid="live"), hosted((1, 1), pid="copy")
    state = attempted("ready", 1, 2)
    assert live_attempt([live, copy], state, "ext.e2b") == (1, 2)
    attempts = {"copy00000001": (1, 2)}
    drift = find_drift([live, copy], {"copy00000001": "ready"}, ["copy00000001"], {}, attempts)
    assert drift.orphans == [copy]
    assert (drift.ghosts, drift.corpses) == ([], [])
    orphans = drift.to_dict()["orphans"]
    assert isinstance(orphans, list)
    [orphan] = orphans
    assert (orphan["detail"], orphan["made_by"], orphan["live_attempt"]) == (
        {"provider_id": "copy"},
        "1.1",
        "1.2",
    )
    assert reconcile_step(live, "ext.e2b", state, (1, 2)) == "adopt"
    assert reconcile_step(copy, "ext.e2b", state, (1, 2)) == "remove_earlier_attempt"
    # Even a dead copy: it is not the sandbox, whose failure it would otherwise mark.
    dead = hosted((1, 1), alive=False)
    assert reconcile_step(dead, "ext.e2b", state, (1, 2)) == "remove_earlier_attempt"
    assert find_drift([live, dead], {"copy00000001": "ready"}, [], {}, attempts).corpses == []
    # An earlier generation's (a frozen attempt's create after a recreate's teardown) too.
    recreated = attempted("active", 2, 1)
    assert live_attempt([hosted((2, 1)), hosted((1, 3))], recreated, "ext.e2b") == (2, 1)
    assert earlier_attempt(hosted((1, 3)), (2, 1))
    assert not earlier_attempt(hosted((2, 1)), (2, 1))
    assert not earlier_attempt(hosted((2, 2)), (2, 1))  # later than the log knows: left


def test_with_only_an_earlier_attempt_s_copy_left_the_sandbox_is_a_ghost() -> None:
    """What the log's `ready` names is gone: the copy is not it (another provider id)."""
    copy = hosted((1, 1))
    assert live_attempt([copy], attempted("ready", 1, 2), "ext.e2b") == (1, 2)
    drift = find_drift(
        [copy], {"copy00000001": "ready"}, ["copy00000001"], {}, {"copy00000001": (1, 2)}
    )
    assert (drift.orphans, drift.ghosts) == ([copy], ["copy00000001"])


def test_attempts_are_judged_only_while_the_log_calls_the_sandbox_usable_here() -> None:
    """A sandbox being provisioned is its job's (its clean start and twin kill); a failed or
    destroyed one is removed whole; one placed elsewhere is a copy whatever its label."""
    copy = hosted((1, 1))
    busy: list[Status] = [
        "provisioning",
        "recreating",
        "destroying",
        "failed",
        "destroyed",
        "routed",
    ]
    for status in busy:
        assert live_attempt([copy], attempted(status, 1, 2), "ext.e2b") is None, status
    usable: list[Status] = ["ready", "active", "pausing", "paused", "resuming"]
    for status in usable:
        assert live_attempt([copy], attempted(status, 1, 2), "ext.e2b") == (1, 2), status
    elsewhere = attempted("ready", 1, 2, extension="ext.modal")
    assert live_attempt([copy], elsewhere, "ext.e2b") is None
    assert reconcile_step(copy, "ext.e2b", elsewhere) == "remove_copy"
    # Without the log's attempt (a backend that cannot remove one attempt's alone), no rule.
    assert reconcile_step(copy, "ext.e2b", attempted("ready", 1, 2)) == "adopt"
    assert find_drift([copy], {"copy00000001": "ready"}, ["copy00000001"]).orphans == []


def test_an_unlabelled_sandbox_is_never_judged_by_attempt_nor_anything_beside_it() -> None:
    """Made before the attempt label: it may be the live one, and an attempt-scoped teardown
    counts it as earlier, so a labelled earlier copy beside it is not removed by attempt."""
    unlabelled, copy = hosted(None, pid="old"), hosted((1, 1), pid="copy")
    state = attempted("ready", 1, 2)
    assert live_attempt([unlabelled, copy], state, "ext.e2b") is None
    assert live_attempt([unlabelled], state, "ext.e2b") is None
    assert not earlier_attempt(unlabelled, (1, 2))
    drift = find_drift([unlabelled, copy], {"copy00000001": "ready"}, ["copy00000001"], {}, {})
    assert (drift.orphans, drift.ghosts) == ([], [])
    assert reconcile_step(unlabelled, "ext.e2b", state, None) == "adopt"
    assert reconcile_step(copy, "ext.e2b", state, None) == "adopt"


def test_found_sandboxes_are_grouped_by_id() -> None:
    one, two = hosted((1, 2)), hosted((1, 1))
    other = FoundSandbox(sandbox_id="other0000001", alive=True)
    assert by_id([one, other, two]) == {"copy00000001": [one, two], "other0000001": [other]}


def test_a_ghost_or_corpse_is_marked_only_while_the_log_names_the_provisioning_judged() -> None:
    """``reap-stale`` reads the log again right before it marks: a pause or resume since is
    the same sandbox, a destroy, a failure or a recreate since is not what it judged."""
    usable: list[Status] = ["ready", "active", "pausing", "paused", "resuming"]
    for status in usable:
        assert usable_as_judged((1, 2), attempted(status, 1, 2)), status
    gone: list[Status] = ["recreating", "provisioning", "destroying", "destroyed", "failed"]
    for status in gone:
        assert not usable_as_judged((1, 2), attempted(status, 1, 2)), status
    assert not usable_as_judged((1, 2), attempted("ready", 2, 1))  # recreated since
    assert not usable_as_judged((1, 1), attempted("ready", 1, 2))  # provisioned again
    assert not usable_as_judged(None, attempted("ready", 1, 2))  # never judged usable


def test_reap_takes_a_step_only_while_the_log_still_agrees() -> None:
    dead = hosted((1, 1), alive=False)
    failed = attempted("failed", 1, 1)
    judged = step_for(dead, "ext.e2b", failed, [dead], by_attempt=True)
    assert judged == "remove"
    assert reap_agrees(judged, (1, 1), judged, failed)
    # Recreated since: provisioning (a job's), then ready again (a sandbox the listing missed).
    for later in (attempted("provisioning", 2, 1), attempted("ready", 2, 1)):
        now = step_for(dead, "ext.e2b", later, [dead], by_attempt=True)
        assert not reap_agrees(judged, (1, 1), now, later), later.status
    # A corpse (of a backend without attempt labels): the same step on a recreated sandbox
    # is not the same sandbox.
    corpse = FoundSandbox(sandbox_id="copy00000001", alive=False)
    corpse_then, corpse_later = attempted("ready", 1, 1), attempted("ready", 2, 1)
    assert step_for(corpse, "ext.e2b", corpse_then, [corpse], by_attempt=True) == "fail"
    assert step_for(corpse, "ext.e2b", corpse_later, [corpse], by_attempt=True) == "fail"
    assert reap_agrees("fail", (1, 1), "fail", attempted("paused", 1, 1))
    assert not reap_agrees("fail", (1, 1), "fail", corpse_later)
    # Judged by attempt only when asked; one that is not the backend's own is left.
    copy, live = hosted((1, 1)), hosted((1, 2))
    ready = attempted("ready", 1, 2)
    assert step_for(copy, "ext.e2b", ready, [copy, live], by_attempt=True) == (
        "remove_earlier_attempt"
    )
    assert step_for(copy, "ext.e2b", ready, [copy, live], by_attempt=False) == "adopt"
    unmarked = FoundSandbox(sandbox_id="copy00000001", alive=True, unmarked=True)
    assert (
        step_for(
            unmarked, "ext.e2b", attempted("failed", 1, 1, "ext.x"), [unmarked], by_attempt=True
        )
        == "leave"
    )
