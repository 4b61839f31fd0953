"""Where one sandbox's compose project lives on its host, and how its commands are run.

Secrets reach compose through the environment: each compose command runs as
``sh -c 'set -a; . <workspace_root>/sbx-<id>.env; set +a; exec compose ...'``, so a
value is never on a command line. The file sits beside the sandbox's directory, not
in it: a service that mounts the directory could write into it, and the shell on the
host would run what it wrote.

A sandbox whose network policy is deny gets a second compose file,
:data:`NO_NETWORK_FILE`, giving every service ``network_mode: none``; every
compose command of the stack names both files (docs/network.md). One whose
policy is an allowlist gets :data:`~.egress_plan.EGRESS_OVERRIDE_FILE` instead,
putting every service on the egress network (:mod:`.egress_plan`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from sandboxer.extensions.compose_ssh import containers
from sandboxer.extensions.compose_ssh.compose_file import ComposeFileError, check_compose_file
from sandboxer.extensions.compose_ssh.egress_plan import EGRESS_OVERRIDE_FILE
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.extensions.ssh_workspace import Probe
from sandboxer.ssh import Connection, remote

__all__ = ["NO_NETWORK_FILE", "Plan", "Stack", "no_network_override"]

NO_NETWORK_FILE = ".sandboxer.no-network.yaml"
"""Beside the secrets file in the sandbox's directory: the compose override of a deny policy."""

# Exports every NAME='value' of the secrets file ($1) into the environment of
# the command that follows: the values never appear on a command line.
_WITH_SECRETS = 'set -a; . "$1" || exit 125; set +a; shift; exec "$@"'


@dataclass(frozen=True)
class Stack:
    """Where one sandbox's compose project lives on its host."""

    target: Target
    sandbox_id: str
    compose_file: str
    """Relative to :attr:`directory`."""
    with_secrets: bool
    no_network: bool = False
    """The policy is deny: :data:`NO_NETWORK_FILE` overrides every service's network."""
    egress: bool = False
    """The policy is an allowlist: :data:`EGRESS_OVERRIDE_FILE` puts every service on the
    egress network."""

    @classmethod
    def recorded(cls, item: Target, sandbox_id: str, found: Probe) -> Stack | None:
        """The stack the sandbox's marker records, if its directory and a safe compose file
        are still there (the marker lives on the host, so it is checked again)."""
        compose_file = (found.marker or {}).get("compose_file")
        if not isinstance(compose_file, str) or not found.directory:
            return None
        try:
            check_compose_file(compose_file)
        except ComposeFileError:
            return None
        network = (found.marker or {}).get("network")
        return cls(
            item,
            sandbox_id,
            compose_file,
            with_secrets=found.secrets_file,
            no_network=network == "none",
            egress=network == "allowlist",
        )

    @property
    def directory(self) -> str:
        return self.target.workspace(self.sandbox_id)

    @property
    def compose_path(self) -> str:
        return f"{self.directory}/{self.compose_file}"

    @property
    def env_path(self) -> str:
        """Beside the directory, never in it (``Target.secrets``)."""
        return self.target.secrets(self.sandbox_id)

    @property
    def project(self) -> str:
        return containers.project_name(self.sandbox_id)

    @property
    def no_network_path(self) -> str:
        return f"{self.directory}/{NO_NETWORK_FILE}"

    @property
    def egress_path(self) -> str:
        return f"{self.directory}/{EGRESS_OVERRIDE_FILE}"

    def without_override(self) -> Stack:
        """The stack as its own compose file alone describes it (to list its services before
        the override that names them exists)."""
        return replace(self, no_network=False, egress=False)

    def argv(self, *args: str) -> list[str]:
        if self.no_network:
            args = ("-f", self.no_network_path, *args)
        elif self.egress:
            args = ("-f", self.egress_path, *args)
        argv = containers.compose_argv(self.target.config, self.project, self.compose_path, *args)
        if self.with_secrets:
            return ["sh", "-c", _WITH_SECRETS, "sh", self.env_path, *argv]
        return argv

    async def run(
        self, conn: Connection, *args: str, timeout: float, check: bool = True
    ) -> remote.RemoteResult:
        return await remote.run(
            conn,
            self.argv(*args),
            env=self.target.config.env,
            cwd=self.directory,
            timeout=timeout,
            check=check,
        )

    async def services(self, conn: Connection) -> list[str]:
        """The compose file's services, in the order compose lists them."""
        result = await self.run(conn, "config", "--services", timeout=SHORT_TIMEOUT)
        names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Plan:
    stack: Stack
    repo: Path
    volume_keys: list[str] = field(default_factory=list)
    """Named volumes the repo holds contents for (``.sandboxer/volumes/<key>/``)."""


def no_network_override(services: list[str]) -> str:
    """A compose file (JSON is YAML) that cuts every service off the network: compose merges
    it over the project's own file, so ``network_mode: none`` wins over what that says."""
    document = {"services": {name: {"network_mode": "none"} for name in services}}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
