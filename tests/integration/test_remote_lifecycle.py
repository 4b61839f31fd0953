"""Remote backends through the bus: real sshd hosts, a real container engine, placement.

The service runs in-process (every role) against a real nats-server; hosts
are sshd instances on loopback ports, so what a sandbox leaves on a "host"
can be checked on the local filesystem and with the engine's own CLI. The
compose lifecycle and drift tests run on both engines (dockerd with
docker-compose, podman with podman-compose).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.event_reader import read_events
from sandboxer.client import CommandFailed
from sandboxer.errors import InvalidInput
from tests.integration.conftest import Service, serving
from tests.integration.remote_fixtures import (
    ENGINES,
    ComposeEngine,
    SshHostInfo,
    SshHosts,
    make_repo,
    write_hosts_file,
    write_remote_home,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

both_engines = pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)

SECRET = "s3cr3t-value-that-must-never-be-logged"

BROKEN_COMPOSE = """\
services:
  web:
    image: localhost/does-not-exist:1
    command: ["sleep", "3600"]
    network_mode: none
"""

PROFILES = {
    "profile.test-compose": """\
id: profile.test-compose
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host1], fallback: [host2]}
setup:
  secret_refs: {API_TOKEN: env:SANDBOXER_TEST_SECRET}
inputs:
  repo: {required: true}
  compose_file: {required: false}
""",
    "profile.test-vm": """\
id: profile.test-vm
extension: ext.vm-packer
isolation: {level: policy}
network: {default: allow}
placement: {host_input: vm}
inputs:
  vm: {required: true}
  repo: {required: false}
""",
}


@contextlib.asynccontextmanager
async def remote_service(
    home: Path, url: str, hosts: list[SshHostInfo], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """Every role over ``hosts`` with this module's profiles and secret, until the ``with`` ends."""
    write_remote_home(home, hosts, PROFILES)
    monkeypatch.setenv("SANDBOXER_TEST_SECRET", SECRET)
    async with serving(home, url) as service:
        yield service


def containers(engine: ComposeEngine, project: str) -> list[str]:
    out = engine.cli(
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--format",
        "{{.Names}}",
    ).stdout
    return sorted(out.split())


async def all_events(service: Service) -> list[bytes]:
    return [data async for _seq, _subject, data, _pending in read_events(service.client.js)]


