"""``ext.compose-ssh``: a compose stack per sandbox on an SSH host from the hosts file.

A sandbox is a directory ``<workspace_root>/sbx-<id>/`` on its placement
host holding a copy of the ``repo`` input (rsync, or SFTP where rsync is
missing), and the compose project ``sbx-<id>`` started from a compose file
inside it with the host's ``compose_cmd`` (``docker compose``,
``docker-compose`` or ``podman-compose``). Secrets go to
``<dir>/.sandboxer.env`` (mode 0600) and into the environment of every
compose command by sourcing that file on the host, so they are never on a
command line, in a descriptor or in an error message. The marker
``<workspace_root>/sbx-<id>.json`` records the compose file for teardown.

Every command runs with the host's ``env`` (e.g. ``DOCKER_HOST``), built
from separately quoted arguments by :mod:`sandboxer.ssh.remote`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncssh

from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ExtensionError,
    InvalidInput,
    RemoteCommandFailed,
    SandboxerError,
)
from sandboxer.extensions import ssh_checks as checks
from sandboxer.extensions import ssh_host as rh
from sandboxer.extensions.base import FoundSandbox, ProvisionRequest, Readiness
from sandboxer.extensions.compose_ssh import containers as cts
from sandboxer.extensions.compose_ssh.compose_file import (
    ComposeFileError,
    check_compose_file,
    resolve_compose_file,
)
from sandboxer.extensions.compose_ssh.stack import Plan, Stack
from sandboxer.extensions.ssh_host import Target
from sandboxer.ssh import remote, sync

__all__ = ["ComposeSshExtension"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""Seconds ``wait_ready`` waits for every container to be running."""
READY_POLL = 0.25
STABLE_AFTER = 0.3
"""A stack counts as ready when it is all running twice, this many seconds apart, unrestarted."""
UP_TIMEOUT = 1800.0
"""``up -d`` may pull or build images."""
DOWN_TIMEOUT = 300.0
LOG_LINES = 20

# Containers matching the filters ($2...) of engine $1, as `inspect` JSON, in one
# round trip. A container removed between ps and inspect makes inspect exit 1
# with the others still printed.
_CONTAINERS_SCRIPT = r"""
engine=$1; shift
ids=$("$engine" ps -aq "$@") || exit $?
if [ -z "$ids" ]; then echo '[]'; exit 0; fi
exec "$engine" inspect $ids
"""

# Removes what engine $1 labels with $2: containers always; with $3 = 1 also
# networks, volumes and podman's pod $4 (what compose down would have removed).
_SWEEP_SCRIPT = r"""
engine=$1 label=$2 thorough=$3 pod=$4
ids=$("$engine" ps -aq --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" rm -f -v $ids >/dev/null || exit $?; fi
[ "$thorough" = 1 ] || exit 0
if [ "$engine" = podman ]; then podman pod rm -f --ignore "$pod" >/dev/null 2>&1; fi
ids=$("$engine" network ls -q --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" network rm $ids >/dev/null || exit $?; fi
ids=$("$engine" volume ls -q --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" volume rm -f $ids >/dev/null || exit $?; fi
exit 0
"""
ENGINE_MISSING = 127


