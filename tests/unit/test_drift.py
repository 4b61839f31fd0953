"""Drift between the log and what backends find: orphans, ghosts and corpses. Pure."""

from __future__ import annotations

from sandboxer.config.hosts import HostConfig
from sandboxer.domain.drift import corpse_reason, find_drift
from sandboxer.domain.found import FoundSandbox
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
    assert drift.to_dict() == {"orphans": [], "ghosts": [], "corpses": []}


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
