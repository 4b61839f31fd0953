"""The hosts file: the machines remote backends place sandboxes on.

``$SANDBOXER_HOME/hosts.yaml`` (or the path in ``SANDBOXER_HOSTS``)::

    hosts:
      coulombcore:
        address: 127.0.0.1
        port: 22
        user: root
        key_file: ~/.ssh/id_ed25519
        known_hosts: ~/.ssh/known_hosts      # or host_key: "ssh-ed25519 AAAA..."
        compose_cmd: docker compose
        env: {DOCKER_HOST: "unix:///run/docker.sock"}
        workspace_root: /var/tmp/sandboxer
        labels: {region: eu}
        tunnel_ref: tunnels/coulombcore     # optional, told to clients in ready's access
        ssh_principal: sandbox-users         # optional, likewise

Every value that reaches a remote shell is validated here, so a hosts file
cannot smuggle shell syntax into a command.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandboxer.config.settings import Settings
from sandboxer.errors import SettingError
from sandboxer.ids import HOST_NAME

if TYPE_CHECKING:
    from sandboxer.config.catalog import LastParse

__all__ = ["HOSTS_DOC", "HostConfig", "HostsFile", "hosts_path", "load_hosts"]

HOSTS_DOC = "docs/hosts.md"
"""Where a person learns to write the hosts file; errors about it point there."""

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class HostConfig(BaseModel):
    """One SSH-reachable host."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    address: str = Field(pattern=r"^[A-Za-z0-9.:-]+$", description="name or IP address")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    key_file: str | None = None
    known_hosts: str | None = None
    host_key: str | None = Field(default=None, description='"ssh-ed25519 AAAA..." for this host')
    insecure_accept_any_host_key: bool = Field(
        default=False,
        description="DANGEROUS: do not check the host's key (anyone on the path can impersonate "
        "it). For throw-away lab hosts only.",
    )
    compose_cmd: Literal["docker compose", "docker-compose", "podman-compose"] = "docker compose"
    env: dict[str, str] = Field(default_factory=dict, description="set for every remote command")
    workspace_root: str = "/var/tmp/sandboxer"
    labels: dict[str, str] = Field(default_factory=dict)
    max_sandboxes: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="sandboxes this host may hold at once, for routing's capacity (none: no limit)",
    )

    tunnel_ref: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$",
        description="how an SSH tunnel service names this host; passed on to clients in the "
        "ready event's reachability.access, never used by sandboxer itself",
    )
    ssh_principal: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$",
        description="the principal an SSH CA issues user certificates for on this host; passed "
        "on to clients in reachability.access, never used by sandboxer itself",
    )

    @field_validator("workspace_root")
    @classmethod
    def _safe_root(cls, value: str) -> str:
        if not _SAFE_PATH.fullmatch(value) or ".." in value.split("/") or value == "/":
            raise ValueError(
                f"{value!r} must be an absolute path of letters, digits, '.', '_', '-' and '/' "
                "(not '/' itself, no '..')"
            )
        return value.rstrip("/")

    @field_validator("env")
    @classmethod
    def _safe_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env name {name!r} must be letters, digits and '_'")
            if "\x00" in value or "\n" in value:
                raise ValueError(f"env {name}: value must not contain NUL or newlines")
        return env

    @model_validator(mode="after")
    def _host_key_source(self) -> HostConfig:
        if not (self.known_hosts or self.host_key or self.insecure_accept_any_host_key):
            raise ValueError(
                "set known_hosts (a file) or host_key (the host's public key) so the host can "
                "be verified; insecure_accept_any_host_key: true turns checking off"
            )
        return self

    def key_path(self) -> Path | None:
        return Path(self.key_file).expanduser() if self.key_file else None

    def known_hosts_path(self) -> Path | None:
        return Path(self.known_hosts).expanduser() if self.known_hosts else None


class HostsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hosts: dict[str, HostConfig] = Field(default_factory=dict)

    @field_validator("hosts")
    @classmethod
    def _names(cls, hosts: dict[str, HostConfig]) -> dict[str, HostConfig]:
        for name in hosts:
            if not re.fullmatch(HOST_NAME, name):
                raise ValueError(f"host name {name!r}: use lowercase letters, digits and '-'")
        return hosts


def hosts_path(settings: Settings) -> Path:
    explicit = os.environ.get("SANDBOXER_HOSTS")
    return Path(explicit).expanduser() if explicit else settings.home / "hosts.yaml"


def load_hosts(settings: Settings) -> dict[str, HostConfig]:
    """Every configured host by name; no file at the default place means no hosts.

    A file named by ``SANDBOXER_HOSTS`` must exist: a path someone set on
    purpose and mistyped should not quietly mean "no hosts".
    """
    path = hosts_path(settings)
    if not path.exists():
        explicit = os.environ.get("SANDBOXER_HOSTS")
        if explicit:
            raise SettingError(
                "SANDBOXER_HOSTS",
                explicit,
                f"the hosts file {path} does not exist; create it (the format is in "
                f"{HOSTS_DOC}) or unset SANDBOXER_HOSTS to use {settings.home / 'hosts.yaml'}",
            )
        return {}
    return dict(_hosts_file().load(path).hosts)


@functools.cache
def _hosts_file() -> LastParse[HostsFile]:
    """The hosts file as last parsed: asked for on every create (and every refused one), it
    is parsed again only when it changed. Made on first use: config.catalog loads the
    profiles' models, which a bus client's commands import this module without."""
    from sandboxer.config.catalog import LastParse

    return LastParse(HostsFile)