@pytest.fixture(name="compose_service")
async def compose_service_fixture(
    nats_server: Any, home: Path, compose_hosts: list[SshHostInfo], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """The service over ``compose_hosts`` (remote_fixtures.py), both hosts up. Named
    ``*_fixture`` so that a module may import it (as test_remote_pause.py does)."""
    async with remote_service(home, nats_server.url, compose_hosts, monkeypatch) as service:
        yield service


@both_engines
async def test_compose_lifecycle_falls_back_and_keeps_secrets_out_of_the_log(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host1 = compose_hosts[0]
    await host1.server.stop()  # the preferred host is down
    async with remote_service(home, nats_server.url, compose_hosts, monkeypatch) as service:
        client = service.client
        seen: list[dict[str, Any]] = []
        ready = await client.create(
            "profile.test-compose",
            {"repo": str(make_repo(tmp_path / "repo"))},
            on_event=seen.append,
        )
        routed = next(e for e in seen if e["type"] == "routed")
        assert routed["host"] == "host2"
        assert "host1 unhealthy" in routed["reason"]
        sandbox_id = ready["sandbox_id"]
        descriptor = ready["reachability"]
        assert descriptor["host"] == "host2"
        assert sorted(descriptor["services"]) == ["web", "worker"]
        project = descriptor["compose_project"]
        assert len(containers(compose_engine, project)) == 2
        directory = Path(descriptor["directory"])
        assert (directory / "README").read_text() == "the repo\n"
        secrets_file = Path(descriptor["secrets_file"])  # beside the directory, not in it
        assert secrets_file == directory.parent / f"{directory.name}.env"
        assert secrets_file.stat().st_mode & 0o777 == 0o600

        out: list[bytes] = []

        async def collect(_stream: str, data: bytes) -> None:
            out.append(data)

        # exec runs in a service's container (the first by default), not on the host.
        in_container = ["sh", "-c", 'test ! -e /README && echo "$0"; exit 6', "in-container"]
        assert await client.exec(sandbox_id, in_container, collect) == 6
        assert await client.exec(sandbox_id, in_container, collect, service="worker") == 6
        assert b"".join(out) == b"in-container\nin-container\n"
        with pytest.raises(InvalidInput, match="no service 'nope'"):
            await client.exec(sandbox_id, ["true"], collect, service="nope")

        await client.destroy(sandbox_id)
        assert containers(compose_engine, project) == []
        assert not directory.exists()
        assert not any(SECRET.encode() in data for data in await all_events(service))


async def test_failing_compose_reports_output_and_leaves_nothing(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    compose_service: Service,
) -> None:
    repo = make_repo(tmp_path / "broken", BROKEN_COMPOSE)
    with pytest.raises(CommandFailed) as caught:
        await compose_service.client.create("profile.test-compose", {"repo": str(repo)})
    reason = caught.value.event["reason"]
    assert "does-not-exist" in reason  # the tail of compose's own output
    sandbox_id = caught.value.event["sandbox_id"]
    workspaces = Path(compose_hosts[0].host.workspace_root)
    assert not (workspaces / f"sbx-{sandbox_id}").exists()
    assert containers(compose_engine, f"sbx-{sandbox_id}") == []
    assert not any(SECRET.encode() in data for data in await all_events(compose_service))


async def test_sshd_killed_mid_provisioning_then_reap_cleans_the_host(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    compose_service: Service,
) -> None:
    host1 = compose_hosts[0]
    client = compose_service.client
    created = await client.create(
        "profile.test-compose",
        {"repo": str(make_repo(tmp_path / "repo"))},
        host="host1",
        wait=False,
    )
    sandbox_id = created["sandbox_id"]
    directory = Path(host1.host.workspace_root) / f"sbx-{sandbox_id}"
    async with asyncio.timeout(30):
        while not directory.exists():
            await asyncio.sleep(0.01)
    await host1.server.stop()  # mid-provisioning: sshd and its sessions die
    async with asyncio.timeout(60):
        while True:
            sandbox = await client.get(sandbox_id)
            if sandbox and sandbox["status"] in {"failed", "ready"}:
                break
            await asyncio.sleep(0.1)
    await host1.server.start()
    if sandbox["status"] == "ready":  # the provisioning got through before sshd died
        await client.destroy(sandbox_id)
    replies = await client.inventory("reap", "ext.compose-ssh", {"apply": True})
    assert all(reply["ok"] for reply in replies), replies
    stale = await client.inventory("stale", "ext.compose-ssh", {"host": "host1"})
    assert stale[0]["hosts"][0]["orphans"] == []
    assert not directory.exists()
    assert containers(compose_engine, f"sbx-{sandbox_id}") == []


async def test_reap_judges_nothing_on_a_host_that_does_not_answer(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_service: Service,
) -> None:
    """A host down for a moment is not an empty host: reap-stale took every sandbox the log
    placed there for a ghost, marked it failed, and tore it down once the host was back."""
    host1 = compose_hosts[0]
    client = compose_service.client
    ready = await client.create(
        "profile.test-compose", {"repo": str(make_repo(tmp_path / "repo"))}, host="host1"
    )
    sandbox_id = ready["sandbox_id"]
    await host1.server.stop()
    [reply] = await client.inventory("reap", "ext.compose-ssh", {"apply": True})
    assert reply["ok"], reply
    by_host = {h["host"]: h for h in reply["hosts"]}
    assert "unreachable" in by_host["host1"]
    assert by_host["host1"].get("marked_failed", []) == []
    await host1.server.start()
    assert (await client.get(sandbox_id) or {})["status"] == "ready"
    [stale] = await client.inventory("stale", "ext.compose-ssh", {"host": "host1"})
    assert stale["hosts"][0]["ghosts"] == []
    await client.destroy(sandbox_id)


async def test_wrong_host_key_is_refused(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host1, host2 = await ssh_hosts(2)
    async with remote_service(home, nats_server.url, [host1], monkeypatch) as service:
        write_hosts_file(
            home / "hosts.yaml", [host1], known_hosts=None, host_key=host2.host_public_key
        )  # another machine's key
        with pytest.raises(CommandFailed) as caught:
            await service.client.create("profile.test-vm", {"vm": "host1"})
        assert caught.value.event["code"] == "no_host"
        assert "host key" in caught.value.event["reason"]


async def test_vm_attach_lifecycle_through_the_bus(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = await ssh_hosts(2)
    async with remote_service(home, nats_server.url, hosts, monkeypatch) as service:
        client = service.client
        repo = make_repo(tmp_path / "repo")
        ready = await client.create("profile.test-vm", {"vm": "host2", "repo": str(repo)})
        descriptor = ready["reachability"]
        assert descriptor["host"] == "host2"
        workspace = Path(descriptor["workspace"])
        assert (workspace / "README").read_text() == "the repo\n"
        code = await client.exec(
            ready["sandbox_id"], ["sh", "-c", "test -f README; exit 4"], lambda _s, _d: None
        )
        assert code == 4
        await client.destroy(ready["sandbox_id"])
        assert not workspace.exists()
        assert hosts[1].server.running  # the VM stays


async def test_canary_records_telemetry_before_and_after(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_service: Service,
) -> None:
    client = compose_service.client
    ready = await client.create(
        "profile.sandbox-canary", {"repo": str(make_repo(tmp_path / "repo"))}, host="host2"
    )
    inspected = [event async for _seq, event in client.events() if event["type"] == "inspected"]
    assert [e["host"] for e in inspected] == ["host2", "host2"]
    before, after = (e["report"] for e in inspected)
    assert before["memory_total_mb"] > 0
    assert len(after["compose_projects"]) == len(before["compose_projects"]) + 1
    await client.destroy(ready["sandbox_id"])


async def test_planted_orphans_are_found_and_reaped(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    compose_service: Service,
) -> None:
    from sandboxer.config.catalog import Catalog
    from sandboxer.config.settings import Settings
    from sandboxer.extensions.base import ProvisionRequest
    from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
    from sandboxer.extensions.vm_packer.backend import VmPackerExtension

    client = compose_service.client
    settings = Settings(home=home, nats_urls=(nats_server.url,), nats_server=None, ack_wait=5)
    catalog = Catalog.load(home)
    repo = make_repo(tmp_path / "repo")
    compose = ComposeSshExtension.from_settings(settings)
    vm = VmPackerExtension.from_settings(settings)
    # Made behind the log's back, with sandboxer's own naming: orphans.
    await compose.provision(
        ProvisionRequest(
            sandbox_id="plantedcompose1",
            profile=catalog.profile("profile.test-compose"),
            inputs={"repo": str(repo)},
            host="host1",
        )
    )
    await vm.provision(
        ProvisionRequest(
            sandbox_id="plantedvm00001",
            profile=catalog.profile("profile.test-vm"),
            inputs={"vm": "host1"},
            host="host1",
        )
    )
    healthy = (await client.create("profile.test-compose", {"repo": str(repo)}, host="host1"))[
        "sandbox_id"
    ]

    found = {}
    for ext_id in ("ext.compose-ssh", "ext.vm-packer"):
        [reply] = await client.inventory("stale", ext_id, {"host": "host1"})
        found[ext_id] = [o["sandbox_id"] for o in reply["hosts"][0]["orphans"]]
    assert found == {
        "ext.compose-ssh": ["plantedcompose1"],
        "ext.vm-packer": ["plantedvm00001"],
    }

    for ext_id in ("ext.compose-ssh", "ext.vm-packer"):
        [reply] = await client.inventory("reap", ext_id, {"apply": True, "host": "host1"})
        assert reply["hosts"][0]["removed"] == found[ext_id]
    workspaces = Path(compose_hosts[0].host.workspace_root)
    left = sorted(p.name for p in workspaces.iterdir())
    # The live one's lock file stays with it; the reaped ones' went with them.
    assert left == [
        f"sbx-{healthy}",
        f"sbx-{healthy}.env",
        f"sbx-{healthy}.json",
        f"sbx-{healthy}.lock",
    ]
    assert containers(compose_engine, "sbx-plantedcompose1") == []
    assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]
    await client.destroy(healthy)


@both_engines
async def test_dead_stacks_and_deleted_workspaces_are_corpses_that_reap_clears(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    compose_service: Service,
) -> None:
    client = compose_service.client
    repo = make_repo(tmp_path / "repo")
    removed = (await client.create("profile.test-compose", {"repo": str(repo)}, host="host1"))[
        "sandbox_id"
    ]
    exited = (await client.create("profile.test-compose", {"repo": str(repo)}, host="host1"))[
        "sandbox_id"
    ]
    healthy = (await client.create("profile.test-compose", {"repo": str(repo)}, host="host1"))[
        "sandbox_id"
    ]
    vm_ready = await client.create("profile.test-vm", {"vm": "host1"})
    vm_gone = vm_ready["sandbox_id"]
    # Behind sandboxer's back: containers removed, containers stopped, a workspace deleted.
    compose_engine.cli("rm", "-f", *containers(compose_engine, f"sbx-{removed}"))
    compose_engine.cli("stop", "-t", "0", *containers(compose_engine, f"sbx-{exited}"))
    shutil.rmtree(vm_ready["reachability"]["workspace"])

    corpses = {}
    for ext_id in ("ext.compose-ssh", "ext.vm-packer"):
        [reply] = await client.inventory("stale", ext_id, {"host": "host1"})
        drift = reply["hosts"][0]
        assert (drift["orphans"], drift["ghosts"]) == ([], [])
        corpses.update({c["sandbox_id"]: c["reason"] for c in drift["corpses"]})
    assert sorted(corpses) == sorted([removed, exited, vm_gone])
    assert "has no containers (they were removed) on host1" in corpses[removed]
    assert "no container of its compose project" in corpses[exited]
    assert "workspace" in corpses[vm_gone]
    assert corpses[vm_gone].endswith("was deleted on host1")

    for ext_id in ("ext.compose-ssh", "ext.vm-packer"):
        [reply] = await client.inventory("reap", ext_id, {"apply": True, "host": "host1"})
        assert reply["hosts"][0]["removed"] == reply["hosts"][0]["marked_failed"]
    for sandbox_id in (removed, exited, vm_gone):
        state = await client.get(sandbox_id)
        assert state is not None
        assert state["status"] == "failed"
        assert corpses[sandbox_id] in state["failure"]
    workspaces = Path(compose_hosts[0].host.workspace_root)
    assert sorted(p.name for p in workspaces.iterdir()) == [
        f"sbx-{healthy}",
        f"sbx-{healthy}.env",
        f"sbx-{healthy}.json",
        f"sbx-{healthy}.lock",  # the live one's lock stays with it
    ]
    assert containers(compose_engine, f"sbx-{exited}") == []
    assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]
    await client.destroy(healthy)
