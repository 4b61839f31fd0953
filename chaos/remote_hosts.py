"""SSH hosts for the SSH backends (ext.compose-ssh, ext.vm-packer): real ``sshd`` processes on
loopback whose sessions reach a private ``dockerd`` (tests/integration/remote_fixtures.py,
the same hosts the suite's tests use), and what they hold of our sandboxes.

A scenario runs ``async with RemoteHosts(workdir, home) as hosts:``: it writes the home's
``hosts.yaml``, a compose profile and a VM profile over the two hosts, and a repository for
the compose creates, under ``hosts.repos`` (which the workers must accept as an input root).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Self

import pytest

from chaos.checks import Held
from sandboxer.extensions.compose_ssh.containers import PROJECT_LABEL, sandbox_of_project
from sandboxer.extensions.ssh_targets import DIR_PREFIX
from sandboxer.ids import is_valid_sandbox_id
from tests.conftest import require_tool
from tests.integration.remote_fixtures import (
    TWO_SERVICE_COMPOSE,
    DockerEngine,
    SshHostInfo,
    SshHosts,
    write_remote_home,
)

__all__ = ["COMPOSE_PROFILE", "SERVICES", "VM_PROFILE", "RemoteHosts"]

COMPOSE_PROFILE = "profile.chaos-compose"
VM_PROFILE = "profile.chaos-vm"
SERVICES = 2
"""Containers of one compose sandbox: the repository's compose file has two services."""

PROFILES = {
    COMPOSE_PROFILE: f"""\
id: {COMPOSE_PROFILE}
extension: ext.compose-ssh
isolation: {{level: container}}
placement: {{prefer: [host1, host2]}}
inputs:
  repo: {{required: true}}
""",
    VM_PROFILE: f"""\
id: {VM_PROFILE}
extension: ext.vm-packer
isolation: {{level: policy}}
network: {{default: allow}}
placement: {{prefer: [host2, host1]}}
""",
}


class RemoteHosts:
    """Two loopback SSH hosts and the docker engine their sessions reach."""

    def __init__(self, workdir: Path, home: Path) -> None:
        self.directory = workdir / "hosts"
        self.home = home
        self.repos = workdir / "repos"
        self.repo = self.repos / "two-services"
        self.engine: DockerEngine | None = None
        self.hosts: list[SshHostInfo] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            try:
                sshd = require_tool("sshd", "openssh-server")
                self.engine = await asyncio.to_thread(DockerEngine.start)
            except pytest.fail.Exception as missing:  # the fixtures': a tool, and its install
                raise RuntimeError(str(missing)) from None  # a scenario's failure, not the run's
            stack.push_async_callback(asyncio.to_thread, self.engine.stop)
            ssh = SshHosts(self.directory, sshd)
            stack.push_async_callback(ssh.close)
            self.hosts = await ssh(2, env=self.engine.env, compose_cmd=self.engine.compose_cmd)
            write_remote_home(self.home, self.hosts, PROFILES)
            self.repo.mkdir(parents=True)
            (self.repo / "docker-compose.yml").write_text(TWO_SERVICE_COMPOSE)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def held(self) -> list[Held]:
        """The containers of sandboxer's compose projects on the engine, and the workspace
        directories and ownership markers on the hosts (``<workspace_root>/sbx-<id>`` and
        ``sbx-<id>.json``), read from the engine and the file system themselves."""
        assert self.engine is not None
        listed = await asyncio.to_thread(
            self.engine.docker,
            "ps",
            "-a",
            "--filter",
            f"label={PROJECT_LABEL}",
            "--format",
            f'{{{{.Label "{PROJECT_LABEL}"}}}}',
        )
        containers: Counter[str] = Counter()
        for project in listed.stdout.split():
            sandbox_id = sandbox_of_project(project)
            if sandbox_id is not None:
                containers[sandbox_id] += 1
        directories, markers = await asyncio.to_thread(self._workspaces)
        both = frozenset({"ext.compose-ssh", "ext.vm-packer"})
        return [
            Held(
                "containers on the docker engine",
                frozenset({"ext.compose-ssh"}),
                containers,
                SERVICES,
            ),
            Held("workspace directories on the hosts", both, directories),
            Held("ownership markers on the hosts", both, markers),
        ]

    def _workspaces(self) -> tuple[Counter[str], Counter[str]]:
        """Per sandbox, its workspace directories and its ownership markers on the hosts."""
        directories: Counter[str] = Counter()
        markers: Counter[str] = Counter()
        for host in self.hosts:
            root = Path(host.host.workspace_root)
            for entry in root.iterdir() if root.is_dir() else ():
                name = entry.name.removeprefix(DIR_PREFIX)
                if entry.is_dir() and is_valid_sandbox_id(name):
                    directories[name] += 1
                elif name.endswith(".json") and is_valid_sandbox_id(name.removesuffix(".json")):
                    markers[name.removesuffix(".json")] += 1
        return directories, markers
