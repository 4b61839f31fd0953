"""Compose command lines and container states: pure functions, no I/O.

Readiness and listing read containers through the engine rather than through
``compose ps``: docker-compose 1.29 has no machine-readable ``ps`` output and
podman-compose's differs, but ``docker|podman ps -aq --filter label=...``
and ``docker|podman inspect`` (JSON) answer the same way for every compose
implementation, which all label their containers
``com.docker.compose.project`` / ``com.docker.compose.service``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandboxer.config.hosts import HostConfig
from sandboxer.ids import is_valid_sandbox_id

__all__ = [
    "PROJECT_LABEL",
    "PROJECT_PREFIX",
    "SERVICE_LABEL",
    "WORKING_DIR_LABEL",
    "Assessment",
    "Container",
    "assess",
    "compose_argv",
    "engine",
    "fingerprint",
    "parse_inspect",
    "project_name",
    "sandbox_of_project",
]

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
PROJECT_PREFIX = "sbx-"
"""Every sandboxer-owned compose project is named ``sbx-<sandbox id>``."""

FAILED_STATES = frozenset({"exited", "dead", "stopped", "removing"})


def project_name(sandbox_id: str) -> str:
    return f"{PROJECT_PREFIX}{sandbox_id}"


def sandbox_of_project(project: str) -> str | None:
    """The sandbox id of a sandboxer-owned project name, else ``None``."""
    if not project.startswith(PROJECT_PREFIX):
        return None
    sandbox_id = project.removeprefix(PROJECT_PREFIX)
    return sandbox_id if is_valid_sandbox_id(sandbox_id) else None


def engine(host: HostConfig) -> str:
    """The container CLI that goes with the host's compose command."""
    return "podman" if host.compose_cmd == "podman-compose" else "docker"


def compose_argv(host: HostConfig, project: str, compose_file: str, *args: str) -> list[str]:
    """``COMPOSE -p PROJECT -f FILE ARGS...`` as separate words (never one shell string)."""
    return [*host.compose_cmd.split(), "-p", project, "-f", compose_file, *args]


@dataclass(frozen=True)
class Container:
    """One container of a compose project, as ``inspect`` describes it."""

    id: str
    name: str
    project: str
    service: str
    status: str
    exit_code: int = 0
    restart_count: int = 0
    started_at: str = ""
    working_dir: str = ""
    volumes: tuple[tuple[str, str], ...] = ()
    """The named volumes it mounts, as (volume name, path in the container)."""
    read_only: tuple[str, ...] = ()
    """The paths among ``volumes`` it mounts read-only (a seed cannot copy in through them)."""

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATES

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id[:12],
            "name": self.name,
            "project": self.project,
            "service": self.service,
            "state": self.status,
        }


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _volume_mounts(mounts: object) -> tuple[tuple[str, str], ...]:
    """(name, destination) of each named volume in an ``inspect`` ``Mounts`` list."""
    if not isinstance(mounts, list):
        return ()
    found = []
    for item in mounts:
        mount = _dict(item)
        name, destination = mount.get("Name"), mount.get("Destination")
        if mount.get("Type") == "volume" and isinstance(name, str) and isinstance(destination, str):
            found.append((name, destination))
    return tuple(found)


def _read_only(mounts: object) -> tuple[str, ...]:
    """The destinations of the named volumes an ``inspect`` ``Mounts`` list mounts read-only."""
    if not isinstance(mounts, list):
        return ()
    return tuple(
        str(mount.get("Destination"))
        for mount in map(_dict, mounts)
        if mount.get("Type") == "volume" and mount.get("RW") is False
    )


def parse_inspect(text: str) -> list[Container]:
    """The containers in ``docker inspect`` / ``podman inspect`` JSON output.

    Unparseable text (an engine that printed only an error) yields no containers.
    """
    try:
        items = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    found = []
    for item in items:
        if not isinstance(item, dict):
            continue
        state = _dict(item.get("State"))
        labels = _dict(_dict(item.get("Config")).get("Labels"))
        status = str(state.get("Status") or ("running" if state.get("Running") else "unknown"))
        found.append(
            Container(
                id=str(item.get("Id") or item.get("ID") or ""),
                name=str(item.get("Name") or "").lstrip("/"),
                project=str(labels.get(PROJECT_LABEL) or ""),
                service=str(labels.get(SERVICE_LABEL) or ""),
                status=status.lower(),
                exit_code=_int(state.get("ExitCode")),
                restart_count=_int(item.get("RestartCount")),
                started_at=str(state.get("StartedAt") or ""),
                working_dir=str(labels.get(WORKING_DIR_LABEL) or ""),
                volumes=_volume_mounts(item.get("Mounts")),
                read_only=_read_only(item.get("Mounts")),
            )
        )
    return found


@dataclass(frozen=True)
class Assessment:
    """Whether a project's containers are all up, and what is wrong when they are not."""

    ready: bool
    services: list[str]
    failed: list[Container] = field(default_factory=list)
    waiting: list[Container] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def fingerprint(containers: Iterable[Container]) -> list[tuple[str, str, int]]:
    """What changes when a container restarts: compared across two looks at a project."""
    return sorted((c.id, c.started_at, c.restart_count) for c in containers)


def assess(containers: Sequence[Container], expected: Sequence[str]) -> Assessment:
    """All of a project's containers running (and at least one) means ready.

    ``expected`` are the services compose reports for the file; one without
    any container is ``missing`` (compose chose not to start it, e.g. an
    inactive profile): reported, not waited for, since ``up -d`` has returned.
    """
    services = sorted({c.service for c in containers if c.service})
    failed = [c for c in containers if c.failed]
    waiting = [c for c in containers if not c.running and not c.failed]
    missing = sorted(set(expected) - set(services))
    ready = bool(containers) and not failed and not waiting
    return Assessment(
        ready=ready, services=services, failed=failed, waiting=waiting, missing=missing
    )
