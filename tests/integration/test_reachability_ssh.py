"""A plain OpenSSH client gets into a sandbox using only the ready event's ``reachability.access``.

The consumer's side is played by ``ssh``, ``ssh-keyscan`` and ``ssh-keygen``
run as subprocesses: the host, port and user come from the descriptor, and the
host key is trusted only when its fingerprint is the descriptor's
(docs/protocol.md#reachability). The consumer's own credential is the key its
account on the host accepts (here the test hosts' client key).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import serving
from tests.integration.remote_fixtures import (
    TWO_SERVICE_COMPOSE,
    ComposeEngine,
    SshHosts,
    write_remote_home,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILES = {
    "profile.reach-vm": """\
id: profile.reach-vm
extension: ext.vm-packer
isolation: {level: policy}
network: {default: allow}
placement: {host_input: vm}
inputs:
  vm: {required: true}
  repo: {required: false}
""",
    "profile.reach-compose": """\
id: profile.reach-compose
extension: ext.compose-ssh
isolation: {level: container}
inputs:
  repo: {required: true}
""",
}


def known_hosts_from(access: dict[str, Any], path: Path) -> Path:
    """A known_hosts file holding only the host key whose fingerprint the descriptor gives:
    ssh-keyscan reads the keys the endpoint offers, ssh-keygen -lf fingerprints each."""
    scanned = subprocess.run(
        ["ssh-keyscan", "-p", str(access["port"]), access["host"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    trusted = []
    for line in scanned.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        printed = subprocess.run(
            ["ssh-keygen", "-lf", "-"],
            input=line + "\n",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if printed[1] == access["host_key_fingerprint"]:
            trusted.append(line)
    assert trusted, f"no key offered by the endpoint has fingerprint {access}"
    path.write_text("\n".join(trusted) + "\n")
    return path


def plain_ssh(
    access: dict[str, Any], known_hosts: Path, key_file: Path, remote: str
) -> subprocess.CompletedProcess[str]:
    """OpenSSH with nothing from this machine's SSH setup: only the descriptor's endpoint,
    the given known_hosts (strictly checked) and the consumer's own key."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(key_file),
            "-p",
            str(access["port"]),
            f"{access['user']}@{access['host']}",
            remote,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_plain_ssh_reaches_a_vm_packer_sandbox_from_the_descriptor_alone(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [vm] = await ssh_hosts(1)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("reached\n")
    write_remote_home(
        home, [vm], PROFILES, tunnel_ref="tunnels/host1", ssh_principal="sandbox-users"
    )
    async with serving(home, nats_server.url) as service:
        ready = await service.client.create("profile.reach-vm", {"vm": "host1", "repo": str(repo)})
        access = ready["reachability"]["access"]
        assert access["kind"] == "ssh"
        assert access["host_key_verified"] is True
        assert access["host_key_fingerprint"].startswith("SHA256:")
        assert (access["tunnel_ref"], access["ssh_principal"]) == (
            "tunnels/host1",
            "sandbox-users",
        )

        # Without the descriptor's key in known_hosts, strict checking refuses the host:
        # the check below is a real one.
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        refused = await asyncio.to_thread(plain_ssh, access, empty, vm.key_file, "true")
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr

        known_hosts = known_hosts_from(access, tmp_path / "known_hosts")
        got_in = await asyncio.to_thread(
            plain_ssh, access, known_hosts, vm.key_file, f"cd {access['workdir']} && cat README"
        )
        assert got_in.returncode == 0, got_in.stderr
        assert got_in.stdout == "reached\n"
        await service.client.destroy(ready["sandbox_id"])


async def test_plain_ssh_enters_a_compose_service_with_the_descriptors_enter(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [host] = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "docker-compose.yml").write_text(TWO_SERVICE_COMPOSE)
    write_remote_home(home, [host], PROFILES)
    async with serving(home, nats_server.url) as service:
        ready = await service.client.create("profile.reach-compose", {"repo": str(repo)})
        access = ready["reachability"]["access"]
        assert access["kind"] == "ssh"
        assert "tunnel_ref" not in access  # the hosts file names none
        known_hosts = known_hosts_from(access, tmp_path / "known_hosts")
        command = access["enter"].replace("SERVICE CMD", "worker echo inside-worker")
        got_in = await asyncio.to_thread(plain_ssh, access, known_hosts, host.key_file, command)
        assert got_in.returncode == 0, got_in.stderr
        assert got_in.stdout.strip() == "inside-worker"
        await service.client.destroy(ready["sandbox_id"])
