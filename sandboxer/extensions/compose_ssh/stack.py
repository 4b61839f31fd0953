"""Where one sandbox's compose project lives on its host, and how its commands are run.

Secrets reach compose through the environment: each compose command runs as
``sh -c 'set -a; . ENV_FILE; set +a; exec compose ...'``, so a value is never
on a command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sandboxer.extensions import ssh_host as rh
from sandboxer.extensions.compose_ssh import containers as cts
from sandboxer.extensions.ssh_host import Target
from sandboxer.ssh import remote

__all__ = ["Plan", "Stack"]

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

    @property
    def directory(self) -> str:
        return self.target.workspace(self.sandbox_id)

    @property
    def compose_path(self) -> str:
        return f"{self.directory}/{self.compose_file}"

    @property
    def env_path(self) -> str:
        return f"{self.directory}/{rh.ENV_FILE}"

    @property
    def project(self) -> str:
        return cts.project_name(self.sandbox_id)

    def argv(self, *args: str) -> list[str]:
        argv = cts.compose_argv(self.target.config, self.project, self.compose_path, *args)
        if self.with_secrets:
            return ["sh", "-c", _WITH_SECRETS, "sh", self.env_path, *argv]
        return argv

    async def run(self, conn: asyncssh.SSHClientConnection, *args: str, timeout: float,
                  check: bool = True) -> remote.RemoteResult:
        return await remote.run(conn, self.argv(*args), env=self.target.config.env,
                                cwd=self.directory, timeout=timeout, check=check)


@dataclass(frozen=True)
class Plan:
    stack: Stack
    repo: Path