class ComposeSshExtension(rh.SshBackend):
    """Compose stacks on SSH hosts; hosts come from the hosts file, read at every call."""

    id = "ext.compose-ssh"

    def __init__(self, settings: Settings, *, ready_timeout: float = READY_TIMEOUT) -> None:
        super().__init__(settings)
        self.ready_timeout = ready_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> ComposeSshExtension:
        return cls(settings)

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        plan = self._plan(request)  # every check before any connection
        stack, sandbox_id = plan.stack, request.sandbox_id
        values = list(request.secrets.values())
        started = time.monotonic()
        try:
            async with rh.session(stack.target) as conn:
                await self._teardown_owned(conn, stack.target, sandbox_id)  # start clean
                cleaned = time.monotonic()
                await rh.write_marker(conn, stack.target, sandbox_id, {
                    "extension": self.id,
                    "compose_project": stack.project,
                    "compose_file": stack.compose_file,
                    "created_at": datetime.now(UTC).isoformat(),
                })
                method = await sync.sync_dir(
                    stack.target.name, stack.target.config, conn, plan.repo, stack.directory)
                synced = time.monotonic()
                if request.secrets:
                    text = checks.env_file_text(request.secrets, sandbox_id)
                    await remote.put_file(conn, stack.env_path, text.encode(), mode=0o600)
                try:
                    await stack.run(conn, "up", "-d", timeout=UP_TIMEOUT)
                except RemoteCommandFailed as exc:
                    raise checks.with_output(
                        exc, f"'{stack.target.config.compose_cmd} up -d' of "
                        f"{stack.compose_file} on host {stack.target.name}", values,
                        sandbox_id=sandbox_id, extension=self.id,
                        fix="fix the compose file or what it needs (images, build context, "
                        "variables), then create the sandbox again",
                    ) from None
        except (SandboxerError, asyncssh.Error, OSError) as exc:
            raise checks.scrubbed(exc, values, sandbox_id=sandbox_id, extension=self.id) from None
        log.info("compose sandbox %s on %s: connected and cleaned in %.0f ms, synced by %s in "
                 "%.0f ms, up in %.0f ms", sandbox_id, stack.target.name,
                 (cleaned - started) * 1000, method, (synced - cleaned) * 1000,
                 (time.monotonic() - synced) * 1000)

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        plan = self._plan(request)
        stack, sandbox_id = plan.stack, request.sandbox_id
        values = list(request.secrets.values())
        try:
            async with rh.session(stack.target) as conn:
                services, running = await asyncio.gather(
                    self._services(conn, stack, values),
                    self._await_running(conn, stack, request))
                found = cts.assess(running, services)
        except (SandboxerError, asyncssh.Error, OSError) as exc:
            raise checks.scrubbed(exc, values, sandbox_id=sandbox_id, extension=self.id) from None
        warnings = []
        if found.missing:
            warnings.append(
                f"services {', '.join(found.missing)} of {stack.compose_file} have no container "
                "(compose did not start them, e.g. an inactive profile)")
        profile = request.profile
        if profile.network.default == "deny" or profile.network.egress:
            warnings.append("network policy not enforced by ext.compose-ssh: the compose file "
                            "decides the stack's networks (network_mode: none gives none)")
        if profile.resources.model_dump(exclude_none=True):
            warnings.append("resource limits of the profile not applied by ext.compose-ssh: set "
                            "them per service in the compose file")
        if profile.setup.instructions:
            warnings.append("setup.instructions are not run by ext.compose-ssh: put such steps "
                            "in the compose file (a service's command or an init service)")
        descriptor: dict[str, Any] = {
            "kind": "compose-ssh",
            **stack.target.describe(),
            "directory": stack.directory,
            "compose_project": stack.project,
            "compose_file": stack.compose_path,
            "compose_cmd": stack.target.config.compose_cmd,
            "services": found.services,
            "exec": f"sandboxer exec {sandbox_id} -- CMD (runs on the host in directory)",
        }
        if request.secrets:
            descriptor["secrets_file"] = stack.env_path
        return Readiness(descriptor=descriptor, warnings=warnings)

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """Load, memory, disk and the sandboxer-owned workspaces, projects and containers."""
        item = rh.target(self.settings, host, sandbox_id=None, extension=self.id,
                         what="host to inspect")
        async with rh.session(item) as conn:
            report = await rh.host_telemetry(conn, item)
            scan = await rh.scan(conn, item)
            report["engine"] = cts.engine(item.config)
            report["compose_cmd"] = item.config.compose_cmd
            report["workspaces"] = sorted(scan.directories)
            report["sandboxes"] = scan.owned_by(self.id)
            try:
                owned = await self._owned_containers(conn, item)
            except RemoteCommandFailed as exc:
                report["engine_error"] = f"{exc.message}: {exc.output_tail}"
                owned = []
        projects: dict[str, list[cts.Container]] = {}
        for container in owned:
            projects.setdefault(container.project, []).append(container)
        report["compose_projects"] = [
            {"project": project, "sandbox_id": cts.sandbox_of_project(project),
             "containers": len(items), "running": sum(1 for c in items if c.running)}
            for project, items in sorted(projects.items())
        ]
        report["containers"] = [c.summary() for c in owned]
        return report

    # -- helpers ----------------------------------------------------------------------------

    def _plan(self, request: ProvisionRequest) -> Plan:
        """Validate the id, the inputs, the secret names and the host; no I/O beyond the
        worker's own disk (the repo, the hosts file)."""
        sandbox_id = request.sandbox_id
        checks.check_sandbox_id(sandbox_id, self.id)
        compose_input = request.inputs.get("compose_file")
        if compose_input:
            try:
                check_compose_file(compose_input)
            except ComposeFileError as exc:
                raise InvalidInput(str(exc), sandbox_id=sandbox_id, extension=self.id) from None
        repo = checks.local_repo(request.inputs.get("repo"), required=True, sandbox_id=sandbox_id,
                             extension=self.id)
        assert repo is not None
        try:
            compose_file = resolve_compose_file(repo, compose_input)
        except ComposeFileError as exc:
            raise InvalidInput(str(exc), sandbox_id=sandbox_id, extension=self.id) from None
        item = rh.target(self.settings, request.host, sandbox_id=sandbox_id, extension=self.id)
        checks.check_secrets(request.secrets, item.config.env, sandbox_id, self.id)
        stack = Stack(item, sandbox_id, compose_file, with_secrets=bool(request.secrets))
        return Plan(stack, repo)

    async def _services(self, conn: asyncssh.SSHClientConnection, stack: Stack,
                        values: list[str]) -> list[str]:
        try:
            result = await stack.run(conn, "config", "--services", timeout=rh.SHORT_TIMEOUT)
        except RemoteCommandFailed as exc:
            raise checks.with_output(
                exc, f"'{stack.target.config.compose_cmd} config --services' of "
                f"{stack.compose_file} on host {stack.target.name}", values,
                sandbox_id=stack.sandbox_id, extension=self.id,
                fix="check the compose file and the compose command of the host") from None
        return sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})

    async def _await_running(self, conn: asyncssh.SSHClientConnection, stack: Stack,
                             request: ProvisionRequest) -> list[cts.Container]:
        """The project's containers once all run, seen twice unchanged; fails fast on one
        that stopped."""
        deadline = time.monotonic() + self.ready_timeout
        confirmed: list[tuple[str, str, int]] | None = None
        while True:
            found = await self._containers(conn, stack.target,
                                           f"label={cts.PROJECT_LABEL}={stack.project}")
            state = cts.assess(found, [])
            if state.failed:
                raise await self._failed(conn, stack, state.failed)
            if state.ready:
                if confirmed == cts.fingerprint(found):
                    return found
                confirmed = cts.fingerprint(found)
                await asyncio.sleep(STABLE_AFTER)
                continue
            confirmed = None
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{c.service or c.name} ({c.status})" for c in state.waiting)
                raise ExtensionError(
                    f"compose project {stack.project} on host {stack.target.name} is not running "
                    f"after {self.ready_timeout:g}s: "
                    + (f"waiting for {waiting}" if waiting else "it has no containers")
                    + "; check 'docker ps -a' and the containers' logs on the host",
                    sandbox_id=stack.sandbox_id, extension=self.id)
            await asyncio.sleep(READY_POLL)

    async def _failed(self, conn: asyncssh.SSHClientConnection, stack: Stack,
                      failed: list[cts.Container]) -> ExtensionError:
        first = failed[0]
        logs = await remote.run(
            conn, [cts.engine(stack.target.config), "logs", "--tail", str(LOG_LINES), first.id],
            env=stack.target.config.env, timeout=rh.SHORT_TIMEOUT, check=False)
        tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-LOG_LINES:])
        names = ", ".join(f"{c.service or c.name} ({c.status}, exit code {c.exit_code})"
                          for c in failed)
        return ExtensionError(
            f"compose project {stack.project} on host {stack.target.name}: {names} stopped "
            f"instead of running; fix the service's command or image. Last log lines of "
            f"{first.service or first.name}:\n{tail or '(no output)'}",
            sandbox_id=stack.sandbox_id, extension=self.id)

    async def _containers(self, conn: asyncssh.SSHClientConnection, item: Target,
                          *filters: str) -> list[cts.Container]:
        """Containers matching ``--filter`` values (none when the host has no engine)."""
        engine = cts.engine(item.config)
        argv = ["sh", "-c", _CONTAINERS_SCRIPT, "sh", engine]
        for value in filters:
            argv += ["--filter", value]
        result = await remote.run(conn, argv, env=item.config.env, timeout=rh.SHORT_TIMEOUT,
                                  check=False)
        if result.exit_status == 0 or result.stdout.lstrip().startswith("["):
            return cts.parse_inspect(result.stdout)
        if result.exit_status == ENGINE_MISSING:
            return []
        raise self._engine_failed(item, "ps", result)

    def _engine_failed(self, item: Target, what: str,
                       result: remote.RemoteResult) -> RemoteCommandFailed:
        return RemoteCommandFailed(
            f"'{cts.engine(item.config)} {what}' on host {item.name} exited with status "
            f"{result.exit_status}; check that the container engine runs and that the host's "
            "env in the hosts file (e.g. DOCKER_HOST) points at it",
            exit_status=result.exit_status,
            output_tail="\n".join((result.stdout + result.stderr).splitlines()[-20:]),
            extension=self.id)

    async def _owned_containers(self, conn: asyncssh.SSHClientConnection,
                                item: Target) -> list[cts.Container]:
        """Containers of sandboxer-owned projects whose directory is on this host's root.

        Two hosts may share an engine (a remote DOCKER_HOST): the compose
        working-directory label tells whose project it is.
        """
        owned = []
        for container in await self._containers(conn, item, f"label={cts.PROJECT_LABEL}"):
            sandbox_id = cts.sandbox_of_project(container.project)
            if sandbox_id is None:
                continue
            directory = item.workspace(sandbox_id)
            if container.working_dir and not (
                container.working_dir == directory
                or container.working_dir.startswith(directory + "/")
            ):
                continue
            owned.append(container)
        return owned

    async def _found_on(self, item: Target,
                        conn: asyncssh.SSHClientConnection) -> list[FoundSandbox]:
        scan = await rh.scan(conn, item)
        try:
            owned = await self._owned_containers(conn, item)
        except RemoteCommandFailed as exc:
            log.warning("%s: host %s: cannot list containers: %s", self.id, item.name,
                        exc.message)
            owned = []
        by_sandbox: dict[str, list[cts.Container]] = {}
        for container in owned:
            sandbox_id = cts.sandbox_of_project(container.project)
            assert sandbox_id is not None
            by_sandbox.setdefault(sandbox_id, []).append(container)
        found = []
        for sandbox_id in sorted(set(scan.owned_by(self.id)) | set(by_sandbox)):
            items = by_sandbox.get(sandbox_id, [])
            marker = scan.markers.get(sandbox_id, {})
            has_dir = sandbox_id in scan.directories
            alive = has_dir and bool(items) and all(c.running for c in items)
            found.append(FoundSandbox(sandbox_id=sandbox_id, alive=alive, host=item.name, detail={
                "directory": item.workspace(sandbox_id) if has_dir else None,
                "compose_project": cts.project_name(sandbox_id),
                "compose_file": marker.get("compose_file"),
                "created_at": marker.get("created_at"),
                "containers": len(items),
                "running": sum(1 for c in items if c.running),
                "services": sorted({c.service for c in items if c.service}),
            }))
        return found

    async def _teardown_on(self, conn: asyncssh.SSHClientConnection, item: Target,
                           sandbox_id: str, found: rh.Probe) -> None:
        """Stop and remove the project, then the directory and the marker; nothing there is fine."""
        compose_file = _safe((found.marker or {}).get("compose_file"))
        compose_down = False
        if compose_file is not None and found.directory:
            stack = Stack(item, sandbox_id, compose_file, with_secrets=found.secrets_file)
            result = await stack.run(conn, "down", "--volumes", "--remove-orphans", "-t", "1",
                                     timeout=DOWN_TIMEOUT, check=False)
            compose_down = result.exit_status == 0
            if not compose_down:  # its output may hold secrets we cannot redact here
                log.warning("%s: '%s down' of sbx-%s on %s exited %d; removing the project's "
                            "objects by label instead", self.id, item.config.compose_cmd,
                            sandbox_id, item.name, result.exit_status)
        await self._sweep(conn, item, cts.project_name(sandbox_id), thorough=not compose_down)
        await rh.remove(conn, item, sandbox_id, found)

    async def _sweep(self, conn: asyncssh.SSHClientConnection, item: Target, project: str, *,
                     thorough: bool) -> None:
        """Remove what is labelled with ``project``: containers always (a check after compose
        down); networks, volumes and podman's pod too when compose down did not run."""
        result = await remote.run(
            conn, ["sh", "-c", _SWEEP_SCRIPT, "sh", cts.engine(item.config),
                   f"label={cts.PROJECT_LABEL}={project}", "1" if thorough else "0",
                   f"pod_{project}"],
            env=item.config.env, timeout=DOWN_TIMEOUT, check=False)
        if result.exit_status not in (0, ENGINE_MISSING):  # no engine: nothing of ours runs
            raise self._engine_failed(item, "rm", result)


def _safe(compose_file: object) -> str | None:
    """The marker's compose file if it is still a safe relative path (the marker is on the host)."""
    if not isinstance(compose_file, str):
        return None
    try:
        return check_compose_file(compose_file)
    except ComposeFileError:
        return None
