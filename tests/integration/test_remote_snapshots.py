"""Snapshots of the SSH backends and restores across backends, against real sshd hosts and a
real container engine: ext.vm-packer <-> ext.local and ext.compose-ssh <-> ext.local, with the
files checked on arrival and the secrets file left out of every snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.client import SandboxerClient
from tests.integration.conftest import Service, reap_local, start_service
from tests.integration.remote_fixtures import (
    TWO_SERVICE_COMPOSE,
    ComposeEngine,
    SshHostInfo,
    SshHosts,
    write_hosts_file,
)
from tests.integration.test_snapshots import run_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "snapshot-secret-that-must-stay-behind"

PROFILES = {
    "profile.snap-vm": """\
id: profile.snap-vm
extension: ext.vm-packer
isolation: {level: policy}
placement: {host_input: vm}
setup:
  secret_refs: {API_TOKEN: env:SANDBOXER_TEST_SECRET}
inputs:
  vm: {required: true}
  repo: {type: directory, required: false}
""",
    "profile.snap-compose": """\
id: profile.snap-compose
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host1], fallback: [host2]}
setup:
  secret_refs: {API_TOKEN: env:SANDBOXER_TEST_SECRET}
inputs:
  repo: {type: directory, required: true}
  compose_file: {required: false}
""",
}


async def snapshot_service(
    home: Path, url: str, hosts: list[SshHostInfo], monkeypatch: pytest.MonkeyPatch
) -> Service:
    (home / "profiles").mkdir(exist_ok=True)
    for name, text in PROFILES.items():
        (home / "profiles" / f"{name}.yaml").write_text(text)
    write_hosts_file(home / "hosts.yaml", hosts)
    monkeypatch.setenv("SANDBOXER_TEST_SECRET", SECRET)
    return await start_service(home, url)


def make_repo(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "docker-compose.yml").write_text(TWO_SERVICE_COMPOSE)
    (directory / "README").write_text("the repo\n")
    return directory


async def restore_local(client: SandboxerClient, snapshot_id: str) -> str:
    ready = await client.restore(snapshot_id, profile="profile.local")
    sandbox_id: str = ready["sandbox_id"]
    got = await client.get(sandbox_id)
    assert got is not None
    assert (got["restored_from"], got["extension"]) == (snapshot_id, "ext.local")
    return sandbox_id


async def test_vm_workspace_restores_locally_and_back(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = await ssh_hosts(2)
    service = await snapshot_service(home, nats_server.url, hosts, monkeypatch)
    try:
        client = service.client
        repo = make_repo(tmp_path / "repo")
        vm = await client.create("profile.snap-vm", {"vm": "host1", "repo": str(repo)})
        code = await client.exec(
            vm["sandbox_id"], ["sh", "-c", "echo made on the vm > made.txt"], lambda _s, _d: None
        )
        assert code == 0
        assert (Path(vm["reachability"]["workspace"]) / ".sandboxer.env").exists()
        taken = await client.snapshot(vm["sandbox_id"], name="vm")
        assert (taken["extension"], taken["host"]) == ("ext.vm-packer", "host1")

        # ext.vm-packer -> ext.vm-packer (its own profile, another VM)
        same = await client.restore(taken["snapshot_id"], inputs={"vm": "host2"})
        same_workspace = Path(same["reachability"]["workspace"])
        assert (same_workspace / "made.txt").read_text() == "made on the vm\n"
        await client.destroy(same["sandbox_id"])

        # ext.vm-packer -> ext.local
        local = await restore_local(client, taken["snapshot_id"])
        assert await run_in(client, local, "cat /workspace/made.txt") == "made on the vm\n"
        assert await run_in(client, local, "cat /workspace/README") == "the repo\n"
        assert await run_in(client, local, "test ! -e /workspace/.sandboxer.env && echo gone")

        # ext.local -> ext.vm-packer (another VM)
        await run_in(client, local, "echo changed locally > /workspace/made.txt")
        from_local = await client.snapshot(local)
        back = await client.restore(
            from_local["snapshot_id"], profile="profile.snap-vm", inputs={"vm": "host2"}
        )
        workspace = Path(back["reachability"]["workspace"])
        assert back["reachability"]["host"] == "host2"
        assert (workspace / "made.txt").read_text() == "changed locally\n"
        assert (workspace / "README").read_text() == "the repo\n"
        # The restored VM sandbox got its own secrets file, from its own profile.
        assert (workspace / ".sandboxer.env").stat().st_mode & 0o777 == 0o600
        await client.destroy(back["sandbox_id"])
        await client.destroy(vm["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_compose_workspace_restores_locally_and_back(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = await ssh_hosts(2, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    service = await snapshot_service(home, nats_server.url, hosts, monkeypatch)
    try:
        client = service.client
        stack = await client.create(
            "profile.snap-compose", {"repo": str(make_repo(tmp_path / "r"))}
        )
        taken = await client.snapshot(stack["sandbox_id"])
        assert taken["extension"] == "ext.compose-ssh"

        # ext.compose-ssh -> ext.compose-ssh (its own profile)
        same = await client.restore(taken["snapshot_id"])
        assert (Path(same["reachability"]["directory"]) / "README").read_text() == "the repo\n"
        await client.destroy(same["sandbox_id"])

        # ext.compose-ssh -> ext.local
        local = await restore_local(client, taken["snapshot_id"])
        assert await run_in(client, local, "cat /workspace/README") == "the repo\n"
        assert "services:" in await run_in(client, local, "cat /workspace/docker-compose.yml")
        assert await run_in(client, local, "test ! -e /workspace/.sandboxer.env && echo gone")

        # ext.local -> ext.compose-ssh: the stack comes up from the restored files.
        await run_in(client, local, "echo written locally > /workspace/note.txt")
        from_local = await client.snapshot(local)
        back = await client.restore(from_local["snapshot_id"], profile="profile.snap-compose")
        directory = Path(back["reachability"]["directory"])
        assert (directory / "note.txt").read_text() == "written locally\n"
        assert sorted(back["reachability"]["services"]) == ["web", "worker"]
        await client.destroy(back["sandbox_id"])
        await client.destroy(stack["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
